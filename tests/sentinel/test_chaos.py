"""Three sentinel cores in a discrete-event simulation with random latencies, drops, crashes,
restarts from the state file, partitions and primary kills (Hypothesis picks the schedule).

Safety, checked on every run: one topology per epoch, one publisher per epoch, epochs and votes
that never go back across restarts. Liveness, checked after the faults stop: every sentinel ends
on the same topology, its primary is alive, and every node holds the role the topology gives it.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel.actions import (
    Action,
    Log,
    Observation,
    PeerMessage,
    PersistState,
    PingReply,
    PublishTopology,
    RoleApplied,
    SendRole,
    SendToPeer,
)
from sentinel.core import SentinelCore
from sentinel.messages import VoteReply, decode_message, encode_message
from sentinel.state import decode_state
from shardgate.topology import NodeAddress, Topology
from tests.sentinel.sim import FakeNode, FixedRandom, make_config, one_shard

IDS = ("s1", "s2", "s3")


class Chaos:
    def __init__(self, seed: int, *, drop: float, max_latency: int) -> None:
        self.rnd = random.Random(seed)
        self.drop, self.max_latency = drop, max_latency
        self.topology = one_shard()
        self.configs = {s: make_config(s, IDS, self.topology) for s in IDS}
        self.nodes: dict[NodeAddress, FakeNode] = {}
        shard = self.topology.shards[0]
        self.nodes[shard.primary] = FakeNode(shard.primary, *_role(self.topology, shard.primary))
        for r in shard.replicas:
            self.nodes[r] = FakeNode(r, *_role(self.topology, r))
        self.events: list[tuple[int, int, Callable[[], None]]] = []
        self.seq = 0
        self.now = 0
        self.cores: dict[str, SentinelCore | None] = {}
        self.disk: dict[str, bytes] = {}
        self.tick_version: dict[str, int] = {s: 0 for s in IDS}
        self.cut: set[str] = set()  # sentinels cut off from everyone (peers and nodes)
        self.published: list[tuple[int, str, Topology]] = []
        self.history: dict[str, list[tuple[int, Any]]] = {s: [] for s in IDS}
        self.granted: dict[tuple[str, int], set[str]] = {}  # (voter, epoch) → leaders granted
        self.elected: dict[int, set[str]] = {}  # epoch → sentinels elected in it
        for sid in IDS:
            self.start(sid)

    # -- scheduling -------------------------------------------------------------------------

    def at(self, t: int, fn: Callable[[], None]) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, fn))

    def latency(self) -> int:
        return self.rnd.randint(1, self.max_latency)

    def run_until(self, end: int) -> None:
        while self.events and self.events[0][0] <= end:
            t, _, fn = heapq.heappop(self.events)
            self.now = t
            fn()
        self.now = end

    # -- sentinels ---------------------------------------------------------------------------

    def start(self, sid: str) -> None:
        state = decode_state(self.disk[sid]) if sid in self.disk else None
        rng = FixedRandom(*(self.rnd.randrange(0, 201) for _ in range(50)))
        self.cores[sid] = SentinelCore(self.configs[sid], state, now=self.now, rng=rng)
        self.schedule_tick(sid)
        for node in self.nodes:
            self.at(self.now + self.rnd.randrange(100), lambda s=sid, n=node: self.ping(s, n))

    def crash(self, sid: str) -> None:
        self.cores[sid] = None
        self.tick_version[sid] += 1

    def schedule_tick(self, sid: str) -> None:
        core = self.cores[sid]
        if core is None:
            return
        self.tick_version[sid] += 1
        version = self.tick_version[sid]

        def fire() -> None:
            if self.tick_version[sid] == version and self.cores[sid] is core:
                self.execute(sid, core.tick(self.now))

        self.at(core.next_wakeup(self.now), fire)

    def deliver(self, sid: str, obs: Observation) -> None:
        core = self.cores[sid]
        if core is not None:
            self.execute(sid, core.handle(obs, self.now))

    def execute(self, sid: str, actions: tuple[Action, ...]) -> None:
        for a in actions:
            if isinstance(a, PersistState):
                self.disk[sid] = a.data
                s = decode_state(a.data)
                self.history[sid].append((s.current_epoch, s.vote))
            elif isinstance(a, SendToPeer):
                if isinstance(a.message, VoteReply) and a.message.leader is not None:
                    self.granted.setdefault((sid, a.message.epoch), set()).add(a.message.leader)
                if sid in self.cut or a.peer in self.cut or self.rnd.random() < self.drop:
                    continue
                wire = encode_message(a.message)
                self.at(
                    self.now + self.latency(),
                    lambda p=a.peer, w=wire: self.deliver(p, PeerMessage(decode_message(w))),
                )
            elif isinstance(a, PublishTopology):
                self.published.append((self.now, sid, a.topology))
            elif isinstance(a, SendRole):
                self.at(self.now + self.latency(), lambda s=sid, r=a: self.role(s, r))
            elif isinstance(a, Log):
                if a.event == "+elected-leader":
                    self.elected.setdefault(int(a.get("epoch") or 0), set()).add(sid)
            else:
                raise AssertionError(f"unexpected action {a}")
        self.schedule_tick(sid)

    # -- nodes -------------------------------------------------------------------------------

    def ping(self, sid: str, node: NodeAddress) -> None:
        core = self.cores[sid]
        if core is None:
            return
        n = self.nodes[node]
        if n.alive and sid not in self.cut:
            report = n.report()

            def reply() -> None:
                if self.cores[sid] is core and sid not in self.cut:
                    self.deliver(sid, PingReply(node))
                    self.deliver(sid, report)

            self.at(self.now + self.latency(), reply)
        self.at(self.now + core.config.ping_period_ms, lambda: self.ping(sid, node))

    def role(self, sid: str, send: SendRole) -> None:
        node = self.nodes[send.node]
        if not node.alive or sid in self.cut:
            return
        ok = node.apply_role(send, self.now)
        self.at(
            self.now + self.latency(),
            lambda: self.deliver(sid, RoleApplied(send.node, send.role, send.epoch, ok)),
        )


def _role(topology: Topology, node: NodeAddress) -> tuple[Any, int, NodeAddress | None]:
    from sentinel.roles import wanted_role

    want = wanted_role(topology, node)
    assert want is not None
    return want.role, topology.epoch, want.primary


FAULTS = ("kill_primary", "crash_sentinel", "cut_sentinel", "kill_replica")


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(
    seed=st.integers(0, 2**32),
    faults=st.lists(st.sampled_from(FAULTS), min_size=1, max_size=6),
    drop=st.sampled_from([0.0, 0.05, 0.2]),
    max_latency=st.sampled_from([2, 20, 200]),
)
def test_random_faults_keep_epochs_safe_and_converge(
    seed: int, faults: list[str], drop: float, max_latency: int
) -> None:
    sim = Chaos(seed, drop=drop, max_latency=max_latency)
    rnd = random.Random(seed ^ 0x5EED)
    t = 2000
    for fault in faults:
        sim.run_until(t)
        if fault == "kill_primary" or fault == "kill_replica":
            live = [n for n in sim.nodes.values() if n.alive]
            primaries = [n for n in live if n.writable(t)]
            pool = primaries if fault == "kill_primary" and primaries else live
            victim = rnd.choice(pool)
            victim.alive = False
            sim.at(t + rnd.randint(500, 6000), lambda v=victim: setattr(v, "alive", True))
        elif fault == "crash_sentinel":
            sid = rnd.choice(IDS)
            if sim.cores[sid] is not None:
                sim.crash(sid)
                sim.at(t + rnd.randint(100, 5000), lambda s=sid: sim.start(s))
        else:
            sid = rnd.choice(IDS)
            sim.cut.add(sid)
            sim.at(t + rnd.randint(500, 8000), lambda s=sid: sim.cut.discard(s))
        t += rnd.randint(200, 4000)
    # Faults over: everything heals within 8 s; then 30 s of quiet.
    sim.run_until(t + 8000)
    for node in sim.nodes.values():
        node.alive = True
    sim.cut.clear()
    for sid in IDS:
        if sim.cores[sid] is None:
            sim.start(sid)
    sim.run_until(t + 38_000)

    # Safety: one leader per epoch, and no voter ever granted two candidates one epoch.
    assert all(len(v) == 1 for v in sim.elected.values()), sim.elected
    assert all(len(v) == 1 for v in sim.granted.values()), sim.granted
    # One topology and one publisher per epoch; publications only go up per sentinel.
    by_epoch: dict[int, set[tuple[str, Topology]]] = {}
    for _, sid, topo in sim.published:
        by_epoch.setdefault(topo.epoch, set()).add((sid, topo))
    assert all(len(v) == 1 for v in by_epoch.values()), by_epoch
    for sid in IDS:
        mine = [topo.epoch for _, s, topo in sim.published if s == sid]
        assert mine == sorted(set(mine))
        # Across restarts: current_epoch never decreases, a vote never changes within an epoch.
        epochs = [e for e, _ in sim.history[sid]]
        assert epochs == sorted(epochs)
        votes: dict[int, str] = {}
        for _, vote in sim.history[sid]:
            if vote is not None:
                assert votes.setdefault(vote.epoch, vote.leader) == vote.leader
    # Liveness: one topology everywhere, a live primary, and every node in its role.
    cores = [c for c in sim.cores.values() if c is not None]
    final = {c.topology for c in cores}
    assert len(final) == 1, [c.topology.epoch for c in cores]
    (topology,) = final
    shard = topology.shards[0]
    assert sim.nodes[shard.primary].alive
    for addr, node in sim.nodes.items():
        role, epoch, primary = _role(topology, addr)
        assert (node.role, node.epoch, node.primary) == (role, epoch, primary), addr
