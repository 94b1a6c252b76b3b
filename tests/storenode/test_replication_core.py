"""Pure replication and fencing rules: backlog, stream records, ack table, roles."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardgate.resp import RequestParser, encode_command
from storenode import roles
from storenode.replication import (
    ReplicaRecord,
    ReplicaTable,
    ReplicationBacklog,
    ack_sent_at,
    del_effect,
    encoded_length,
    put_effect,
    stamp_command,
)
from storenode.roles import Role, RoleState, StaleEpoch


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=6))
def test_encoded_length_matches_the_encoding(args: list[bytes]) -> None:
    assert encoded_length(args) == len(encode_command(args))


@given(st.binary(max_size=100), st.binary(max_size=2000), st.integers(0, 2**62))
def test_stream_records_are_plain_commands(key: bytes, value: bytes, expire_at: int) -> None:
    assert put_effect(key, value, expire_at) == encode_command(
        [b"SG.PUT", key, value, str(expire_at).encode()]
    )
    assert del_effect(key) == encode_command([b"DEL", key])
    parser = RequestParser()
    parser.feed(put_effect(key, value, expire_at) + del_effect(key))
    assert parser.next_command() == [b"SG.PUT", key, value, str(expire_at).encode()]
    assert parser.next_command() == [b"DEL", key]


def test_backlog_keeps_the_newest_bytes_by_offset() -> None:
    b = ReplicationBacklog(size=10, offset=100)
    b.append(b"abcdef")
    assert (b.start_offset, b.end_offset) == (100, 106)
    assert b.read_from(102) == b"cdef"
    assert b.covers(106) and not b.covers(107) and not b.covers(99)
    b.append(b"0123456789abcdef")  # 22 bytes held > 2 * size: trimmed to the newest 10
    assert b.end_offset == 122
    assert not b.covers(111)
    assert b.covers(112)
    assert b.read_from(112) == b"6789abcdef"
    assert b.read_from(122) == b""
    with pytest.raises(ValueError):
        b.read_from(105)


def test_backlog_reset_moves_the_origin() -> None:
    b = ReplicationBacklog(size=16)
    b.append(b"xyz")
    b.reset(500)
    assert b.covers(500) and not b.covers(3)
    b.append(b"q")
    assert b.read_from(500) == b"q"


def test_ack_table_counts_acked_and_good_replicas() -> None:
    t = ReplicaTable()
    t.add(ReplicaRecord(id=1, addr="127.0.0.1:1", online=True))
    t.add(ReplicaRecord(id=2, addr="127.0.0.1:2", online=True))
    t.add(ReplicaRecord(id=3, addr="127.0.0.1:3", online=False))  # still syncing
    t.ack(1, 100, sent=10.0)
    t.ack(2, 50, sent=5.0)
    t.ack(3, 100, sent=10.0)
    t.ack(1, 40, sent=11.0)  # an older ack never moves the offset back
    assert t.acked(50) == 2
    assert t.acked(100) == 1
    assert t.good(now=12.0, max_lag=3.0) == 1
    assert t.good(now=12.0, max_lag=10.0) == 2
    t.remove(1)
    assert t.acked(50) == 1


def test_an_ack_delivered_late_counts_from_when_it_was_sent() -> None:
    """Acks held up by a partition arrive in a burst at the heal: they are old news."""
    t = ReplicaTable()
    t.add(ReplicaRecord(id=1, addr="127.0.0.1:1", online=True))
    t.ack(1, 10, sent=100.0)
    t.ack(1, 12, sent=95.0)  # sent earlier, delivered later: freshness does not go back
    assert t.good(now=100.5, max_lag=1.0) == 1
    assert t.good(now=101.5, max_lag=1.0) == 0


def ack(offset: int, sent_ms: int, stamp: bytes | None = None) -> list[bytes]:
    """An ``SG.ACK`` as the primary parses it."""
    args = [b"SG.ACK", str(offset).encode(), str(sent_ms).encode()]
    return [*args, stamp] if stamp is not None else args


def test_a_stamp_is_the_primarys_monotonic_clock_in_ms() -> None:
    parser = RequestParser()
    parser.feed(stamp_command(1234.5678))
    assert parser.next_command() == [b"SG.PING", b"1234567"]


def test_acks_held_up_by_a_partition_do_not_count_at_the_heal() -> None:
    """Scenario 3: cut at t=100 (primary's monotonic clock), healed at t=106. The replica's
    acks from the cut's first second arrive in a burst at the heal, echoing the stamps they
    read then: min-replicas (max lag 1 s) stays unmet; a fresh echo meets it again."""
    t = ReplicaTable()
    t.add(ReplicaRecord(id=1, addr="10.0.0.2:6379", online=True))
    for i in range(10):  # sent at 100.0 .. 100.9 (echoing stamps 99.9 .. 100.8), read at 106.0
        stamp = str(99_900 + 100 * i).encode()
        sent = ack_sent_at(106.0, ack(500, 0, stamp), wall_now_ms=0, stamped=True)
        t.ack(1, 500, sent, stamped=True)
    assert t.replicas[1].last_ack == 100.8
    assert t.good(now=106.0, max_lag=1.0) == 0
    assert t.good(now=101.7, max_lag=1.0) == 1  # the same acks were good while they were new
    sent = ack_sent_at(106.2, ack(500, 0, b"106100"), wall_now_ms=0, stamped=True)
    t.ack(1, 500, sent, stamped=True)
    assert t.good(now=106.2, max_lag=1.0) == 1


@pytest.mark.parametrize("skew_ms", [-30_000, -900, 0, 900, 30_000])
def test_an_echoed_ack_is_judged_on_the_primarys_clock_whatever_the_replicas_says(
    skew_ms: int,
) -> None:
    """The replica's wall clock is ``skew_ms`` off ours: an echoed ack's age does not change."""
    wall_now_ms = 1_700_000_000_000
    sent_ms = wall_now_ms - 3_000 + skew_ms  # really sent 3 s ago, by the replica's clock
    args = ack(10, sent_ms, b"47000")  # echoing our stamp from 3 s ago (now = 50.0)
    assert ack_sent_at(50.0, args, wall_now_ms=wall_now_ms, stamped=True) == 47.0
    assert ack_sent_at(50.0, args, wall_now_ms=wall_now_ms) == 47.0  # the first echoed ack


def test_judged_by_the_replicas_wall_clock_a_skewed_ack_would_look_new() -> None:
    """Why the stamp: the replica's send time (still used for replicas that echo none) is off by
    the clock skew. A replica 5 s ahead makes a 3 s old ack look new, so a primary cut off from
    it would meet min-replicas on the strength of old acks; one 5 s behind never would."""
    wall_now_ms = 1_700_000_000_000
    ahead = ack(10, wall_now_ms - 3_000 + 5_000)
    assert ack_sent_at(50.0, ahead, wall_now_ms=wall_now_ms) == 50.0  # unsafe: looks new
    behind = ack(10, wall_now_ms - 5_000)
    assert ack_sent_at(50.0, behind, wall_now_ms=wall_now_ms) == 45.0
    # Once a link has echoed stamps, an ack without one proves nothing.
    assert ack_sent_at(50.0, ahead, wall_now_ms=wall_now_ms, stamped=True) == float("-inf")
    assert ack_sent_at(50.0, [b"SG.ACK", b"10"], wall_now_ms=0, stamped=True) == float("-inf")
    assert ack_sent_at(50.0, [b"SG.ACK", b"10"], wall_now_ms=0) == 50.0  # the oldest replicas


def test_an_echoed_stamp_from_the_future_counts_as_now() -> None:
    assert ack_sent_at(50.0, ack(1, 0, b"99000"), wall_now_ms=0) == 50.0
    with pytest.raises(ValueError):
        ack_sent_at(50.0, ack(1, 0, b"soon"), wall_now_ms=0)
    with pytest.raises(ValueError):
        ack_sent_at(50.0, [b"SG.ACK"], wall_now_ms=0)


def test_a_link_that_echoed_stamps_stays_judged_by_them() -> None:
    t = ReplicaTable()
    t.add(ReplicaRecord(id=1, addr="10.0.0.2:6379", online=True))
    t.ack(1, 5, 49.0, stamped=True)
    assert t.replicas[1].stamped
    t.ack(1, 6, 48.0)
    assert t.replicas[1].stamped and t.replicas[1].last_ack == 49.0


# --- fencing -----------------------------------------------------------------------------------


def test_assignment_under_an_older_epoch_is_refused() -> None:
    s = roles.assign(RoleState(role=Role.UNASSIGNED), Role.PRIMARY, 5)
    assert s.writable and s.epoch == 5
    with pytest.raises(StaleEpoch) as info:
        roles.assign(s, Role.REPLICA, 4, "127.0.0.1:7000")
    assert info.value.message == "STALE 5"
    again = roles.assign(s, Role.PRIMARY, 5)  # the same epoch re-asserted is fine
    assert again == s


def test_unassigned_node_takes_no_writes() -> None:
    assert not RoleState(role=Role.UNASSIGNED).writable


def test_stale_proxy_gets_stale() -> None:
    s = roles.assign(RoleState(), Role.PRIMARY, 7)
    with pytest.raises(StaleEpoch):
        roles.fence(s, 6, Role.PRIMARY)
    assert roles.fence(s, 7, Role.PRIMARY) == s


def test_primary_learning_a_newer_epoch_without_it_is_fenced() -> None:
    s = roles.assign(RoleState(), Role.PRIMARY, 3)
    fenced = roles.fence(s, 4, Role.REPLICA)
    assert fenced.fenced and not fenced.writable and fenced.epoch == 4
    unknown = roles.fence(s, 4)
    assert unknown.fenced  # no claim: assume the worst
    # A newer topology that still names it primary keeps (or makes) it writable...
    assert roles.fence(s, 4, Role.PRIMARY).writable
    # ...and a role assigned under that epoch lifts the fence.
    assert roles.assign(fenced, Role.PRIMARY, 4).writable
    assert roles.assign(fenced, Role.REPLICA, 4, "h:1").role is Role.REPLICA


def test_replica_fence_does_not_make_it_writable() -> None:
    s = roles.assign(RoleState(), Role.REPLICA, 2, "127.0.0.1:1")
    assert not roles.fence(s, 3, Role.PRIMARY).writable


def test_role_state_is_validated() -> None:
    with pytest.raises(ValueError):
        RoleState(role=Role.REPLICA)  # a replica must name its primary
    with pytest.raises(ValueError):
        RoleState(role=Role.PRIMARY, primary="h:1")
    with pytest.raises(ValueError):
        RoleState(epoch=1, role_epoch=2)
    with pytest.raises(ValueError):
        roles.assign(RoleState(), Role.REPLICA, 1)  # no primary address


def test_manual_replicaof_keeps_the_epoch() -> None:
    s = roles.assign(RoleState(), Role.PRIMARY, 9)
    r = roles.manual(s, Role.REPLICA, "127.0.0.1:7000")
    assert (r.role, r.epoch, r.primary) == (Role.REPLICA, 9, "127.0.0.1:7000")
    assert roles.manual(r, Role.PRIMARY).writable


def test_every_transition_in_the_table_is_allowed_and_only_those() -> None:
    for src, targets in roles.TRANSITIONS.items():
        for dst in Role:
            state = RoleState(role=src, primary="h:1" if src is Role.REPLICA else None)
            if dst in targets:
                roles.assign(state, dst, 1, "h:2" if dst is Role.REPLICA else None)
            else:
                with pytest.raises(roles.IllegalTransition):
                    roles.assign(state, dst, 1, "h:2")
