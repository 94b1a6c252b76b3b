"""A proxy following sentinels, against fake sentinels (in-process) and real shardgate nodes.

The fake speaks the sentinel's proxy-facing surface: AUTH, SG.TOPOLOGY, SUBSCRIBE
shardgate.topology (pushes) and SG.PROXYEPOCH. The proxy runs in-process (``serve``) so each
rule is checked exactly; the real sentinels are in ``test_failover.py``.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import hiredis
import pytest
import redis
import trio

from proxy.config import ProxyConfig
from proxy.server import serve
from shardgate.resp import encode_reply
from shardgate.topology import NodeAddress, Shard, SlotRange, Topology, topology_to_wire
from tests.proxy.conftest import Backend, backends, node_available
from tests.proxy.test_integration import blocking

pytestmark = pytest.mark.skipif(not node_available(), reason="storenode server not available")


class FakeSentinel:
    def __init__(self, topology: Topology | None) -> None:
        self.topology = topology
        self.port = 0
        self.fetches = 0
        self.reports: list[tuple[bytes, int]] = []
        self.subscribers: list[trio.SocketStream] = []

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._client, listeners)
            task_status.started()

    def blob(self) -> bytes | None:
        return None if self.topology is None else topology_to_wire(self.topology)

    async def _client(self, stream: trio.SocketStream) -> None:
        reader = hiredis.Reader()
        try:
            while data := await stream.receive_some(65536):
                reader.feed(data)
                out: list[bytes] = []
                while (cmd := reader.gets()) is not False:
                    name = cmd[0].upper()
                    if name == b"SG.TOPOLOGY":
                        self.fetches += 1
                        out.append(encode_reply(self.blob()))
                    elif name == b"SUBSCRIBE":
                        self.subscribers.append(stream)
                        out.append(encode_reply([b"subscribe", cmd[1], 1]))
                    elif name == b"SG.PROXYEPOCH":
                        self.reports.append((cmd[1], int(cmd[2])))
                        out.append(b":%d\r\n" % (self.topology.epoch if self.topology else 0))
                    else:
                        out.append(b"+OK\r\n")
                await stream.send_all(b"".join(out))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def publish(self, topology: Topology) -> None:
        msg = encode_reply([b"message", b"shardgate.topology", topology_to_wire(topology)])
        for s in list(self.subscribers):
            try:
                await s.send_all(msg)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.subscribers.remove(s)


def one_shard(epoch: int, primary: Backend, replicas: tuple[Backend, ...] = ()) -> Topology:
    return Topology(
        epoch,
        (
            Shard(
                "s0",
                NodeAddress("127.0.0.1", primary.port),
                tuple(NodeAddress("127.0.0.1", r.port) for r in replicas),
                (SlotRange(0, 16383),),
            ),
        ),
    )


@asynccontextmanager
async def following(*sentinels: FakeSentinel, **options: Any) -> AsyncIterator[redis.Redis]:
    """Fake sentinels and an in-process proxy following them; yields a client of the proxy."""
    async with trio.open_nursery() as nursery:
        for s in sentinels:
            await nursery.start(s.serve)
        addrs = tuple(NodeAddress("127.0.0.1", s.port) for s in sentinels)
        options.setdefault("timeout", 1.0)
        config = ProxyConfig(port=0, sentinels=addrs, name="p1", **options)
        _, port = await nursery.start(serve, config)
        try:
            yield redis.Redis(port=port, socket_timeout=5)
        finally:
            nursery.cancel_scope.cancel()


def kill_other_clients(backend: Backend) -> None:
    c = backend.client()
    me = c.client_id()
    for entry in c.client_list():
        if int(entry["id"]) != me:
            c.execute_command("CLIENT", "KILL", "ID", entry["id"])


async def info(client: redis.Redis) -> dict[str, Any]:
    return await blocking(client.info, "all")  # type: ignore[no-any-return]


async def wait_for(check: Any) -> None:
    """Poll ``check`` until it is true; callers bound it with ``trio.fail_after``."""
    while not await check():  # noqa: ASYNC110 (polling another process)
        await trio.sleep(0.02)


async def test_learns_the_topology_follows_publications_and_ignores_older_epochs() -> None:
    with backends("node", 2) as (a, b):
        s1, s2 = FakeSentinel(one_shard(3, a)), FakeSentinel(one_shard(4, a))
        down = FakeSentinel(None)  # never started: a dead sentinel must not block anything
        with trio.fail_after(30):
            async with following(s1, s2) as r:
                # highest epoch of the sentinels wins; no slot map in any config
                assert (await info(r))["epoch"] == 4
                assert await blocking(r.set, "k", "1")
                assert await blocking(a.client().get, "k") == b"1"

                # the epoch is reported to every sentinel under --name
                async def reported() -> bool:
                    return (b"p1", 4) in s1.reports and (b"p1", 4) in s2.reports

                with trio.fail_after(5):
                    await wait_for(reported)
                # a published newer topology is adopted: b is the primary now
                await s1.publish(one_shard(6, b))

                async def at_6() -> bool:
                    return bool((await info(r))["epoch"] == 6)

                with trio.fail_after(5):
                    await wait_for(at_6)
                assert await blocking(r.set, "k", "2")
                assert await blocking(b.client().get, "k") == b"2"
                assert int((await info(b.client()))["shardgate_epoch"]) == 6  # re-announced
                # a stale topology replayed (older epoch, and the same epoch again) is ignored
                ignored = (await info(r))["topologies_ignored"]
                await s2.publish(one_shard(5, a))
                await s1.publish(one_shard(6, b))
                await trio.sleep(0.3)
                i = await info(r)
                assert i["epoch"] == 6 and i["topologies_ignored"] == ignored + 2
                assert await blocking(r.get, "k") == b"2"
        assert down.fetches == 0


async def test_without_any_sentinel_the_proxy_says_so_instead_of_guessing() -> None:
    dead = NodeAddress("127.0.0.1", 1)  # nothing listens on port 1
    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):
            config = ProxyConfig(port=0, sentinels=(dead,), timeout=0.5)
            _, port = await nursery.start(serve, config)
            r = redis.Redis(port=port, socket_timeout=5)
            assert await blocking(r.ping)
            with pytest.raises(redis.ResponseError, match="no topology yet"):
                await blocking(r.get, "k")
        nursery.cancel_scope.cancel()


async def test_a_proxy_on_port_0_reports_the_port_it_got_not_0() -> None:
    """Two proxies on port 0 without --name must not both call themselves 127.0.0.1:0 to the
    sentinels (found by the failover-loop scenario: sentinel status showed one proxy)."""
    with backends("node", 1) as (a,):
        s1 = FakeSentinel(one_shard(3, a))
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(s1.serve)
                config = ProxyConfig(port=0, sentinels=(NodeAddress("127.0.0.1", s1.port),))
                _, port = await nursery.start(serve, config)
                r = redis.Redis(port=port, socket_timeout=5)
                assert (await info(r))["tcp_port"] == port

                async def reported() -> bool:
                    return any(name == f"127.0.0.1:{port}".encode() for name, _ in s1.reports)

                await wait_for(reported)
                assert all(not name.endswith(b":0") for name, _ in s1.reports)
                nursery.cancel_scope.cancel()


async def test_stale_node_makes_the_proxy_refresh_at_once() -> None:
    with backends("node", 1) as (a,):
        s = FakeSentinel(one_shard(2, a))
        with trio.fail_after(30):
            async with following(s) as r:
                assert await blocking(r.set, "k", "1")
                # the node learns of epoch 9 (a sentinel assigned roles), the fake now holds it
                # but publishes nothing: only the STALE answer can tell the proxy
                await blocking(a.client().execute_command, "SG.FENCE", 9, "primary")
                s.topology = one_shard(9, a)
                fetches = s.fetches
                # drop the proxy's connection so its handshake meets the newer epoch
                await blocking(kill_other_clients, a)

                async def at_9() -> bool:
                    return bool((await info(r))["epoch"] == 9)

                with trio.fail_after(3):
                    await wait_for(at_9)
                i = await info(r)
                assert i["stale_replies"] >= 1 and s.fetches > fetches

                async def writes() -> bool:
                    try:
                        return bool(await blocking(r.set, "k", "2"))
                    except redis.ResponseError:
                        return False

                with trio.fail_after(3):
                    await wait_for(writes)


@asynccontextmanager
async def superseded_primary() -> AsyncIterator[tuple[redis.Redis, Backend, Backend]]:
    """A proxy following a sentinel whose shard had a failover the proxy has not heard of:
    a (primary at epoch 1, holding k = 1) is fenced by epoch 2 and b promoted."""
    with backends("node", 2) as (a, b):
        s = FakeSentinel(one_shard(1, a))
        with trio.fail_after(30):
            async with following(s) as r:
                assert await blocking(r.set, "k", "1")
                await blocking(a.client().execute_command, "SG.FENCE", 2, "replica")
                s.topology = one_shard(2, b)
                yield r, a, b


async def test_write_refused_by_a_superseded_primary_is_retried_once_on_the_new_one() -> None:
    async with superseded_primary() as (r, a, b):
        with pytest.raises(redis.ReadOnlyError):
            await blocking(a.client().set, "k", "x")
        # the client sees one OK: refused by a (not applied), sent again to b
        assert await blocking(r.set, "k", "2")
        assert await blocking(b.client().get, "k") == b"2"
        assert await blocking(a.client().get, "k") == b"1"
        i = await info(r)
        assert i["epoch"] == 2 and i["write_retries"] == 1


async def test_read_lost_with_a_dead_primary_is_retried_once_on_the_new_one() -> None:
    with backends("node", 2) as (a, b):
        s = FakeSentinel(one_shard(1, a))
        with trio.fail_after(30):
            async with following(s, timeout=3.0) as r:
                assert await blocking(r.set, "k", "old")
                await blocking(b.client().set, "k", "new")
                assert a.proc is not None
                a.signal(signal.SIGSTOP)  # the GET below is in flight when the node dies
                async with trio.open_nursery() as nursery:
                    got: list[object] = []

                    async def read() -> None:
                        got.append(await blocking(r.get, "k"))

                    nursery.start_soon(read)
                    await trio.sleep(0.3)
                    a.proc.kill()  # connection lost: the read's outcome is unknown to us
                    a.proc.wait(5)
                    await trio.sleep(0.3)
                    assert got == []  # kept, not failed: waiting for the new topology
                    await s.publish(one_shard(2, b))
                assert got == [b"new"]  # retried once on the new primary
                i = await info(r)
                assert i["read_retries"] == 1 and i["epoch"] == 2


def pipelined(client: redis.Redis, *commands: tuple[str, ...]) -> list[object]:
    """Send the commands in one write (the proxy takes same-shaped ones as a run)."""
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return pipe.execute(raise_on_error=False)


async def test_a_pipelined_run_of_refused_writes_is_retried_request_by_request() -> None:
    # Following sentinels, runs keep each request's bytes: every write of a run that the
    # superseded primary refused is sent once more, alone, to the new one.
    keys = ["k", *[f"k{i}" for i in range(9)]]
    async with superseded_primary() as (r, a, b):
        got = await blocking(pipelined, r, *[("SET", k, "2") for k in keys])
        assert got == [True] * len(keys)
        assert await blocking(b.client().mget, keys) == [b"2"] * len(keys)
        assert await blocking(a.client().get, "k") == b"1"
        i = await info(r)
        assert i["epoch"] == 2 and i["write_retries"] == len(keys)


async def test_a_pipelined_run_of_reads_lost_with_a_dead_primary_is_retried() -> None:
    keys = [f"k{i}" for i in range(10)]
    with backends("node", 2) as (a, b):
        s = FakeSentinel(one_shard(1, a))
        with trio.fail_after(30):
            async with following(s, timeout=3.0) as r:
                await blocking(b.client().mset, {k: "new" for k in keys})
                assert await blocking(r.set, "k0", "old")
                assert a.proc is not None
                a.signal(signal.SIGSTOP)  # the GETs below are in flight when the node dies
                async with trio.open_nursery() as nursery:
                    got: list[object] = []

                    async def read() -> None:
                        got.extend(await blocking(pipelined, r, *[("GET", k) for k in keys]))

                    nursery.start_soon(read)
                    await trio.sleep(0.3)
                    a.proc.kill()
                    a.proc.wait(5)
                    await trio.sleep(0.3)
                    assert got == []  # kept, not failed: waiting for the new topology
                    await s.publish(one_shard(2, b))
                assert got == [b"new"] * len(keys)
                i = await info(r)
                assert i["read_retries"] == len(keys) and i["epoch"] == 2
