"""One sentinel's whole brain: detector, TILT, membership, election and failovers (sans-I/O).

How it works
- The trio shell owns sockets and the clock. It calls ``tick(now)`` at least every
  ``TICK_MS`` (``next_wakeup(now)`` says exactly when), ``handle(observation, now)`` for every
  reply and peer message, and ``request_failover(shard, now)`` for ``SENTINEL FAILOVER``; each
  returns actions to execute in order (see ``sentinel.actions``).
- The shell pings every node every ``config.ping_period_ms`` and reports ``PingReply`` and
  ``NodeReport``; it sends each ``SendToPeer`` message to that peer and feeds peers' messages
  back as ``PeerMessage``.
- Topology: the core holds the newest topology it knows (its config's, the persisted one, or a
  peer's with a higher epoch, or its own publication). Adopting one re-arms the detector for
  every node whose role changed, re-stamps the rest with the new epoch, cancels this sentinel's
  own attempts on shards that changed, and persists.
- Reconciliation (``sentinel.roles``): a node whose report disagrees with the topology is sent
  its role, at most once per ``ROLE_RESEND_MS``, and only on a report received after the
  topology was adopted (an older one may describe a node that was already fixed).
- TILT freezes everything that acts: no votes, no attempts, no failover steps, no role sends.
"""

from __future__ import annotations

import attrs

from sentinel.actions import (
    Action,
    Log,
    NodeReport,
    Observation,
    PersistState,
    PingReply,
    RoleApplied,
    SendToPeer,
    WritesPaused,
)
from sentinel.config import SentinelConfig
from sentinel.detector import FailureDetector, Health, HealthChange, NodeKind
from sentinel.election import (
    AttemptTimer,
    Candidacy,
    Elector,
    RandomSource,
    max_backoff_ms,
)
from sentinel.failover import AbortReason, Failover, Step
from sentinel.leading import Leading
from sentinel.membership import MemberKind, Membership, QuorumStatus
from sentinel.messages import DownReport, Hello, Message, TopologyNews, VoteReply, VoteRequest
from sentinel.roles import node_roles, role_fix
from sentinel.state import FailoverRecord, PersistedState, encode_state
from sentinel.tilt import TiltGuard, TiltState
from shardgate.topology import NodeAddress, Shard, Topology

# Redis runs its timer at 10 Hz (server.hz); TILT needs ticks well under its 2 s trigger.
TICK_MS = 100
ROLE_RESEND_MS = 1000


class SentinelCore(Leading):
    def __init__(
        self,
        config: SentinelConfig,
        state: PersistedState | None,
        *,
        now: int,
        rng: RandomSource,
    ) -> None:
        st = state or PersistedState()
        self.config = config
        self.id = config.id
        # The persisted topology wins unless the operator's config carries a higher epoch.
        topo = st.topology
        self.topology = topo if topo and topo.epoch >= config.topology.epoch else config.topology
        self.elector = Elector(self.id, st.current_epoch, st.vote)
        self.elector.observe_epoch(self.topology.epoch)
        self.detector = FailureDetector(config.down_after_ms, config.quorum)
        self.membership = Membership(self.id, config.forget_after_ms)
        self.tilt = TiltGuard(last_tick_ms=now)
        self.timer = AttemptTimer(
            rng, max_backoff_ms(config.down_after_ms), config.failover_timeout_ms
        )
        self.gossip_period_ms = max(10, min(1000, config.down_after_ms // 4))
        self.history: list[FailoverRecord] = list(st.history)
        self.proxy_epochs: dict[str, tuple[int, int]] = {}
        self.failovers: dict[str, Failover] = {}
        self.candidacies: dict[str, Candidacy] = {}
        self.reports: dict[NodeAddress, tuple[NodeReport, int]] = {}
        self.role_sent: dict[NodeAddress, int] = {}
        self.last_gossip_ms = now - self.gossip_period_ms  # gossip on the first tick
        self.adopted_ms = now  # when self.topology became ours: older reports predate it
        self.peers: dict[str, NodeAddress] = {p.id: p.address for p in config.peers}
        self.peers.update((sid, addr) for sid, addr in st.sentinels if sid != self.id)
        for sid, addr in self.peers.items():
            self.membership.add(MemberKind.SENTINEL, sid, now=now, address=addr)
            self.detector.watch(sid, NodeKind.SENTINEL, epoch=0, now=now)
        self.roles = node_roles(self.topology)  # node → (kind, shard) under self.topology
        for node, (kind, _) in self.roles.items():
            self.detector.watch(node, kind, epoch=self.topology.epoch, now=now)
            if kind is NodeKind.REPLICA:
                self.membership.add(MemberKind.REPLICA, str(node), now=now, address=node)

    # -- persisted state ---------------------------------------------------------------------

    def persisted(self) -> PersistedState:
        return PersistedState(
            current_epoch=self.elector.current_epoch,
            vote=self.elector.vote,
            topology=self.topology,
            sentinels=tuple(sorted(self.peers.items())),
            history=tuple(self.history),
        )

    def _persist(self) -> PersistState:
        return PersistState(encode_state(self.persisted()))

    # -- queries -----------------------------------------------------------------------------

    def monitored_nodes(self) -> tuple[NodeAddress, ...]:
        """The store nodes the shell must ping (changes when a topology is adopted)."""
        return tuple(sorted(self.roles))

    def shard(self, name: str) -> Shard | None:
        return next((s for s in self.topology.shards if s.name == name), None)

    def quorum_status(self, now: int) -> QuorumStatus:
        return self.membership.quorum_status(
            quorum=self.config.quorum, now=now, down_after_ms=self.config.down_after_ms
        )

    def next_wakeup(self, now: int) -> int:
        """When the shell must call ``tick`` next: never later than ``TICK_MS`` from now."""
        times = [now + TICK_MS, self.last_gossip_ms + self.gossip_period_ms]
        for t in (
            self.detector.next_deadline(now),
            self.membership.next_deadline(now),
            self.tilt.ends_at(),
            *(f.deadline() for f in self.failovers.values()),
            *(
                c.rival_at_ms + self.timer.max_backoff_ms
                for c in self.candidacies.values()
                if c.rival_at_ms is not None
            ),
        ):
            if t is not None:
                times.append(t)
        for s in () if self.tilt.tilted or self._electing() else self.topology.shards:
            # An ODOWN shard waiting for its back-off is due at its not-before time (or now).
            if s.name not in self.failovers and self.detector.state(s.primary) is Health.ODOWN:
                times.append(self.timer.not_before(s.name) or now)
        return max(now, min(times))

    # -- the clock ---------------------------------------------------------------------------

    def tick(self, now: int) -> tuple[Action, ...]:
        out: list[Action] = []
        change = self.tilt.tick(now)
        if change is not None:
            out.append(Log.of(change.event, reason=change.reason))
            if change.new is TiltState.TILT:
                for fo in list(self.failovers.values()):
                    if fo.step in (Step.WAIT_START, Step.SELECT_REPLICA):
                        out += self._finish(fo, fo.abort(AbortReason.TILT, now), now)
        for hc in self.detector.tick(now):
            out += self._on_health(hc, now)
        out += self._sweep(now)
        if now - self.last_gossip_ms >= self.gossip_period_ms:
            self.last_gossip_ms = now
            out += self._broadcast(self._hello())
            out += self._down_reports()
        if self.tilt.tilted:
            return tuple(out)
        for fo in list(self.failovers.values()):
            out += self._step(fo, fo.tick(now), now)
        for shard in list(self.candidacies):  # a contested election ends after its grace
            out += self._check_elected(shard, now)
        out += self._maybe_attempt(now)
        for node in list(self.reports):
            out += self._reconcile(node, now)
        return tuple(out)

    # -- observations ------------------------------------------------------------------------

    def handle(self, obs: Observation, now: int) -> tuple[Action, ...]:
        out: list[Action] = []
        if isinstance(obs, PingReply):
            for hc in self.detector.on_reply(obs.node, now=now, valid=obs.valid):
                out += self._on_health(hc, now)
        elif isinstance(obs, NodeReport):
            self.reports[obs.node] = (obs, now)
            for hc in self.detector.on_reply(obs.node, now=now):
                out += self._on_health(hc, now)
            if obs.node in self.roles:
                self.membership.seen(MemberKind.REPLICA, str(obs.node), now=now)
            for fo in list(self.failovers.values()):
                out += self._step(fo, fo.on_node_report(obs, now), now)
            if not self.tilt.tilted:
                out += self._reconcile(obs.node, now)
        elif isinstance(obs, RoleApplied):
            if obs.ok and obs.node in self.reports:
                report, at = self.reports[obs.node]
                self.reports[obs.node] = (attrs.evolve(report, role=obs.role, epoch=obs.epoch), at)
            for fo in list(self.failovers.values()):
                out += self._step(fo, fo.on_role_applied(obs, now), now)
        elif isinstance(obs, WritesPaused):
            for fo in list(self.failovers.values()):
                actions = fo.on_writes_paused(obs.node, obs.offset, now)
                if actions and fo.chosen in self.reports:
                    actions += fo.on_node_report(self.reports[fo.chosen][0], now)
                out += self._step(fo, actions, now)
        else:
            out += self._on_peer(obs.message, now)
        return tuple(out)

    def _on_peer(self, msg: Message, now: int) -> list[Action]:
        out: list[Action] = []
        sender = msg.sender
        if sender == self.id:
            return out
        if isinstance(msg, Hello):
            if self.peers.get(sender) != msg.address:
                self.peers[sender] = msg.address
                self.detector.watch(sender, NodeKind.SENTINEL, epoch=0, now=now)
                out += [Log.of("+sentinel", id=sender, address=msg.address), self._persist()]
            self.membership.seen(MemberKind.SENTINEL, sender, now=now, address=msg.address)
        elif sender not in self.peers:
            return out  # only members (announced by a hello) take part
        else:
            self.membership.seen(MemberKind.SENTINEL, sender, now=now)
        for hc in self.detector.on_reply(sender, now=now):
            out += self._on_health(hc, now)
        if isinstance(msg, Hello):
            if self.elector.observe_epoch(msg.current_epoch):
                out.append(self._persist())
            if msg.topology_epoch < self.topology.epoch:
                news = TopologyNews(self.id, self.topology, self._record_of(self.topology.epoch))
                out.append(SendToPeer(sender, news))
        elif isinstance(msg, TopologyNews):
            if msg.topology.supersedes(self.topology):
                out += self._adopt(msg.topology, now, source=sender)
            if msg.record is not None and self._remember(msg.record):
                out.append(self._persist())
        elif isinstance(msg, DownReport):
            for hc in self.detector.on_peer_report(
                sender, msg.primary, down=msg.down, epoch=msg.epoch, now=now
            ):
                out += self._on_health(hc, now)
        elif isinstance(msg, VoteRequest):
            out += self._on_vote_request(msg, now)
        else:
            out += self._on_vote_reply(msg, now)
        return out

    def _on_vote_request(self, req: VoteRequest, now: int) -> list[Action]:
        if self.tilt.tilted or self.shard(req.shard) is None:
            return [
                Log.of(
                    "-vote-refused", candidate=req.sender, epoch=req.epoch, tilt=self.tilt.tilted
                )
            ]
        out: list[Action] = []
        mine = self.failovers.get(req.shard)
        if mine is not None and mine.step is Step.WAIT_START and req.epoch > mine.epoch:
            out += self._finish(mine, mine.abort(AbortReason.SUPERSEDED, now, by=req.sender), now)
        reply, changed = self.elector.handle_request(req, topology_epoch=self.topology.epoch)
        if changed:
            out.append(self._persist())  # durable before the reply leaves (design brief)
        if reply.leader == req.sender and req.sender != self.id:
            self.timer.cool_down(req.shard, now)
            out.append(Log.of("+vote-for-leader", leader=req.sender, epoch=req.epoch))
        out.append(SendToPeer(req.sender, reply))
        return out

    def _on_vote_reply(self, reply: VoteReply, now: int) -> list[Action]:
        out: list[Action] = []
        if self.elector.observe_epoch(reply.current_epoch):
            out.append(self._persist())
        for shard, cand in list(self.candidacies.items()):
            if cand.epoch == reply.epoch:
                cand.on_reply(reply, now)
                out += self._check_elected(shard, now)
        return out

    # -- health, attempts and failovers -----------------------------------------------------

    def _on_health(self, hc: HealthChange, now: int) -> list[Action]:
        out: list[Action] = [Log.of(hc.event, node=hc.key, kind=hc.kind.value)]
        if hc.kind is not NodeKind.PRIMARY or not isinstance(hc.key, NodeAddress):
            return out
        shard = self.roles.get(hc.key, (None, ""))[1]
        own_changed = (hc.old is Health.UP) != (hc.new is Health.UP)
        if own_changed:
            out += self._broadcast(self._down_report(shard, hc.key))
        if hc.new is Health.UP:
            self.timer.on_recovered(shard, now)
            fo = self.failovers.get(shard)
            if fo is not None and not fo.manual and fo.step is Step.WAIT_START:
                out += self._finish(fo, fo.abort(AbortReason.PRIMARY_RECOVERED, now), now)
        elif hc.new is Health.ODOWN:
            self.timer.on_odown(shard, now)
        return out

    def _adopt(self, topology: Topology, now: int, *, source: str) -> list[Action]:
        """Make ``topology`` (higher epoch) ours; persist it before anything else happens."""
        old_roles = self.roles
        new_roles = node_roles(topology)
        self.topology, self.roles = topology, new_roles
        self.adopted_ms = now
        self.elector.observe_epoch(topology.epoch)
        out: list[Action] = [self._persist()]
        out.append(Log.of("+config-update", epoch=topology.epoch, source=source))
        for node in old_roles.keys() - new_roles.keys():
            self.detector.unwatch(node)
        for node, (kind, _) in new_roles.items():
            if old_roles.get(node) != (kind, new_roles[node][1]):
                changes = self.detector.reset(node, kind, epoch=topology.epoch, now=now)
            else:
                changes = self.detector.restamp(node, epoch=topology.epoch, now=now)
            out += [Log.of(c.event, node=c.key, kind=c.kind.value) for c in changes]
            if kind is NodeKind.REPLICA:
                self.membership.seen(MemberKind.REPLICA, str(node), now=now, address=node)
        for s in topology.shards:
            old = old_roles.get(s.primary)
            if old is None or old[0] is not NodeKind.PRIMARY:
                self.timer.clear(s.name)
                fo = self.failovers.get(s.name)
                if fo is not None and source != self.id:
                    out += self._finish(fo, fo.abort(AbortReason.SUPERSEDED, now, by=source), now)
        out += self._down_reports()
        return out

    def _reconcile(self, node: NodeAddress, now: int) -> list[Action]:
        entry = self.reports.get(node)
        role = self.roles.get(node)
        if entry is None or role is None or self.tilt.tilted or entry[1] < self.adopted_ms:
            return []  # no report since the topology changed: the node may already be fixed
        fo = self.failovers.get(role[1])
        if fo is not None and fo.step not in (Step.WAIT_START, Step.SELECT_REPLICA):
            return []  # the failover owns this shard's roles now
        want = role_fix(self.topology, entry[0])
        if want is None or now - self.role_sent.get(node, -ROLE_RESEND_MS) < ROLE_RESEND_MS:
            return []
        self.role_sent[node] = now
        return [want, Log.of("+fix-role", node=node, role=want.role.value, epoch=want.epoch)]

    # -- membership and gossip --------------------------------------------------------------

    def _sweep(self, now: int) -> list[Action]:
        gone = self.membership.sweep(now, down_after_ms=self.config.down_after_ms)
        out: list[Action] = []
        for m in gone:
            out.append(Log.of(f"-{m.kind.value}-forgotten", id=m.key))
            if m.kind is MemberKind.SENTINEL:
                self.peers.pop(m.key, None)
                self.detector.unwatch(m.key)
                self.detector.forget_peer(m.key)
        if any(m.kind is MemberKind.SENTINEL for m in gone):
            out.append(self._persist())
        return out

    def _hello(self) -> Hello:
        return Hello(self.id, self.config.listen, self.elector.current_epoch, self.topology.epoch)

    def _down_report(self, shard: str, primary: NodeAddress) -> DownReport:
        down = self.detector.is_down(primary)
        return DownReport(self.id, shard, primary, self.topology.epoch, down)

    def _down_reports(self) -> list[Action]:
        out: list[Action] = []
        for s in self.topology.shards:
            out += self._broadcast(self._down_report(s.name, s.primary))
        return out

    def _broadcast(self, msg: Message) -> list[Action]:
        return [SendToPeer(peer, msg) for peer in sorted(self.peers)]
