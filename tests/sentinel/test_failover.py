"""The failover state machine, replica ranking and the manual failover, step by step."""

from __future__ import annotations

import pytest

from sentinel.actions import (
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
from sentinel.failover import (
    TRANSITIONS,
    AbortReason,
    Failover,
    ReplicaInfo,
    Step,
    apply_failover,
    rank_replicas,
)
from shardgate.topology import NodeAddress, Shard, SlotRange, Topology

P = NodeAddress("127.0.0.1", 7001)
R1 = NodeAddress("127.0.0.1", 7101)
R2 = NodeAddress("127.0.0.1", 7102)
R3 = NodeAddress("127.0.0.1", 7103)
SHARD = Shard("s0", P, (R1, R2), (SlotRange(0, 8191),))
OTHER = Shard("s1", NodeAddress("127.0.0.1", 7002), (), (SlotRange(8192, 16383),))
TOPO = Topology(4, (SHARD, OTHER))


def info(addr: NodeAddress, *, priority: int = 100, offset: int = 10, **kw: object) -> ReplicaInfo:
    return ReplicaInfo(
        addr,
        priority,
        offset,
        kw.get("link_down_ms"),  # type: ignore[arg-type]
        bool(kw.get("sdown", False)),
        kw.get("report_age_ms", 50),  # type: ignore[arg-type]
    )


def rank(*replicas: ReplicaInfo, now: int = 10_000, down_since: int | None = 9_000) -> list[str]:
    r = rank_replicas(
        replicas,
        now=now,
        down_after_ms=1000,
        primary_down_since_ms=down_since,
        max_report_age_ms=1000,
    )
    return [f"{a} {v}" for a, v in r.verdicts]


def test_ranking_priority_then_offset_then_address() -> None:
    assert rank(info(R1, offset=5), info(R2, offset=9), info(R3, priority=50, offset=1)) == [
        "127.0.0.1:7103 rank 1: priority 50, offset 1",
        "127.0.0.1:7102 rank 2: priority 100, offset 9",
        "127.0.0.1:7101 rank 3: priority 100, offset 5",
    ]
    assert rank(info(R2), info(R1))[0].startswith("127.0.0.1:7101 rank 1")


def test_ranking_skips_and_says_why() -> None:
    verdicts = rank(
        info(R1, priority=0, offset=99),
        info(R2, sdown=True),
        info(R3, report_age_ms=None),
        info(NodeAddress("10.0.0.1", 1), report_age_ms=1001),
        # Redis's bound: down_after * 10 + time since the primary went down = 10 000 + 1 000.
        info(NodeAddress("10.0.0.2", 1), link_down_ms=11_001),
        info(NodeAddress("10.0.0.3", 1), link_down_ms=11_000),
    )
    assert verdicts == [
        "10.0.0.3:1 rank 1: priority 100, offset 10",
        "10.0.0.1:1 last report 1001 ms old",
        "10.0.0.2:1 link down 11001 ms > 11000 ms",
        "127.0.0.1:7101 priority 0 (never promoted)",
        "127.0.0.1:7102 in sdown",
        "127.0.0.1:7103 no report received",
    ]


def test_apply_failover_keeps_the_old_primary_as_a_replica() -> None:
    t = apply_failover(TOPO, "s0", R2, 5)
    assert t.epoch == 5 and t.shards[0].primary == R2 and t.shards[0].replicas == (R1, P)
    assert t.shards[1] == OTHER and t.shard_for_slot(0).primary == R2


def failover(*, manual: bool = False) -> Failover:
    return Failover(SHARD, 5, "s1", manual, 1000, 3000, pause_ms=500)


def elect(fo: Failover, now: int = 1002, *replicas: ReplicaInfo) -> list[object]:
    return list(
        fo.elected(
            now,
            votes=(("s1", "s1"), ("s2", "s1")),
            replicas=replicas or (info(R1, offset=5), info(R2, offset=9)),
            down_after_ms=1000,
            primary_down_since_ms=0,
            max_report_age_ms=1000,
        )
    )


def test_automatic_failover_steps_and_actions() -> None:
    fo = failover()
    out = elect(fo)
    assert fo.step is Step.WAIT_PROMOTION and fo.chosen == R2
    assert [a for a in out if not isinstance(a, Log)] == [SendRole(R2, Role.PRIMARY, 5)]
    assert fo.deadline() == 1002 + 3000
    # A report from another node, or of an older role, changes nothing.
    assert fo.on_node_report(NodeReport(R1, Role.PRIMARY, 5), 1003) == []
    assert fo.on_node_report(NodeReport(R2, Role.PRIMARY, 4), 1003) == []
    out = fo.on_role_applied(RoleApplied(R2, Role.PRIMARY, 5, True), 1004)
    assert [a for a in out if not isinstance(a, Log)] == [
        SendRole(R1, Role.REPLICA, 5, R2),
        SendRole(P, Role.REPLICA, 5, R2),
    ]
    assert fo.step is Step.PUBLISH
    out = fo.publish(TOPO, 1005)
    assert fo.step is Step.DONE and isinstance(out[0], PublishTopology)
    assert out[0].topology == apply_failover(TOPO, "s0", R2, 5)
    switch = [a for a in out if isinstance(a, Log) and a.event == "+switch-master"]
    assert switch[0].get("message") == "s0 127.0.0.1 7001 127.0.0.1 7102"
    record = fo.record()
    assert record.outcome == "done" and record.new_primary == "127.0.0.1:7102"
    assert [s for s, _ in record.timeline] == [
        "election",
        "elected",
        "promote",
        "promoted",
        "published",
    ]
    assert record.duration_ms() == 5


def test_promotion_confirmed_by_a_report() -> None:
    fo = failover()
    elect(fo)
    fo.on_node_report(NodeReport(R2, Role.PRIMARY, 6), 1100)
    assert fo.step is Step.PUBLISH


@pytest.mark.parametrize(
    ("step_time", "reason"),
    [(None, AbortReason.NOT_ELECTED), (1002, AbortReason.PROMOTION_TIMEOUT)],
)
def test_timeouts_at_exact_times(step_time: int | None, reason: AbortReason) -> None:
    fo = failover()
    if step_time is None:
        deadline = 1000 + 3000  # min(10 s, failover_timeout)
    else:
        elect(fo, step_time)
        deadline = step_time + 3000
    assert fo.tick(deadline - 1) == []
    out = fo.tick(deadline)
    assert fo.step is Step.ABORTED and fo.abort_reason is reason
    assert isinstance(out[0], Log) and out[0].event == f"-failover-abort-{reason.value}"
    assert fo.tick(deadline + 1) == [] and fo.abort(reason, deadline + 1) == []


def test_no_eligible_replica_aborts_and_says_why() -> None:
    fo = failover()
    elect(fo, 1002, info(R1, priority=0), info(R2, sdown=True))
    assert fo.step is Step.ABORTED and fo.abort_reason is AbortReason.NO_ELIGIBLE_REPLICA
    assert fo.record().ranking == (
        ("127.0.0.1:7101", "priority 0 (never promoted)"),
        ("127.0.0.1:7102", "in sdown"),
    )


def test_refused_promotion_aborts() -> None:
    fo = failover()
    elect(fo)
    fo.on_role_applied(RoleApplied(R2, Role.PRIMARY, 5, False), 1003)
    assert fo.abort_reason is AbortReason.PROMOTION_REFUSED


def test_publishing_over_a_newer_topology_is_superseded() -> None:
    for current in (
        Topology(5, TOPO.shards),  # someone already published our epoch
        apply_failover(TOPO, "s0", R1, 4),  # the shard changed under us
    ):
        fo = failover()
        elect(fo)
        fo.on_role_applied(RoleApplied(R2, Role.PRIMARY, 5, True), 1004)
        fo.publish(current, 1005)
        assert fo.abort_reason is AbortReason.SUPERSEDED and fo.published is None


def test_publish_rebases_on_the_newest_topology() -> None:
    fo = failover()
    elect(fo)
    fo.on_role_applied(RoleApplied(R2, Role.PRIMARY, 5, True), 1004)
    moved = Topology(4, (SHARD, Shard("s1", NodeAddress("127.0.0.1", 7999), (), OTHER.slots)))
    (publish, *_) = fo.publish(moved, 1005)
    assert isinstance(publish, PublishTopology)
    assert publish.topology.shards[1].primary == NodeAddress("127.0.0.1", 7999)


def test_manual_failover_pauses_waits_for_catch_up_and_demotes_first() -> None:
    fo = failover(manual=True)
    out = elect(fo, 1002)
    assert [a for a in out if not isinstance(a, Log)] == [PauseWrites(P, 500)]
    assert fo.step is Step.PAUSE_WRITES and fo.deadline() == 1002 + 250
    fo.on_writes_paused(P, 1234, 1004)
    assert fo.step is Step.WAIT_CATCHUP
    assert fo.on_node_report(NodeReport(R2, Role.REPLICA, 4, P, 1233), 1050) == []
    out = fo.on_node_report(NodeReport(R2, Role.REPLICA, 4, P, 1234), 1100)
    assert [a for a in out if not isinstance(a, Log)] == [
        SendRole(P, Role.REPLICA, 5, R2),
        SendRole(R2, Role.PRIMARY, 5),
    ]
    out = fo.on_role_applied(RoleApplied(R2, Role.PRIMARY, 5, True), 1102)
    assert [a for a in out if not isinstance(a, Log)] == [SendRole(R1, Role.REPLICA, 5, R2)]


@pytest.mark.parametrize("paused", [False, True])
def test_manual_failover_catch_up_is_bounded_by_half_the_pause(paused: bool) -> None:
    fo = failover(manual=True)
    elect(fo, 1002)
    if paused:
        fo.on_writes_paused(P, 1234, 1004)
    assert fo.tick(1251) == []
    out = fo.tick(1252)
    reason = AbortReason.CATCHUP_TIMEOUT if paused else AbortReason.PAUSE_TIMEOUT
    assert fo.abort_reason is reason
    assert [a for a in out if not isinstance(a, Log)] == [ResumeWrites(P)]


def test_manual_failover_failing_after_the_demotion_restores_the_old_primary() -> None:
    fo = failover(manual=True)
    elect(fo, 1002)
    fo.on_writes_paused(P, 1, 1004)
    fo.on_node_report(NodeReport(R2, Role.REPLICA, 4, P, 1), 1005)
    out = fo.on_role_applied(RoleApplied(R2, Role.PRIMARY, 5, False), 1007)
    assert [a for a in out if not isinstance(a, Log)] == [
        SendRole(R2, Role.REPLICA, 5, P),
        SendRole(P, Role.PRIMARY, 5),
        ResumeWrites(P),
    ]
    assert fo.restore


def test_the_transition_table_is_enforced() -> None:
    fo = failover()
    with pytest.raises(IllegalTransition):
        fo._move(Step.PUBLISH, 1)
    assert TRANSITIONS[Step.DONE] == frozenset() and TRANSITIONS[Step.ABORTED] == frozenset()
    reachable = {Step.WAIT_START}
    for _ in Step:
        reachable |= {t for s in reachable for t in TRANSITIONS[s]}
    assert reachable == set(Step)
