"""The failover steps, replica ranking, and the coordinated manual failover (sans-I/O).

How it works
- A ``Failover`` is one attempt by this sentinel to fail one shard over under one epoch. It is a
  state machine (``Step``, ``TRANSITIONS``) fed with observations; every method returns the
  actions to execute, in order.

      WAIT_START ─elected─▶ SELECT_REPLICA ─auto─▶ PROMOTE ─▶ WAIT_PROMOTION ─confirmed─▶
      RECONFIGURE_REPLICAS ─▶ PUBLISH ─▶ DONE          (ABORTED from any waiting step)
      manual: SELECT_REPLICA ─▶ PAUSE_WRITES ─paused─▶ WAIT_CATCHUP ─caught up─▶ PROMOTE …

- WAIT_START is the election (the votes themselves are counted by ``sentinel.election``); it
  times out after ``election_timeout_ms`` (Redis: min(10 s, failover timeout)).
- SELECT_REPLICA ranks the replicas (``rank_replicas``): priority 0 never, SDOWN never, no recent
  report never, link to the primary down longer than ``down_after_ms * 10`` plus the time the
  primary has been down never (Redis's rule); then lowest priority number, highest replication
  offset, lowest address. No eligible replica aborts, and the ranking says why each one lost.
- PROMOTE sends ``SG.ROLE primary EPOCH``; WAIT_PROMOTION ends when the node confirms (+OK to
  the role change, or a report of role primary at this epoch or later), or aborts after
  ``failover_timeout_ms``. Nothing is rolled back after a promotion was sent: the epoch fences it.
- RECONFIGURE_REPLICAS sends ``SG.ROLE replica EPOCH NEW-PRIMARY`` to the other replicas and the
  old primary without waiting: publishing the topology is what ends the write blackout, and a
  node that missed its role change is corrected later by the core's reconciliation, which
  compares every node's reported epoch with the topology's.
- PUBLISH builds the new topology on top of the *newest topology known at that moment* (another
  shard may have changed meanwhile); if that one's epoch is already ≥ ours, the attempt is
  SUPERSEDED and the shard is retried later under a higher epoch.
- Manual failover keeps the old primary alive, so it is coordinated to lose nothing: writes are
  paused on the primary (``PauseWrites``, which the node lifts by itself after ``pause_ms`` even
  if this sentinel dies), the chosen replica must reach the primary's offset at the pause, then
  the old primary is demoted *first* and the replica promoted. Catch-up gets half the pause;
  the other half is left for the two role changes, so the node's own pause never expires before
  its demotion. Catch-up timeout aborts and resumes writes.
"""

from __future__ import annotations

import enum

import attrs

from sentinel.actions import (
    Action,
    Log,
    NodeReport,
    PauseWrites,
    PublishTopology,
    ResumeWrites,
    Role,
    RoleApplied,
    SendRole,
)
from sentinel.detector import IllegalTransition
from sentinel.state import FailoverRecord
from shardgate.topology import NodeAddress, Shard, Topology

# Redis: SENTINEL_ELECTION_TIMEOUT 10000 (the election gets min(this, failover_timeout)).
ELECTION_TIMEOUT_MS = 10_000
# Redis: replicas disconnected longer than down_after * 10 (+ primary's down time) are skipped.
LINK_DOWN_FACTOR = 10


class Step(enum.Enum):
    WAIT_START = "wait-start"
    SELECT_REPLICA = "select-replica"
    PAUSE_WRITES = "pause-writes"
    WAIT_CATCHUP = "wait-catchup"
    PROMOTE = "promote"
    WAIT_PROMOTION = "wait-promotion"
    RECONFIGURE_REPLICAS = "reconfigure-replicas"
    PUBLISH = "publish"
    DONE = "done"
    ABORTED = "aborted"


TRANSITIONS: dict[Step, frozenset[Step]] = {
    Step.WAIT_START: frozenset({Step.SELECT_REPLICA, Step.ABORTED}),
    Step.SELECT_REPLICA: frozenset({Step.PROMOTE, Step.PAUSE_WRITES, Step.ABORTED}),
    Step.PAUSE_WRITES: frozenset({Step.WAIT_CATCHUP, Step.ABORTED}),
    Step.WAIT_CATCHUP: frozenset({Step.PROMOTE, Step.ABORTED}),
    Step.PROMOTE: frozenset({Step.WAIT_PROMOTION}),
    Step.WAIT_PROMOTION: frozenset({Step.RECONFIGURE_REPLICAS, Step.ABORTED}),
    Step.RECONFIGURE_REPLICAS: frozenset({Step.PUBLISH}),
    Step.PUBLISH: frozenset({Step.DONE, Step.ABORTED}),
    Step.DONE: frozenset(),
    Step.ABORTED: frozenset(),
}


class AbortReason(enum.Enum):
    NOT_ELECTED = "not-elected"
    SPLIT_VOTE = "split-vote"  # every voter answered and nobody can win this epoch
    NO_ELIGIBLE_REPLICA = "no-good-replica"
    PRIMARY_RECOVERED = "primary-recovered"
    PAUSE_TIMEOUT = "pause-timeout"
    CATCHUP_TIMEOUT = "catchup-timeout"
    PROMOTION_REFUSED = "promotion-refused"
    PROMOTION_TIMEOUT = "promotion-timeout"
    SUPERSEDED = "superseded"
    TILT = "tilt"


@attrs.frozen(slots=True)
class ReplicaInfo:
    """What the core knows of one replica when ranking (``report_age_ms`` None: never heard)."""

    address: NodeAddress
    priority: int
    offset: int
    link_down_ms: int | None
    sdown: bool
    report_age_ms: int | None


@attrs.frozen(slots=True)
class Ranking:
    eligible: tuple[ReplicaInfo, ...]  # best first
    verdicts: tuple[tuple[str, str], ...]  # (address, "rank N ..." or why skipped), best first

    @property
    def best(self) -> ReplicaInfo | None:
        return self.eligible[0] if self.eligible else None


def rank_replicas(
    replicas: tuple[ReplicaInfo, ...],
    *,
    now: int,
    down_after_ms: int,
    primary_down_since_ms: int | None,
    max_report_age_ms: int,
) -> Ranking:
    max_link_down = down_after_ms * LINK_DOWN_FACTOR
    if primary_down_since_ms is not None:
        max_link_down += max(0, now - primary_down_since_ms)
    eligible = []
    skipped = []
    for r in replicas:
        if r.priority == 0:
            reason = "priority 0 (never promoted)"
        elif r.sdown:
            reason = "in sdown"
        elif r.report_age_ms is None:
            reason = "no report received"
        elif r.report_age_ms > max_report_age_ms:
            reason = f"last report {r.report_age_ms} ms old"
        elif r.link_down_ms is not None and r.link_down_ms > max_link_down:
            reason = f"link down {r.link_down_ms} ms > {max_link_down} ms"
        else:
            eligible.append(r)
            continue
        skipped.append((str(r.address), reason))
    eligible.sort(key=lambda r: (r.priority, -r.offset, r.address))
    verdicts = [
        (str(r.address), f"rank {i + 1}: priority {r.priority}, offset {r.offset}")
        for i, r in enumerate(eligible)
    ]
    return Ranking(tuple(eligible), (*verdicts, *sorted(skipped)))


def apply_failover(
    topology: Topology, shard_name: str, new_primary: NodeAddress, epoch: int
) -> Topology:
    """``topology`` with ``new_primary`` leading the shard and the old primary as a replica."""
    shards = []
    for s in topology.shards:
        if s.name == shard_name:
            replicas = (*(r for r in s.replicas if r != new_primary), s.primary)
            s = attrs.evolve(s, primary=new_primary, replicas=replicas)
        shards.append(s)
    return attrs.evolve(topology, epoch=epoch, shards=tuple(shards))


@attrs.define(slots=True)
class Failover:
    shard: Shard
    epoch: int
    leader: str
    manual: bool
    started_ms: int
    failover_timeout_ms: int
    pause_ms: int = 500
    step: Step = Step.WAIT_START
    step_since_ms: int = 0
    chosen: NodeAddress | None = None
    ranking: tuple[tuple[str, str], ...] = ()
    votes: tuple[tuple[str, str], ...] = ()
    abort_reason: AbortReason | None = None
    pause_offset: int | None = None
    pause_started_ms: int | None = None
    old_primary_demoted: bool = False
    published: Topology | None = None
    # Manual failover aborted after the old primary was demoted: roles were restored under this
    # epoch, and the core republishes the unchanged shard under it so every node and proxy agree.
    restore: bool = False
    timeline: list[tuple[str, int]] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        self.step_since_ms = self.started_ms
        self.timeline.append(("election", self.started_ms))

    @property
    def election_timeout_ms(self) -> int:
        return min(ELECTION_TIMEOUT_MS, self.failover_timeout_ms)

    @property
    def finished(self) -> bool:
        return self.step in (Step.DONE, Step.ABORTED)

    def _move(self, new: Step, now: int) -> None:
        if new not in TRANSITIONS[self.step]:
            raise IllegalTransition(f"failover {self.step.name} -> {new.name}")
        self.step = new
        self.step_since_ms = now

    def _log(self, event: str, **fields: object) -> Log:
        return Log.of(event, shard=self.shard.name, epoch=self.epoch, **fields)

    # -- steps ------------------------------------------------------------------------------

    def elected(
        self,
        now: int,
        *,
        votes: tuple[tuple[str, str], ...],
        replicas: tuple[ReplicaInfo, ...],
        down_after_ms: int,
        primary_down_since_ms: int | None,
        max_report_age_ms: int,
    ) -> list[Action]:
        self._move(Step.SELECT_REPLICA, now)
        self.votes = votes
        self.timeline.append(("elected", now))
        out: list[Action] = [self._log("+elected-leader", votes=len(votes))]
        ranking = rank_replicas(
            replicas,
            now=now,
            down_after_ms=down_after_ms,
            primary_down_since_ms=primary_down_since_ms,
            max_report_age_ms=max_report_age_ms,
        )
        self.ranking = ranking.verdicts
        best = ranking.best
        if best is None:
            return out + self.abort(AbortReason.NO_ELIGIBLE_REPLICA, now)
        self.chosen = best.address
        out.append(self._log("+selected-slave", replica=best.address))
        if self.manual:
            self._move(Step.PAUSE_WRITES, now)
            self.pause_started_ms = now
            self.timeline.append(("pause", now))
            out.append(PauseWrites(self.shard.primary, self.pause_ms))
            return out
        return out + self._promote(now)

    def on_writes_paused(self, node: NodeAddress, offset: int, now: int) -> list[Action]:
        if self.step is not Step.PAUSE_WRITES or node != self.shard.primary:
            return []
        self._move(Step.WAIT_CATCHUP, now)
        self.pause_offset = offset
        self.timeline.append(("paused", now))
        return [self._log("+writes-paused", offset=offset)]

    def on_node_report(self, report: NodeReport, now: int) -> list[Action]:
        if report.node != self.chosen:
            return []
        if self.step is Step.WAIT_CATCHUP:
            assert self.pause_offset is not None
            if report.offset >= self.pause_offset:
                self.timeline.append(("caught-up", now))
                return self._promote(now)
        elif (
            self.step is Step.WAIT_PROMOTION
            and report.role is Role.PRIMARY
            and report.epoch >= self.epoch
        ):
            return self._promoted(now)
        return []

    def on_role_applied(self, event: RoleApplied, now: int) -> list[Action]:
        if self.step is not Step.WAIT_PROMOTION or event.node != self.chosen:
            return []
        if event.role is not Role.PRIMARY or event.epoch != self.epoch:
            return []
        if event.ok:
            return self._promoted(now)
        return self.abort(AbortReason.PROMOTION_REFUSED, now)

    def _promote(self, now: int) -> list[Action]:
        assert self.chosen is not None
        self._move(Step.PROMOTE, now)
        out: list[Action] = []
        if self.manual:
            # Demote first: once the replica is primary, the old one must already refuse writes.
            out.append(SendRole(self.shard.primary, Role.REPLICA, self.epoch, self.chosen))
            self.old_primary_demoted = True
        out.append(self._log("+failover-state-send-slaveof-noone", replica=self.chosen))
        out.append(SendRole(self.chosen, Role.PRIMARY, self.epoch))
        self.timeline.append(("promote", now))
        self._move(Step.WAIT_PROMOTION, now)
        return out

    def _promoted(self, now: int) -> list[Action]:
        assert self.chosen is not None
        self._move(Step.RECONFIGURE_REPLICAS, now)
        self.timeline.append(("promoted", now))
        out: list[Action] = [self._log("+promoted-slave", replica=self.chosen)]
        others = [r for r in self.shard.replicas if r != self.chosen]
        if not self.old_primary_demoted:
            others.append(self.shard.primary)
        for node in others:
            out.append(SendRole(node, Role.REPLICA, self.epoch, self.chosen))
        out.append(self._log("+failover-state-reconf-slaves", replicas=len(others)))
        self._move(Step.PUBLISH, now)
        return out

    def publish(self, current: Topology, now: int) -> list[Action]:
        """Publish on top of ``current``, the newest topology the core holds right now."""
        assert self.step is Step.PUBLISH and self.chosen is not None
        base = next((s for s in current.shards if s.name == self.shard.name), None)
        if current.epoch >= self.epoch or base is None or base.primary != self.shard.primary:
            return self.abort(AbortReason.SUPERSEDED, now, newest=current.epoch)
        topology = apply_failover(current, self.shard.name, self.chosen, self.epoch)
        self.published = topology
        self._move(Step.DONE, now)
        self.timeline.append(("published", now))
        old, new = self.shard.primary, self.chosen
        switch = f"{self.shard.name} {old.host} {old.port} {new.host} {new.port}"
        return [
            PublishTopology(topology),
            Log.of("+switch-master", message=switch, epoch=self.epoch),
            self._log("+failover-end", duration_ms=now - self.started_ms),
        ]

    # -- time and aborts --------------------------------------------------------------------

    def deadline(self) -> int | None:
        if self.step is Step.WAIT_START:
            return self.started_ms + self.election_timeout_ms
        if self.step in (Step.PAUSE_WRITES, Step.WAIT_CATCHUP):
            assert self.pause_started_ms is not None
            return self.pause_started_ms + self.pause_ms // 2
        if self.step is Step.WAIT_PROMOTION:
            return self.step_since_ms + self.failover_timeout_ms
        return None

    def tick(self, now: int) -> list[Action]:
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return []
        reason = {
            Step.WAIT_START: AbortReason.NOT_ELECTED,
            Step.PAUSE_WRITES: AbortReason.PAUSE_TIMEOUT,
            Step.WAIT_CATCHUP: AbortReason.CATCHUP_TIMEOUT,
            Step.WAIT_PROMOTION: AbortReason.PROMOTION_TIMEOUT,
        }[self.step]
        return self.abort(reason, now)

    def abort(self, reason: AbortReason, now: int, **fields: object) -> list[Action]:
        if self.finished:
            return []
        paused = self.step in (Step.PAUSE_WRITES, Step.WAIT_CATCHUP)
        self._move(Step.ABORTED, now)
        self.abort_reason = reason
        self.timeline.append(("aborted", now))
        out: list[Action] = [self._log(f"-failover-abort-{reason.value}", **fields)]
        if self.manual and paused:
            out.append(ResumeWrites(self.shard.primary))
        elif self.manual and self.old_primary_demoted and self.chosen is not None:
            old = self.shard.primary
            out.append(SendRole(self.chosen, Role.REPLICA, self.epoch, old))
            out.append(SendRole(old, Role.PRIMARY, self.epoch))
            out.append(ResumeWrites(old))
            self.restore = True
        return out

    def record(self) -> FailoverRecord:
        return FailoverRecord(
            epoch=self.epoch,
            shard=self.shard.name,
            leader=self.leader,
            manual=self.manual,
            old_primary=str(self.shard.primary),
            new_primary=None if self.published is None or self.chosen is None else str(self.chosen),
            outcome="done" if self.step is Step.DONE else self._reason_text(),
            timeline=tuple(self.timeline),
            votes=self.votes,
            ranking=self.ranking,
        )

    def _reason_text(self) -> str:
        return self.abort_reason.value if self.abort_reason is not None else self.step.value
