"""One SentinelCore driven by hand with integer times: TILT, reconciliation, restarts, votes."""

from __future__ import annotations

import json

from sentinel.actions import (
    Action,
    Log,
    NodeReport,
    PeerMessage,
    PersistState,
    PingReply,
    Role,
    SendRole,
    SendToPeer,
)
from sentinel.core import SentinelCore
from sentinel.detector import Health
from sentinel.failover import apply_failover
from sentinel.messages import DownReport, Hello, TopologyNews, VoteReply, VoteRequest
from sentinel.state import PersistedState, Vote, decode_state
from sentinel.status import build_status, render_history, render_status, status_to_dict
from tests.sentinel.sim import FixedRandom, addr, make_config, one_shard

P, R1, R2 = addr(7001), addr(7101), addr(7102)
IDS = ("s1", "s2", "s3")
TOPO = one_shard()


def core(state: PersistedState | None = None, *, sid: str = "s1", **options: int) -> SentinelCore:
    return SentinelCore(make_config(sid, IDS, TOPO, **options), state, now=0, rng=FixedRandom(0))


def peer(c: SentinelCore, msg: object, now: int) -> tuple[Action, ...]:
    return c.handle(PeerMessage(msg), now)  # type: ignore[arg-type]


def kinds(actions: tuple[Action, ...] | list[Action]) -> list[str]:
    return [a.event if isinstance(a, Log) else type(a).__name__ for a in actions]


def keep_alive(c: SentinelCore, now: int, *nodes: object) -> None:
    for n in nodes or (P, R1, R2):
        c.handle(PingReply(n), now)  # type: ignore[arg-type]
    for sid in ("s2", "s3"):
        peer(c, Hello(sid, addr(26379 + int(sid[1]) - 1), 1, 1), now)


def make_odown(c: SentinelCore, now: int) -> None:
    """P silent since 0: SDOWN at 1001; s2 agrees → ODOWN."""
    keep_alive(c, now - 1, R1, R2)
    c.tick(now)
    peer(c, DownReport("s2", "s0", P, 1, True), now)


def test_tilt_stops_votes_and_attempts_for_exactly_the_period() -> None:
    c = core()
    c.tick(100)
    assert "+tilt" not in kinds(c.tick(2100))  # exactly 2000 ms
    out = c.tick(4101)  # a 2001 ms stall
    assert "+tilt" in kinds(out)
    out = peer(c, VoteRequest("s2", 2, "s0", 1), 4102)
    assert "-vote-refused" in kinds(out) and "SendToPeer" not in kinds(out)
    assert c.elector.vote is None
    # P has been silent all along: SDOWN and ODOWN happen, but nothing acts.
    keep_alive(c, 4150, R1, R2)
    peer(c, DownReport("s2", "s0", P, 1, True), 4150)
    assert c.detector.state(P) is Health.ODOWN
    t = 4150
    while t < 34_000:
        t += 100
        keep_alive(c, t - 1, R1, R2)
        peer(c, DownReport("s2", "s0", P, 1, True), t - 1)
        assert "+try-failover" not in kinds(c.tick(t)), t
    assert c.tilt.tilted
    keep_alive(c, 34_099, R1, R2)
    peer(c, DownReport("s2", "s0", P, 1, True), 34_099)
    assert "-tilt" not in kinds(c.tick(34_100))
    out = c.tick(34_101)  # 4101 + 30 000
    assert kinds(out)[:1] == ["-tilt"] and "+try-failover" in kinds(out)
    error, _ = c.request_failover("s0", 34_101)
    assert error == "INPROG Failover already in progress"


def test_request_failover_errors() -> None:
    c = core()
    assert c.request_failover("nope", 10)[0] == "No such master with that name"
    c.tick(100)
    c.tick(3000)
    assert c.request_failover("s0", 3000)[0] == "TILT sentinel is in TILT mode"
    c = core()
    c.tick(100)
    error, _ = c.request_failover("s0", 1101)  # peers silent for more than down_after
    assert error == "NOQUORUM cannot fail over now: 1 of 2 needed sentinels reachable"


def test_state_is_persisted_before_the_vote_reply_leaves() -> None:
    c = core(sid="s3")
    out = peer(c, VoteRequest("s1", 2, "s0", 1), 10)
    persist = [i for i, a in enumerate(out) if isinstance(a, PersistState)]
    reply = [i for i, a in enumerate(out) if isinstance(a, SendToPeer)]
    assert persist and reply and persist[0] < reply[0]
    saved = decode_state(out[persist[0]].data)  # type: ignore[union-attr]
    assert saved.vote == Vote(2, "s1", "s0") and saved.current_epoch == 2
    restarted = core(saved, sid="s3")
    out = peer(restarted, VoteRequest("s2", 2, "s0", 1), 20)
    (send,) = [a for a in out if isinstance(a, SendToPeer)]
    assert send.message == VoteReply("s3", 2, "s1", 2)


def test_a_restarted_sentinel_never_goes_back_in_epochs() -> None:
    newer = apply_failover(TOPO, "s0", R1, 7)
    c = core(PersistedState(current_epoch=9, vote=Vote(9, "s2", "s0"), topology=newer))
    assert c.topology == newer and c.elector.current_epoch == 9
    make_odown(c, 1001)
    c.detector.on_reply(P, now=1001)  # the old primary is no longer primary: irrelevant
    keep_alive(c, 1999, R2)
    c.tick(2002)  # R1 (primary at epoch 7) silent since 0
    peer(c, DownReport("s2", "s0", R1, 7, True), 2002)
    out = c.tick(2003)
    assert "+try-failover" in kinds(out)
    assert c.failovers["s0"].epoch == 10


def test_a_config_with_a_higher_epoch_than_the_state_wins() -> None:
    stale = PersistedState(current_epoch=0, topology=TOPO.__class__(0, TOPO.shards))
    assert core(stale).topology.epoch == 1


def test_returning_old_primary_and_fresh_nodes_get_their_roles() -> None:
    c = core()
    out = c.handle(NodeReport(R2, Role.NONE, 0), 5)  # a fresh --managed node
    assert [a for a in out if isinstance(a, SendRole)] == [SendRole(R2, Role.REPLICA, 1, P)]
    assert [a for a in c.handle(NodeReport(R2, Role.NONE, 0), 900) if isinstance(a, SendRole)] == []
    assert (
        len([a for a in c.handle(NodeReport(R2, Role.NONE, 0), 1005) if isinstance(a, SendRole)])
        == 1
    )
    newer = apply_failover(TOPO, "s0", R1, 2)
    peer(c, TopologyNews("s2", newer), 2000)
    assert c.topology == newer
    out = c.handle(NodeReport(P, Role.PRIMARY, 1), 2100)  # the old primary is back
    assert [a for a in out if isinstance(a, SendRole)] == [SendRole(P, Role.REPLICA, 2, R1)]
    # A node ahead of us means we are behind: never fight it.
    assert [
        a for a in c.handle(NodeReport(R2, Role.REPLICA, 3, P), 2200) if isinstance(a, SendRole)
    ] == []
    # A node that agrees is left alone.
    assert [
        a for a in c.handle(NodeReport(R1, Role.PRIMARY, 2), 2200) if isinstance(a, SendRole)
    ] == []


def test_reports_from_before_a_topology_change_do_not_count_against_the_new_primary() -> None:
    c = core()
    make_odown(c, 1001)
    assert c.detector.state(P) is Health.ODOWN
    newer = apply_failover(TOPO, "s0", R1, 2)
    out = peer(c, TopologyNews("s2", newer), 1005)
    assert "+config-update" in kinds(out) and c.failovers == {}
    # s3 still lives in epoch 1 and keeps saying "the primary of s0 is down"; s2 says so too
    # about R1, but under epoch 1, before R1 was primary.
    peer(c, DownReport("s3", "s0", P, 1, True), 1006)
    peer(c, DownReport("s2", "s0", R1, 1, True), 1006)
    assert c.detector.votes_down(R1, 1006) == 0 and c.detector.state(R1) is Health.UP
    assert all("+try-failover" not in kinds(c.tick(t)) for t in range(1100, 2000, 100))
    # R1's last PONG is old (t=1000) but it got a full down period from its promotion at 1005.
    assert c.detector.state(R1) is Health.UP
    assert kinds(c.tick(2006))[:1] == ["+sdown"]  # 1005 + 1000 + 1: now it really is silent


def test_only_announced_sentinels_take_part_and_new_ones_are_learned() -> None:
    c = core()
    assert peer(c, DownReport("intruder", "s0", P, 1, True), 5) == ()
    out = peer(c, Hello("s4", addr(26400), 1, 1), 6)
    assert kinds(out)[:2] == ["+sentinel", "PersistState"]
    assert "s4" in c.peers and c.quorum_status(6).sentinels == 4
    # A hello from a sentinel behind us gets the topology.
    c.topology = apply_failover(TOPO, "s0", R1, 2)
    out = peer(c, Hello("s4", addr(26400), 1, 1), 7)
    assert SendToPeer("s4", TopologyNews("s1", c.topology)) in out


def test_silent_sentinels_are_forgotten_and_the_majority_shrinks() -> None:
    c = core(forget_after_ms=10_000)
    out: list[Action] = []
    for t in range(100, 10_200, 100):
        peer(c, Hello("s2", addr(26380), 1, 1), t - 1)
        out += c.tick(t)
    assert "-sentinel-forgotten" in kinds(out)
    assert sorted(c.peers) == ["s2"]
    status = c.quorum_status(10_100)
    assert (status.sentinels, status.majority, status.needed) == (2, 2, 2)
    assert decode_state(c._persist().data).sentinels == (("s2", addr(26380)),)


def test_status_and_history_rendering() -> None:
    c = core()
    keep_alive(c, 50)
    c.handle(NodeReport(P, Role.PRIMARY, 1, None, 500), 50)
    c.handle(NodeReport(R1, Role.REPLICA, 1, P, 480), 50)
    st = build_status(c, 60)
    doc = status_to_dict(st)
    json.dumps(doc)
    shard = doc["shards"][0]
    assert shard["primary"]["offset"] == 500 and shard["replicas"][0]["lag"] == 20
    assert shard["replicas"][1]["offset"] is None and shard["views"] == {"s1": "up"}
    text = render_status(st)
    assert "shard s0: primary 127.0.0.1:7001 (s1=up)" in text
    assert "OK 3 usable sentinels; 2 needed to fail over" in text
    assert render_history([]) == "no failovers"
    # One failover, led by this core.
    c.handle(NodeReport(R1, Role.REPLICA, 1, P, 490), 1099)
    make_odown(c, 1100)  # P's last reply was at 50
    out = c.tick(1101)
    assert "+try-failover" in kinds(out)
    peer(c, VoteReply("s2", 2, "s1", 2), 1102)
    c.handle(NodeReport(R1, Role.PRIMARY, 2), 1103)
    assert c.topology.epoch == 2
    history = render_history(c.history)
    assert history.splitlines()[0].startswith(
        "epoch 2  shard s0  automatic  127.0.0.1:7001 -> 127.0.0.1:7101  done  leader s1"
    )
    assert "votes: s1->s1, s2->s1" in history and "127.0.0.1:7101: rank 1" in history
    # A proxy reports the new epoch: its adoption ends the failover's timeline, once.
    assert kinds(c.note_proxy_epoch("127.0.0.1:6379", 2, 1110)) == [
        "+proxy-adopted",
        "PersistState",
    ]
    assert c.note_proxy_epoch("127.0.0.1:6379", 2, 1200) == ()
    doc = status_to_dict(build_status(c, 1300))
    assert doc["proxies"] == {"127.0.0.1:6379": 2}
    last = doc["shards"][0]["last_failover"]
    steps = [(s["step"], s["after_ms"]) for s in last["timeline"]]
    assert [s for s, _ in steps] == [
        "sdown",
        "odown",
        "election",
        "elected",
        "promote",
        "promoted",
        "published",
        "adopted by 127.0.0.1:6379",
    ]
    assert steps[-1][1] == 1110 - 1100 and last["duration_ms"] == 10
    assert "127.0.0.1:6379  2" in render_status(build_status(c, 1300))


def test_the_highest_offset_wins_and_priority_zero_on_the_node_never_does() -> None:
    c = core()
    c.handle(NodeReport(R1, Role.REPLICA, 1, P, 900, None, 0), 1099)  # node says: never me
    c.handle(NodeReport(R2, Role.REPLICA, 1, P, 500), 1099)
    make_odown(c, 1100)
    c.tick(1101)
    out = peer(c, VoteReply("s2", 2, "s1", 2), 1102)
    assert [a for a in out if isinstance(a, SendRole)] == [SendRole(R2, Role.PRIMARY, 2)]
    assert c.failovers["s0"].ranking == (
        ("127.0.0.1:7102", "rank 1: priority 100, offset 500"),
        ("127.0.0.1:7101", "priority 0 (never promoted)"),
    )
