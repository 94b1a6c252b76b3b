"""SDOWN / ODOWN rules with exact integer times (down_after_ms = 1000, quorum 2)."""

from __future__ import annotations

import pytest

from sentinel.detector import (
    TRANSITIONS,
    FailureDetector,
    Health,
    HealthChange,
    IllegalTransition,
    NodeKind,
    Watch,
)
from shardgate.topology import NodeAddress

P = NodeAddress("127.0.0.1", 7001)
R = NodeAddress("127.0.0.1", 7101)


def detector(**kw: int) -> FailureDetector:
    d = FailureDetector(kw.pop("down_after_ms", 1000), kw.pop("quorum", 2), **kw)
    d.watch(P, NodeKind.PRIMARY, epoch=1, now=0)
    d.watch(R, NodeKind.REPLICA, epoch=1, now=0)
    return d


def test_sdown_strictly_after_down_after_ms_since_the_last_valid_reply() -> None:
    d = detector()
    d.on_reply(P, now=400)
    assert d.tick(1000) == ()  # R, watched since 0, is exactly down_after old: still up
    d.tick(1400)  # P exactly down_after after its reply: still up
    assert d.state(P) is Health.UP
    changes = d.tick(1401)
    assert HealthChange(P, NodeKind.PRIMARY, Health.UP, Health.SDOWN, 1401) in changes
    assert d.state(P) is Health.SDOWN and d.down_since(P) == 1401
    # A new watch gets a full period too (Redis: last_avail_time = creation time).
    assert d.state(R) is Health.SDOWN and d.since(R) == 1400


def test_invalid_replies_do_not_refresh_and_a_valid_one_recovers() -> None:
    d = detector()
    d.on_reply(P, now=500, valid=False)
    d.tick(1001)
    assert d.state(P) is Health.SDOWN
    (change,) = d.on_reply(P, now=1200)
    assert (change.old, change.new, change.event) == (Health.SDOWN, Health.UP, "-sdown")
    assert d.state(P) is Health.UP and d.down_since(P) is None
    assert d.next_deadline(1200) == 2201


def test_odown_needs_quorum_including_self() -> None:
    d = detector()
    assert d.on_peer_report("s2", P, down=True, epoch=1, now=900) == ()  # we are not SDOWN yet
    changes = d.tick(1001)
    assert [c.event for c in changes if c.key == P] == ["+sdown", "+odown"]
    assert d.votes_down(P, 1001) == 2


def test_a_peer_saying_up_removes_its_vote() -> None:
    d = detector()
    d.tick(1001)
    d.on_peer_report("s2", P, down=True, epoch=1, now=1002)
    assert d.state(P) is Health.ODOWN
    (change,) = d.on_peer_report("s2", P, down=False, epoch=1, now=1100)
    assert change.event == "-odown" and d.state(P) is Health.SDOWN


def test_stale_peer_reports_stop_counting_after_the_freshness_bound() -> None:
    d = detector(report_fresh_ms=5000)
    d.tick(1001)
    d.on_peer_report("s2", P, down=True, epoch=1, now=1002)
    assert d.state(P) is Health.ODOWN
    assert d.next_deadline(1002) == 6003
    assert d.tick(6002) == ()
    (change,) = d.tick(6003)
    assert change.event == "-odown"


def test_reports_from_another_epoch_never_count() -> None:
    d = detector(quorum=3)
    d.tick(1001)
    d.on_peer_report("s2", P, down=True, epoch=1, now=1002)
    d.on_peer_report("s3", P, down=True, epoch=0, now=1002)  # behind us
    d.on_peer_report("s4", P, down=True, epoch=2, now=1002)  # ahead of us
    assert d.votes_down(P, 1002) == 2 and d.state(P) is Health.SDOWN
    assert d.peer_views(P, 1002) == {"s2": Health.SDOWN}


def test_reports_about_replicas_are_ignored() -> None:
    d = detector()
    d.tick(1001)
    assert d.on_peer_report("s2", R, down=True, epoch=1, now=1002) == ()
    assert d.state(R) is Health.SDOWN


def test_a_freshly_promoted_primary_gets_a_full_down_period() -> None:
    # The race behind Redis Sentinel's spurious second failover: the replica was busy being
    # promoted and missed pings, so its last reply is 900 ms old when it becomes primary.
    d = detector()
    d.on_reply(R, now=100)
    d.unwatch(P)
    d.tick(1000)
    assert d.reset(R, NodeKind.PRIMARY, epoch=2, now=1000) == ()
    assert d.tick(1101) == ()  # without the reset: 1101 - 100 > 1000 → SDOWN of a healthy node
    assert d.state(R) is Health.UP
    assert d.next_deadline(1000) == 2001


def test_without_a_reset_the_same_timeline_would_sdown_the_new_primary() -> None:
    d = detector()
    d.on_reply(R, now=100)
    d.unwatch(P)
    d.restamp(R, epoch=2, now=1000)
    assert [c.event for c in d.tick(1101)] == ["+sdown"]  # the race the reset exists for


def test_reset_drops_old_reports_and_a_demoted_node_keeps_its_timer() -> None:
    d = detector()
    d.tick(1001)
    d.on_peer_report("s2", P, down=True, epoch=1, now=1002)
    assert d.state(P) is Health.ODOWN
    (change,) = d.reset(P, NodeKind.REPLICA, epoch=2, now=1003)
    assert change.event == "-odown" and d.state(P) is Health.SDOWN
    assert d.votes_down(P, 1003) == 1


def test_restamp_keeps_the_timer_and_needs_fresh_reports() -> None:
    d = detector()
    d.tick(1001)
    d.on_peer_report("s2", P, down=True, epoch=1, now=1002)
    (change,) = d.restamp(P, epoch=2, now=1003)
    assert change.event == "-odown" and d.state(P) is Health.SDOWN
    (again,) = d.on_peer_report("s2", P, down=True, epoch=2, now=1004)
    assert again.event == "+odown"


def test_forgotten_peers_stop_counting() -> None:
    d = detector()
    d.tick(1001)
    d.on_peer_report("s2", P, down=True, epoch=1, now=1002)
    d.forget_peer("s2")
    assert d.votes_down(P, 1002) == 1


def test_the_transition_table_is_enforced() -> None:
    w = Watch(NodeKind.PRIMARY, 1, 0)
    with pytest.raises(IllegalTransition):
        w.move(Health.ODOWN, 5)  # UP → ODOWN skips SDOWN
    assert Health.ODOWN not in TRANSITIONS[Health.UP]
    for state, targets in TRANSITIONS.items():
        assert state not in targets


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="down_after_ms"):
        FailureDetector(0, 2)
    with pytest.raises(ValueError, match="quorum"):
        FailureDetector(1000, True)  # type: ignore[arg-type]


def test_unknown_keys_are_up_and_harmless() -> None:
    d = detector()
    assert d.on_reply("nobody", now=5) == ()
    assert d.state("nobody") is Health.UP and d.since("nobody") is None
    d.unwatch(P)
    assert P not in set(d.keys())
