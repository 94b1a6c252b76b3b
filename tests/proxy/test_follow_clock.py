"""The sentinel follower's timing in virtual time: reports, backoff, refresh rate limit.

The follower runs against fake sentinels over in-memory streams (its ``connect`` is injected),
so ``MockClock(autojump_threshold=0)`` gives exact times.
"""

from __future__ import annotations

import errno

import hiredis
import pytest
import trio
import trio.testing

from proxy.control import ControlClient
from proxy.sentinels import SentinelFollower
from shardgate.resp import encode_reply
from shardgate.topology import NodeAddress, Topology, topology_to_wire

UP = NodeAddress("127.0.0.1", 26379)
DOWN = NodeAddress("127.0.0.1", 26380)


class MemorySentinel:
    def __init__(self, nursery: trio.Nursery, topology: Topology) -> None:
        self.nursery = nursery
        self.topology = topology
        self.calls: list[tuple[float, bytes]] = []  # (virtual time, command)
        self.reports: list[int] = []
        self.attempts: dict[NodeAddress, list[float]] = {UP: [], DOWN: []}

    async def connect(self, address: NodeAddress, password: str | None) -> ControlClient:
        self.attempts[address].append(trio.current_time())
        if address == DOWN:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        ours, theirs = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self._serve, theirs)
        return ControlClient(ours, str(address))

    async def _serve(self, stream: trio.abc.Stream) -> None:
        reader = hiredis.Reader()
        while data := await stream.receive_some(65536):
            reader.feed(data)
            out = []
            while (cmd := reader.gets()) is not False:
                self.calls.append((trio.current_time(), cmd[0]))
                if cmd[0] == b"SG.TOPOLOGY":
                    out.append(encode_reply(topology_to_wire(self.topology)))
                elif cmd[0] == b"SUBSCRIBE":
                    out.append(encode_reply([b"subscribe", cmd[1], 1]))
                elif cmd[0] == b"SG.PROXYEPOCH":
                    self.reports.append(int(cmd[2]))
                    out.append(b":%d\r\n" % self.topology.epoch)
            await stream.send_all(b"".join(out))

    def times(self, command: bytes) -> list[float]:
        return [round(t, 6) for t, c in self.calls if c == command]


async def test_reports_backoff_and_refresh_limit_in_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    epoch = 0
    adopted: list[tuple[float, int]] = []

    async def adopt(topology: Topology, source: str) -> bool:
        nonlocal epoch
        if topology.epoch <= epoch:
            return False
        epoch = topology.epoch
        adopted.append((trio.current_time(), epoch))
        return True

    async with trio.open_nursery() as nursery:
        fake = MemorySentinel(nursery, Topology.even([NodeAddress("127.0.0.1", 7001)], epoch=3))
        follower = SentinelFollower(
            (UP, DOWN),
            password=None,
            name="p",
            timeout=1.0,
            adopt=adopt,
            current_epoch=lambda: epoch,
            connect=fake.connect,
        )
        await nursery.start(follower.run)
        await trio.sleep(3.05)
        # adopted at once from the subscription's fetch; reported at start, right after the
        # adoption, then every second
        assert adopted == [(0.0, 3)]
        assert fake.times(b"SG.PROXYEPOCH") == [0.0, 0.0, 1.0, 2.0, 3.0]
        assert fake.reports[-1] == 3
        # the dead sentinel: each of its two links retries after 0.1, 0.2, 0.4, 0.8, 1.6 s ...
        expected = [0.0, 0.1, 0.3, 0.7, 1.5]
        assert sorted(set(fake.attempts[DOWN])) == pytest.approx(expected)
        assert len(fake.attempts[DOWN]) == 2 * len(expected)
        # a burst of refresh requests: one fetch now, one at the end of the 100 ms window
        fetches = len(fake.times(b"SG.TOPOLOGY"))
        await trio.sleep(0.15)  # t = 3.2
        for _ in range(5):
            follower.refresh("stale: node x")
        await trio.sleep(0.05)  # t = 3.25
        follower.refresh("readonly")
        await trio.sleep(0.2)
        assert fake.times(b"SG.TOPOLOGY")[fetches:] == pytest.approx([3.2, 3.3])
        assert follower.refreshes == {"stale": 5, "readonly": 1}
        # a sentinel holding a newer epoch than ours is noticed by the next report, even with
        # no publication: the link fetches and the proxy adopts it
        fake.topology = Topology.even([NodeAddress("127.0.0.1", 7002)], epoch=5)
        await trio.sleep(1.0)  # the report at 4.0 sees 5 > 3
        assert adopted[-1] == (4.0, 5)
        nursery.cancel_scope.cancel()
