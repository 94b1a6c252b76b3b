"""Forgetting members, and the quorum / majority that results."""

from __future__ import annotations

from sentinel.membership import MemberKind, Membership, QuorumStatus
from shardgate.topology import NodeAddress

S = MemberKind.SENTINEL
R = MemberKind.REPLICA


def five() -> Membership:
    m = Membership("s1", forget_after_ms=10_000)
    for sid in ("s2", "s3", "s4", "s5"):
        m.add(S, sid, now=0, address=NodeAddress("127.0.0.1", 26000 + int(sid[1])))
    m.add(R, "127.0.0.1:7101", now=0, address=NodeAddress("127.0.0.1", 7101))
    return m


def test_a_silent_replica_is_forgotten_one_ms_after_the_bound() -> None:
    m = five()
    for sid in ("s2", "s3", "s4", "s5"):
        m.seen(S, sid, now=9500)
    assert m.sweep(10_000, down_after_ms=1000) == ()
    gone = m.sweep(10_001, down_after_ms=1000)
    assert [g.key for g in gone] == ["127.0.0.1:7101"]
    assert m.replicas() == () and not m.knows(R, "127.0.0.1:7101")
    assert m.next_deadline(10_001) == 19_501


def test_sentinels_are_forgotten_only_while_a_majority_is_reachable() -> None:
    m = five()
    # s2 and s3 keep talking; s4 and s5 went away at 0.
    for t in range(1000, 20_001, 1000):
        m.seen(S, "s2", now=t)
        m.seen(S, "s3", now=t)
    gone = m.sweep(20_000, down_after_ms=1000)
    assert sorted(g.key for g in gone) == ["127.0.0.1:7101", "s4", "s5"]
    status = m.quorum_status(quorum=2, now=20_000, down_after_ms=1000)
    assert (status.sentinels, status.majority, status.needed) == (3, 2, 2)


def test_an_isolated_sentinel_forgets_nobody() -> None:
    m = five()
    assert m.sweep(50_000, down_after_ms=1000) == ()  # only 1 of 5 reachable: not a majority
    assert len(m.sentinels()) == 4
    status = m.quorum_status(quorum=2, now=50_000, down_after_ms=1000)
    assert (status.needed, status.reachable, status.reachable_ok) == (3, 1, False)
    assert status.reason == "cannot fail over now: 1 of 3 needed sentinels reachable"


def test_self_is_always_a_member_and_never_recorded() -> None:
    m = Membership("s1")
    assert m.seen(S, "s1", now=5) is False
    assert m.knows(S, "s1") and m.sentinels() == ()
    assert m.seen(S, "s2", now=5) is True and m.seen(S, "s2", now=6) is False


def test_quorum_status_arithmetic() -> None:
    q = QuorumStatus.compute(sentinels=3, reachable=3, quorum=2)
    assert (q.majority, q.needed, q.can_fail_over, q.reachable_ok) == (2, 2, True, True)
    assert q.reason == "OK 3 usable sentinels; 2 needed to fail over"
    q = QuorumStatus.compute(sentinels=5, reachable=5, quorum=1)
    assert q.needed == 3  # a majority, not just the quorum
    q = QuorumStatus.compute(sentinels=3, reachable=3, quorum=4)
    assert not q.can_fail_over
    assert q.reason == "cannot fail over: quorum 4 is larger than the 3 sentinels"
