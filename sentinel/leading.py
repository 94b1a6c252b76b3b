"""Leading failovers: when to stand for election, counting votes, driving ``Failover`` steps,
and recording history (sans-I/O; part of ``SentinelCore``, split out to keep modules small).

How it works
- ``_maybe_attempt`` (from ``tick``) starts a candidacy for an ODOWN shard once its back-off is
  over, one election at a time: two at once would run under consecutive epochs, and voters that
  see the higher one first must refuse the lower, so both would likely fail.
- ``_check_elected`` runs after every vote reply; once elected, the failover ranks the replicas
  with what the core knows of them *now* and takes its next steps.
- ``_step`` executes a failover's actions; a failover that reaches PUBLISH is published on top of
  the core's newest topology, which is adopted (and persisted) before the publication leaves.
- ``_finish`` records the attempt in the history and arms the timer: cleared after a success or
  a supersession (retry at once if still down), a cool-down after any other abort.
"""

from __future__ import annotations

import abc

import attrs

from sentinel.actions import Action, Log, NodeReport, PersistState, PublishTopology
from sentinel.config import SentinelConfig
from sentinel.detector import FailureDetector, Health
from sentinel.election import AttemptTimer, Candidacy, Elector, votes_needed
from sentinel.failover import AbortReason, Failover, ReplicaInfo, Step
from sentinel.membership import MemberKind, Membership, QuorumStatus
from sentinel.messages import Message, TopologyNews
from sentinel.state import MAX_HISTORY, FailoverRecord
from sentinel.tilt import TiltGuard
from shardgate.topology import NodeAddress, Shard, Topology

# Proxies that may report their epoch; more are ignored (a proxy fleet is a few dozen).
MAX_PROXIES = 1024


class Leading(abc.ABC):
    """The failover-leading half of ``SentinelCore`` (which provides the state below)."""

    id: str
    config: SentinelConfig
    topology: Topology
    elector: Elector
    detector: FailureDetector
    membership: Membership
    tilt: TiltGuard
    timer: AttemptTimer
    failovers: dict[str, Failover]
    candidacies: dict[str, Candidacy]
    reports: dict[NodeAddress, tuple[NodeReport, int]]
    history: list[FailoverRecord]
    proxy_epochs: dict[str, tuple[int, int]]  # proxy → (epoch it runs, when it said so)

    @abc.abstractmethod
    def _persist(self) -> PersistState:
        """Provided by ``SentinelCore``."""

    @abc.abstractmethod
    def _adopt(self, topology: Topology, now: int, *, source: str) -> list[Action]:
        """Provided by ``SentinelCore``."""

    @abc.abstractmethod
    def _broadcast(self, msg: Message) -> list[Action]:
        """Provided by ``SentinelCore``."""

    @abc.abstractmethod
    def shard(self, name: str) -> Shard | None:
        """Provided by ``SentinelCore``."""

    @abc.abstractmethod
    def quorum_status(self, now: int) -> QuorumStatus:
        """Provided by ``SentinelCore``."""

    def _electing(self) -> bool:
        return any(f.step is Step.WAIT_START for f in self.failovers.values())

    def _maybe_attempt(self, now: int) -> list[Action]:
        out: list[Action] = []
        for s in () if self._electing() else self.topology.shards:
            if self._electing():
                break
            if s.name in self.failovers or self.detector.state(s.primary) is not Health.ODOWN:
                continue
            self.timer.on_odown(s.name, now)
            if self.timer.ready(s.name, now):
                out += self._start_attempt(s, now, manual=False)
        return out

    def request_failover(self, shard_name: str, now: int) -> tuple[str | None, tuple[Action, ...]]:
        """``SENTINEL FAILOVER``: (error text or None, actions)."""
        s = self.shard(shard_name)
        if s is None:
            return "No such master with that name", ()
        if shard_name in self.failovers:
            return "INPROG Failover already in progress", ()
        if self.tilt.tilted:
            return "TILT sentinel is in TILT mode", ()
        status = self.quorum_status(now)
        if not status.reachable_ok:
            return f"NOQUORUM {status.reason}", ()
        return None, tuple(self._start_attempt(s, now, manual=True))

    def _start_attempt(self, s: Shard, now: int, *, manual: bool) -> list[Action]:
        status = self.quorum_status(now)
        if not status.can_fail_over:
            self.timer.cool_down(s.name, now)
            return [Log.of("-failover-abort-quorum", shard=s.name, reason=status.reason)]
        deadline = now + min(10_000, self.config.failover_timeout_ms)
        cand, req = self.elector.start_candidacy(
            s.name, topology_epoch=self.topology.epoch, now=now, deadline_ms=deadline
        )
        fo = Failover(
            s,
            cand.epoch,
            self.id,
            manual,
            now,
            self.config.failover_timeout_ms,
            pause_ms=self.config.manual_pause_ms,
        )
        if not manual and self.detector.state(s.primary) is Health.ODOWN:
            down_since = self.detector.down_since(s.primary)
            odown_since = self.detector.since(s.primary)
            if down_since is not None and odown_since is not None:
                fo.timeline[0:0] = [("sdown", down_since), ("odown", odown_since)]
        self.candidacies[s.name] = cand
        self.failovers[s.name] = fo
        out: list[Action] = [
            self._persist(),
            Log.of("+new-epoch", epoch=cand.epoch),
            Log.of("+try-failover", shard=s.name, epoch=cand.epoch, manual=manual),
        ]
        out += self._broadcast(req)
        return out + self._check_elected(s.name, now)

    def _check_elected(self, shard: str, now: int) -> list[Action]:
        cand = self.candidacies.get(shard)
        fo = self.failovers.get(shard)
        if cand is None or fo is None or fo.step is not Step.WAIT_START:
            return []
        members = frozenset({self.id, *(m.key for m in self.membership.sentinels())})
        needed = votes_needed(sentinels=len(members), quorum=self.config.quorum)
        if not cand.elected(needed, members):
            if cand.split(needed, members) or cand.contested(now, self.timer.max_backoff_ms):
                return self._finish(fo, fo.abort(AbortReason.SPLIT_VOTE, now), now)
            return []
        actions = fo.elected(
            now,
            votes=cand.votes(),
            replicas=self._replica_infos(fo.shard, now),
            down_after_ms=self.config.down_after_ms,
            primary_down_since_ms=None if fo.manual else self.detector.down_since(fo.shard.primary),
            max_report_age_ms=max(3 * self.config.ping_period_ms, 1000),
        )
        return self._step(fo, actions, now)

    def _replica_infos(self, s: Shard, now: int) -> tuple[ReplicaInfo, ...]:
        infos = []
        for r in s.replicas:
            if not self.membership.knows(MemberKind.REPLICA, str(r)):
                continue  # forgotten
            entry = self.reports.get(r)
            infos.append(
                ReplicaInfo(
                    address=r,
                    # Either side can veto: priority 0 in sentinel.toml or on the node itself.
                    priority=0
                    if entry is not None and entry[0].priority == 0
                    else self.config.priority(r),
                    offset=entry[0].offset if entry else 0,
                    link_down_ms=entry[0].link_down_ms if entry else None,
                    sdown=self.detector.is_down(r),
                    report_age_ms=now - entry[1] if entry else None,
                )
            )
        return tuple(infos)

    def _step(self, fo: Failover, actions: list[Action], now: int) -> list[Action]:
        """Run a failover's actions, publishing and finishing it when it gets there."""
        out = list(actions)
        if fo.step is Step.PUBLISH and not self.tilt.tilted:
            published = fo.publish(self.topology, now)
            if fo.published is not None:
                # Adopt (and persist) our own publication before it leaves the process, so a
                # crash right after can never make this sentinel publish a lower epoch.
                out += self._adopt(fo.published, now, source=self.id)
                out += published
                out += self._broadcast(TopologyNews(self.id, fo.published, fo.record()))
            else:
                out += published
        if fo.finished:
            out += self._finish(fo, [], now)
        return out

    def _finish(self, fo: Failover, actions: list[Action], now: int) -> list[Action]:
        out = list(actions)
        if self.failovers.get(fo.shard.name) is not fo:
            return out
        del self.failovers[fo.shard.name]
        self.candidacies.pop(fo.shard.name, None)
        self._remember(fo.record())
        if fo.step is Step.DONE or fo.abort_reason in (
            AbortReason.SUPERSEDED,
            AbortReason.SPLIT_VOTE,
        ):
            # Superseded: another change got a higher epoch first. Split vote: nobody could win
            # that epoch. Either way retry (after a fresh back-off) if still down.
            self.timer.clear(fo.shard.name)
        else:
            self.timer.cool_down(fo.shard.name, now)
            if fo.restore and fo.epoch > self.topology.epoch:
                restored = attrs.evolve(self.topology, epoch=fo.epoch)
                out += self._adopt(restored, now, source=self.id)
                out += [
                    PublishTopology(restored),
                    *self._broadcast(TopologyNews(self.id, restored, fo.record())),
                ]
        return [*out, self._persist()]

    def note_proxy_epoch(self, proxy: str, epoch: int, now: int) -> tuple[Action, ...]:
        """A proxy reports the topology epoch it runs. Status shows it; a proxy's first report
        of a failover's epoch goes into that failover's timeline (the end of its blackout)."""
        old = self.proxy_epochs.get(proxy)
        if old is None and len(self.proxy_epochs) >= MAX_PROXIES:
            return ()  # bounded: names come from the network
        self.proxy_epochs[proxy] = (epoch, now)
        if old is not None and old[0] >= epoch:
            return ()
        step = f"adopted by {proxy}"
        for i, r in enumerate(self.history):
            if r.epoch == epoch and r.outcome == "done" and step not in dict(r.timeline):
                self.history[i] = attrs.evolve(r, timeline=(*r.timeline, (step, now)))
                return (Log.of("+proxy-adopted", proxy=proxy, epoch=epoch), self._persist())
        return ()

    def _remember(self, record: FailoverRecord) -> bool:
        """Add a failover record (ours, or a peer's from ``TopologyNews``) unless known."""
        if any((r.epoch, r.leader) == (record.epoch, record.leader) for r in self.history):
            return False
        self.history = sorted([*self.history, record], key=lambda r: r.epoch)[-MAX_HISTORY:]
        return True

    def _record_of(self, epoch: int) -> FailoverRecord | None:
        """The successful failover that produced the topology of ``epoch``, if we know it."""
        return next(
            (r for r in self.history if r.epoch == epoch and r.new_primary is not None), None
        )
