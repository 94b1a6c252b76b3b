"""A tiny in-memory cluster for sentinel tests: real ``SentinelCore``s in trio tasks, fake store
nodes, and a fake network of memory channels with a fixed latency (conventions rule 11).

Each sentinel runs what the production shell will run: a ticker that sleeps until
``core.next_wakeup`` (woken early whenever an observation may have moved a deadline), an inbox
task for peer messages, and one pinger per node. Everything happens in virtual time under
``MockClock(autojump_threshold=0)``, in whole milliseconds, so tests assert exact times.
"""

from __future__ import annotations

import math

import attrs
import trio

from sentinel.actions import (
    Action,
    Log,
    NodeReport,
    Observation,
    PauseWrites,
    PeerMessage,
    PersistState,
    PingReply,
    PublishTopology,
    ResumeWrites,
    Role,
    RoleApplied,
    SendRole,
    SendToPeer,
    WritesPaused,
)
from sentinel.config import PeerConfig, SentinelConfig
from sentinel.core import SentinelCore
from sentinel.messages import Message, decode_message, encode_message
from sentinel.state import decode_state
from shardgate.topology import NodeAddress, Shard, SlotRange, Topology

LATENCY_MS = 1
REPLICATION_LAG = 5  # a replica trails its primary by this many writes (ms)


def now_ms() -> int:
    return round(trio.current_time() * 1000)


async def sleep_until_ms(t: int) -> None:
    await trio.sleep_until(t / 1000)


class FixedRandom:
    """Back-offs chosen by the test: ``values`` in turn, then the last one forever."""

    def __init__(self, *values: int) -> None:
        self.values = list(values) or [0]

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        value = self.values.pop(0) if len(self.values) > 1 else self.values[0]
        assert stop is None or start <= value < stop
        return value


@attrs.define
class FakeNode:
    address: NodeAddress
    role: Role
    epoch: int
    primary: NodeAddress | None = None
    offset: int = 0
    alive: bool = True
    paused_until: int = -1
    role_log: list[tuple[int, Role, int]] = attrs.field(factory=list)

    def apply_role(self, send: SendRole, now: int) -> bool:
        if not self.alive or send.epoch < self.epoch:
            return False
        self.role, self.epoch, self.primary = send.role, send.epoch, send.primary
        self.role_log.append((now, send.role, send.epoch))
        return True

    def report(self) -> NodeReport:
        return NodeReport(self.address, self.role, self.epoch, self.primary, self.offset, None)

    def writable(self, now: int) -> bool:
        return self.alive and self.role is Role.PRIMARY and now >= self.paused_until


def addr(port: int) -> NodeAddress:
    return NodeAddress("127.0.0.1", port)


def make_config(
    sid: str, ids: tuple[str, ...], topology: Topology, *, quorum: int = 2, **options: int
) -> SentinelConfig:
    port = {s: 26379 + i for i, s in enumerate(ids)}
    return SentinelConfig(
        id=sid,
        listen=addr(port[sid]),
        peers=tuple(PeerConfig(p, addr(port[p])) for p in ids if p != sid),
        topology=topology,
        quorum=quorum,
        down_after_ms=options.pop("down_after_ms", 1000),
        failover_timeout_ms=options.pop("failover_timeout_ms", 3000),
        forget_after_ms=options.pop("forget_after_ms", 3_600_000),
        manual_pause_ms=options.pop("manual_pause_ms", 500),
    )


def one_shard(replicas: int = 2) -> Topology:
    reps = tuple(addr(7101 + i) for i in range(replicas))
    return Topology(1, (Shard("s0", addr(7001), reps, (SlotRange(0, 16383),)),))


@attrs.define
class Published:
    at_ms: int
    by: str
    topology: Topology


class Cluster:
    """Sentinels ``s1..sN`` watching fake nodes; ``run`` them inside a nursery."""

    def __init__(
        self,
        topology: Topology,
        *,
        sentinels: int = 3,
        quorum: int = 2,
        backoffs: dict[str, tuple[int, ...]] | None = None,
        **options: int,
    ) -> None:
        self.ids = tuple(f"s{i + 1}" for i in range(sentinels))
        self.topology = topology
        self.configs = {
            s: make_config(s, self.ids, topology, quorum=quorum, **options) for s in self.ids
        }
        self.backoffs = backoffs or {}
        self.nodes: dict[NodeAddress, FakeNode] = {}
        for shard in topology.shards:
            self.nodes[shard.primary] = FakeNode(shard.primary, Role.PRIMARY, topology.epoch)
            for r in shard.replicas:
                self.nodes[r] = FakeNode(r, Role.REPLICA, topology.epoch, shard.primary)
        self.disk: dict[str, bytes] = {}
        self.cores: dict[str, SentinelCore] = {}
        self.scopes: dict[str, trio.CancelScope] = {}
        self.inboxes: dict[str, trio.MemorySendChannel[Message]] = {}
        self.wakers: dict[str, trio.Event] = {}
        self.logs: list[tuple[int, str, Log]] = []
        self.published: list[Published] = []
        self.cut: set[frozenset[str]] = set()  # partitioned sentinel pairs
        self.unreachable: set[tuple[str, NodeAddress]] = set()  # (sentinel, node) cut apart
        self.stopped: dict[str, int] = {}  # sentinel → until when it is frozen (SIGSTOP)
        self.writer = False  # when True, the primary takes one write per ms and replicas follow
        self.replication_broken = False
        self.acked: list[tuple[int, NodeAddress, int]] = []  # (ms, node, offset) of each write
        self.nursery: trio.Nursery | None = None

    # -- faults -------------------------------------------------------------------------------

    def kill_sentinel(self, sid: str) -> None:
        self.scopes.pop(sid).cancel()
        self.inboxes.pop(sid, None)
        self.cores.pop(sid, None)

    def stop(self, sid: str, until_ms: int) -> None:
        """SIGSTOP until ``until_ms``: nothing runs; replies and messages wait in the buffers."""
        self.stopped[sid] = until_ms

    async def _thaw(self, sid: str) -> None:
        until = self.stopped.get(sid, 0)
        if now_ms() < until:
            await sleep_until_ms(until)

    def partition(self, group: set[str]) -> None:
        for a in group:
            for b in set(self.ids) - group:
                self.cut.add(frozenset((a, b)))

    def primary_of(self, shard: str = "s0") -> FakeNode:
        writable = [n for n in self.nodes.values() if n.role is Role.PRIMARY and n.alive]
        best = max(writable, key=lambda n: n.epoch)
        return best

    def events(self, name: str) -> list[tuple[int, str, Log]]:
        return [e for e in self.logs if e[2].event == name]

    def newest(self) -> Topology:
        return max(
            (p.topology for p in self.published), key=lambda t: t.epoch, default=self.topology
        )

    # -- running ------------------------------------------------------------------------------

    def start(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        for sid in self.ids:
            self.start_sentinel(sid)
        if self.writer:
            nursery.start_soon(self._replication)

    async def _replication(self) -> None:
        """Started when ``writer`` is on: the writable primary takes a write each ms (its offset grows) and
        every live replica following it has what its primary had ``REPLICATION_LAG`` ms ago."""
        past: dict[NodeAddress, list[int]] = {}
        while True:
            await sleep_until_ms(now_ms() + 1)
            now = now_ms()
            for node in self.nodes.values():
                if node.writable(now):
                    node.offset += 1
                    self.acked.append((now, node.address, node.offset))
                past.setdefault(node.address, []).append(node.offset)
                del past[node.address][: -REPLICATION_LAG - 1]
            for node in self.nodes.values():
                src = self.nodes.get(node.primary) if node.primary else None
                following = node.role is Role.REPLICA and src is not None and src.alive
                if following and node.alive and not self.replication_broken:
                    assert src is not None
                    node.offset = max(node.offset, past[src.address][0])

    def start_sentinel(self, sid: str) -> None:
        assert self.nursery is not None
        state = decode_state(self.disk[sid]) if sid in self.disk else None
        rng = FixedRandom(*self.backoffs.get(sid, (0,)))
        core = SentinelCore(self.configs[sid], state, now=now_ms(), rng=rng)
        scope = trio.CancelScope()
        send, recv = trio.open_memory_channel[Message](math.inf)
        self.cores[sid], self.scopes[sid], self.inboxes[sid] = core, scope, send
        self.wakers[sid] = trio.Event()
        self.nursery.start_soon(self._sentinel, sid, core, scope, recv)

    async def _sentinel(
        self,
        sid: str,
        core: SentinelCore,
        scope: trio.CancelScope,
        inbox: trio.MemoryReceiveChannel[Message],
    ) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._ticker, sid, core)
                nursery.start_soon(self._inbox, sid, core, inbox)
                for node in list(self.nodes):
                    nursery.start_soon(self._pinger, sid, core, node)

    def _run(self, sid: str, actions: tuple[Action, ...] | list[Action]) -> None:
        now = now_ms()
        for action in actions:
            if isinstance(action, PersistState):
                self.disk[sid] = action.data
            elif isinstance(action, Log):
                self.logs.append((now, sid, action))
            elif isinstance(action, SendToPeer):
                self._send(sid, action.peer, action.message)
            elif isinstance(action, PublishTopology):
                self.published.append(Published(now, sid, action.topology))
            elif isinstance(action, SendRole | PauseWrites | ResumeWrites):
                assert self.nursery is not None
                self.nursery.start_soon(self._node_call, sid, action)
        self.wakers[sid].set()

    def _handle(self, sid: str, core: SentinelCore, obs: Observation) -> None:
        if self.cores.get(sid) is core:
            self._run(sid, core.handle(obs, now_ms()))

    def _send(self, src: str, dst: str, msg: Message) -> None:
        if frozenset((src, dst)) in self.cut:
            return
        wire = encode_message(msg)  # every message goes through the real codec

        async def deliver() -> None:
            await sleep_until_ms(now_ms() + LATENCY_MS)
            inbox = self.inboxes.get(dst)
            if inbox is not None and frozenset((src, dst)) not in self.cut:
                inbox.send_nowait(decode_message(wire))

        assert self.nursery is not None
        self.nursery.start_soon(deliver)

    async def _ticker(self, sid: str, core: SentinelCore) -> None:
        while True:
            await self._thaw(sid)
            self._run(sid, core.tick(now_ms()))
            self.wakers[sid] = trio.Event()
            with trio.move_on_at(core.next_wakeup(now_ms()) / 1000):
                await self.wakers[sid].wait()

    async def _inbox(
        self, sid: str, core: SentinelCore, inbox: trio.MemoryReceiveChannel[Message]
    ) -> None:
        async for msg in inbox:
            await self._thaw(sid)
            self._handle(sid, core, PeerMessage(msg))

    async def _pinger(self, sid: str, core: SentinelCore, address: NodeAddress) -> None:
        period = core.config.ping_period_ms
        t = now_ms()
        while True:
            node = self.nodes[address]
            if node.alive and now_ms() >= self.stopped.get(sid, 0):
                self.nursery.start_soon(self._pong, sid, core, node)  # type: ignore[union-attr]
            t += period
            await sleep_until_ms(t)

    async def _pong(self, sid: str, core: SentinelCore, node: FakeNode) -> None:
        await sleep_until_ms(now_ms() + LATENCY_MS)
        await self._thaw(sid)
        if node.alive and (sid, node.address) not in self.unreachable:
            self._handle(sid, core, PingReply(node.address))
            self._handle(sid, core, node.report())

    async def _node_call(self, sid: str, action: SendRole | PauseWrites | ResumeWrites) -> None:
        core = self.cores.get(sid)
        node = self.nodes[action.node]
        await sleep_until_ms(now_ms() + LATENCY_MS)
        now = now_ms()
        if isinstance(action, SendRole):
            ok = node.apply_role(action, now)
            reply: Observation = RoleApplied(node.address, action.role, action.epoch, ok)
        elif isinstance(action, PauseWrites):
            if not node.alive:
                return
            node.paused_until = now + action.timeout_ms
            reply = WritesPaused(node.address, node.offset)
        else:
            node.paused_until = -1
            return
        await sleep_until_ms(now_ms() + LATENCY_MS)
        await self._thaw(sid)
        if core is not None and node.alive:
            self._handle(sid, core, reply)
