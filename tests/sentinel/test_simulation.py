"""Three sentinel cores over a fake network in virtual time: exact failover timings and faults.

Timeline of the basic case (down_after_ms = 1000, pings every 100 ms, 1 ms latency):
the primary's last PONG arrives at 5001 and it dies at 5050; every sentinel's down timer fires
at 5001 + 1000 + 1 = 6002 (+sdown); their DownReports arrive at 6003 (+odown, quorum 2); s1's
back-off is 0 so it asks for votes at 6003 under epoch 2; votes arrive at 6005 (elected),
``SG.ROLE primary 2`` reaches the replica at 6006 and its +OK comes back at 6007, when s1
publishes topology epoch 2.
"""

from __future__ import annotations

import itertools

import trio
import trio.testing

from sentinel.actions import Role
from sentinel.failover import Step
from sentinel.state import decode_state
from shardgate.topology import NodeAddress, Shard, SlotRange, Topology
from tests.sentinel.sim import Cluster, addr, now_ms, one_shard, sleep_until_ms

P, R1, R2 = addr(7001), addr(7101), addr(7102)
BACKOFFS = {"s1": (0,), "s2": (50,), "s3": (100,)}


async def test_failover_completes_at_an_exact_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    c = Cluster(one_shard(), backoffs=BACKOFFS)
    async with trio.open_nursery() as nursery:
        c.start(nursery)
        await sleep_until_ms(5050)
        c.nodes[P].alive = False
        await sleep_until_ms(7950)
        c.nodes[P].alive = True  # the old primary comes back (as a primary at epoch 1)
        await sleep_until_ms(9000)
        nursery.cancel_scope.cancel()
    assert sorted((e[0], e[1]) for e in c.events("+sdown") if e[2].get("kind") == "primary") == [
        (6002, "s1"),
        (6002, "s2"),
        (6002, "s3"),
    ]
    assert sorted(e[0] for e in c.events("+odown")) == [6003, 6003, 6003]
    assert [(e[0], e[1]) for e in c.events("+try-failover")] == [(6003, "s1")]
    assert [(e[0], e[1]) for e in c.events("+elected-leader")] == [(6005, "s1")]
    assert c.nodes[R1].role_log == [(6006, Role.PRIMARY, 2)]
    assert [(p.at_ms, p.by, p.topology.epoch) for p in c.published] == [(6007, "s1", 2)]
    shard = c.published[0].topology.shards[0]
    assert (shard.primary, shard.replicas) == (R1, (R2, P))
    assert c.nodes[R2].role_log == [(6008, Role.REPLICA, 2)]
    # The returning old primary answers the 8000 ping at 8001; every sentinel tells it at once
    # that it is a replica of R1 under epoch 2, and it obeys at 8002.
    assert c.nodes[P].role_log[0] == (8002, Role.REPLICA, 2)
    assert (c.nodes[P].role, c.nodes[P].primary) == (Role.REPLICA, R1)
    # Every sentinel can show the failover, votes and ranking included (it came with the news).
    records = {sid: c.cores[sid].history for sid in c.ids}
    assert all(len(r) == 1 and r[0] == records["s1"][0] for r in records.values())
    assert (records["s2"][0].epoch, records["s2"][0].leader, records["s2"][0].outcome) == (
        2,
        "s1",
        "done",
    )
    # Peers adopted the topology from s1's news.
    assert sorted((e[0], e[1]) for e in c.events("+config-update") if e[1] != "s1") == [
        (6008, "s2"),
        (6008, "s3"),
    ]


async def test_a_sentinel_minority_cannot_fail_over(autojump_clock: trio.testing.MockClock) -> None:
    # quorum 1: s1 alone decides the primary is down (it cannot reach it), but it is cut off from
    # both peers, so it can never gather the majority of votes; the others see the primary up.
    c = Cluster(one_shard(), quorum=1, backoffs=BACKOFFS)
    c.partition({"s1"})
    c.unreachable.add(("s1", P))
    async with trio.open_nursery() as nursery:
        c.start(nursery)
        await sleep_until_ms(20_000)
        nursery.cancel_scope.cancel()
    assert c.published == []
    assert c.nodes[P].role_log == [] and c.nodes[R1].role_log == []
    # s1 never hears from P: +sdown at 0 + 1000 + 1, and +odown with quorum 1 at once.
    # Each attempt waits min(10 s, failover_timeout 3 s) for votes, then cools down for
    # failover_timeout (+ back-off 0) and retries under a higher epoch.
    tries = [(e[0], e[2].get("epoch")) for e in c.events("+try-failover")]
    assert tries == [(1001, "2"), (7001, "3"), (13001, "4"), (19001, "5")]
    aborts = [e[0] for e in c.events("-failover-abort-not-elected")]
    assert aborts == [4001, 10001, 16001]
    assert {e[1] for e in c.events("+try-failover")} == {"s1"}


async def test_quorum_larger_than_the_sentinels_never_fails_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    c = Cluster(one_shard(), quorum=4, backoffs=BACKOFFS)
    async with trio.open_nursery() as nursery:
        c.start(nursery)
        await sleep_until_ms(1000)
        c.nodes[P].alive = False
        await sleep_until_ms(30_000)
        status = c.cores["s1"].quorum_status(now_ms())
        nursery.cancel_scope.cancel()
    assert c.published == [] and c.events("+odown") == [] and c.events("+try-failover") == []
    assert len(c.events("+sdown")) == 3
    assert not status.can_fail_over
    assert status.reason == "cannot fail over: quorum 4 is larger than the 3 sentinels"


async def test_a_leader_killed_right_after_election_is_superseded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    c = Cluster(one_shard(), backoffs=BACKOFFS)
    async with trio.open_nursery() as nursery:
        c.start(nursery)
        await sleep_until_ms(5050)
        c.nodes[P].alive = False
        while "s0" not in c.cores["s1"].failovers:  # noqa: ASYNC110 (polling virtual time)
            await trio.sleep(0.0005)
        while c.cores["s1"].failovers["s0"].step is Step.WAIT_START:  # noqa: ASYNC110
            await trio.sleep(0.0005)
        assert now_ms() == 6005
        c.kill_sentinel("s1")  # elected at 6005; its promotion reaches R1 at 6006 regardless
        await sleep_until_ms(12_000)
        nursery.cancel_scope.cancel()
    # s2 and s3 voted for s1 at 6004, so they hold off for failover_timeout plus their back-off:
    # s2 tries at 6004 + 3000 + 50 under epoch 3, s3's vote arrives at 9056, R1 (already primary
    # at epoch 2, same offset, lowest address) is promoted again under epoch 3 and answers at 9058.
    assert [(e[0], e[1], e[2].get("epoch")) for e in c.events("+try-failover")] == [
        (6003, "s1", "2"),
        (9054, "s2", "3"),
    ]
    assert [(p.at_ms, p.by, p.topology.epoch) for p in c.published] == [(9058, "s2", 3)]
    assert c.nodes[R1].role_log == [(6006, Role.PRIMARY, 2), (9057, Role.PRIMARY, 3)]
    assert c.nodes[R2].role_log == [(9059, Role.REPLICA, 3)]
    assert c.cores["s3"].topology.epoch == 3


async def test_thirty_kills_give_thirty_failovers_with_increasing_epochs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    c = Cluster(one_shard(), backoffs={"s1": (30, 0, 120), "s2": (0, 60), "s3": (90, 10)})
    kills = 30
    killed_at: list[int] = []
    async with trio.open_nursery() as nursery:
        c.start(nursery)
        await sleep_until_ms(3000)
        for i in range(kills):
            victim = c.primary_of()
            victim.alive = False
            killed_at.append(now_ms())
            published = len(c.published)
            while len(c.published) == published:  # noqa: ASYNC110 (polling virtual time)
                await trio.sleep(0.01)
            assert now_ms() - c.published[-1].at_ms < 10
            await trio.sleep(0.2 + 0.05 * (i % 4))  # vary the phase against the ping timers
            victim.alive = True  # it returns and is made a replica
            await trio.sleep(1.5)
        await sleep_until_ms(now_ms() + 20_000)  # and nothing more happens afterwards
        nursery.cancel_scope.cancel()
    epochs = [p.topology.epoch for p in c.published]
    assert len(epochs) == kills
    assert epochs == sorted(set(epochs))
    assert all(
        p.topology.shards[0].primary != q.topology.shards[0].primary
        for p, q in zip(c.published, c.published[1:])
    )
    # Every failover took down_after (1000 ms, counted from the last PONG, up to a ping period
    # before the kill) plus the back-off (at most 120 ms here) and a few ms of messages.
    blackouts = [p.at_ms - k for p, k in zip(c.published, killed_at, strict=True)]
    assert all(900 < b < 1130 for b in blackouts), blackouts
    assert c.events("-failover-abort-superseded") == []
    writable = [n for n in c.nodes.values() if n.writable(now_ms())]
    assert writable == [c.nodes[c.published[-1].topology.shards[0].primary]]


async def test_stale_topology_reports_never_fail_over_the_new_primary(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # s3 never hears from s1 (the leader), so it learns the new topology only through s2's
    # periodic hello; meanwhile it keeps reporting the dead old primary down under epoch 1.
    c = Cluster(one_shard(), backoffs=BACKOFFS)
    c.cut.add(frozenset(("s1", "s3")))
    async with trio.open_nursery() as nursery:
        c.start(nursery)
        await sleep_until_ms(5050)
        c.nodes[P].alive = False
        await sleep_until_ms(20_000)
        nursery.cancel_scope.cancel()
    assert [p.topology.epoch for p in c.published] == [2]
    assert c.cores["s3"].topology.epoch == 2
    new_primary = c.published[0].topology.shards[0].primary
    assert not [e for e in c.events("+sdown") if e[2].get("node") == str(new_primary)]


async def test_restarted_sentinel_adopts_the_newest_epoch_and_keeps_its_vote(
    autojump_clock: trio.testing.MockClock,
) -> None:
    c = Cluster(one_shard(), backoffs=BACKOFFS)
    async with trio.open_nursery() as nursery:
        c.start(nursery)
        await sleep_until_ms(3000)
        c.kill_sentinel("s3")
        await sleep_until_ms(5050)
        c.nodes[P].alive = False
        await sleep_until_ms(8000)
        assert [p.topology.epoch for p in c.published] == [2]
        assert "s3" not in c.disk  # nothing happened that it had to persist
        c.start_sentinel("s3")  # restarted from its (config-only) state
        await sleep_until_ms(8500)
        nursery.cancel_scope.cancel()
    assert c.cores["s3"].topology.epoch == 2
    state = decode_state(c.disk["s3"])
    assert state.topology_epoch == 2 and state.current_epoch == 2
    assert [r.epoch for r in state.history] == [2]  # the record came with the topology
    s2_vote = decode_state(c.disk["s2"]).vote
    assert s2_vote is not None and (s2_vote.epoch, s2_vote.leader) == (2, "s1")


async def test_manual_failover_pauses_writes_briefly_and_loses_none(
    autojump_clock: trio.testing.MockClock,
) -> None:
    c = Cluster(one_shard(), backoffs=BACKOFFS)
    c.writer = True
    async with trio.open_nursery() as nursery:
        c.start(nursery)
        await sleep_until_ms(3000)
        core = c.cores["s1"]
        error, actions = core.request_failover("s0", now_ms())
        assert error is None
        c._run("s1", actions)
        await sleep_until_ms(4000)
        nursery.cancel_scope.cancel()
    # Votes at 3002 → pause sent; P paused at 3003 → WritesPaused at 3004; the chosen
    # replica's report at 3101 shows it caught up → P demoted and it promoted at 3102 → +OK at
    # 3103 → published. (Which replica is chosen depends on which reported the higher offset.)
    chosen = NodeAddress.parse(c.events("+selected-slave")[0][2].get("replica") or "")
    assert [(p.at_ms, p.topology.epoch) for p in c.published] == [(3103, 2)]
    assert c.nodes[P].role_log == [(3102, Role.REPLICA, 2)]
    assert c.nodes[chosen].role_log == [(3102, Role.PRIMARY, 2)]
    paused_offset = int(c.events("+writes-paused")[0][2].get("offset") or 0)
    p_writes = [(t, off) for t, a, off in c.acked if a == P]
    r_writes = [(t, off) for t, a, off in c.acked if a == chosen]
    assert max(off for _, off in p_writes) == paused_offset  # nothing accepted after the pause
    assert max(t for t, _ in p_writes) <= 3003  # the pause took effect at 3003
    assert min(t for t, _ in r_writes) in (3102, 3103)  # writable once promoted
    assert min(t for t, _ in r_writes) - max(t for t, _ in p_writes) < 1000  # bounded pause
    # The new primary had P's whole stream when promoted: every acknowledged write on P is on it.
    assert min(off for _, off in r_writes) == paused_offset + 1


async def test_manual_failover_aborts_and_resumes_writes_when_replicas_lag(
    autojump_clock: trio.testing.MockClock,
) -> None:
    c = Cluster(one_shard(), backoffs=BACKOFFS)
    c.writer = True
    async with trio.open_nursery() as nursery:
        c.start(nursery)
        await sleep_until_ms(3000)
        c.replication_broken = True
        error, actions = c.cores["s1"].request_failover("s0", now_ms())
        assert error is None
        c._run("s1", actions)
        await sleep_until_ms(5000)
        nursery.cancel_scope.cancel()
    # Paused at 3002 (sent) with half the 500 ms pause for catch-up: aborted at 3252.
    assert [e[0] for e in c.events("-failover-abort-catchup-timeout")] == [3252]
    assert c.published == []
    assert c.nodes[P].role_log == [] and c.nodes[P].role is Role.PRIMARY
    p_times = [t for t, a, _ in c.acked if a == P]
    gap = max(b - a for a, b in itertools.pairwise(p_times))
    assert 3253 - 3003 <= gap <= 3254 - 3002  # paused at 3003, resumed at 3253: < 1 s
    record = c.cores["s1"].history[-1]
    assert (record.outcome, record.manual) == ("catchup-timeout", True)


async def test_two_shards_failing_together_are_both_failed_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    topo = Topology(
        1,
        (
            Shard("a", addr(7001), (addr(7101),), (SlotRange(0, 8191),)),
            Shard("b", addr(7002), (addr(7102),), (SlotRange(8192, 16383),)),
        ),
    )
    c = Cluster(topo, backoffs=BACKOFFS)
    async with trio.open_nursery() as nursery:
        c.start(nursery)
        await sleep_until_ms(5050)
        c.nodes[addr(7001)].alive = c.nodes[addr(7002)].alive = False
        await sleep_until_ms(12_000)
        nursery.cancel_scope.cancel()
    # s1 runs one election at a time: shard a under epoch 2 (elected at 6005), then shard b
    # under epoch 3, published on top of a's change.
    assert [(p.at_ms, p.topology.epoch) for p in c.published] == [(6007, 2), (6009, 3)]
    assert c.events("-failover-abort-superseded") == []
    final = c.published[-1]
    assert [s.primary for s in final.topology.shards] == [addr(7101), addr(7102)]
    assert {c.cores[s].topology.epoch for s in c.ids} == {3}


async def test_a_stalled_sentinel_tilts_and_does_not_vote_while_the_others_fail_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    c = Cluster(one_shard(), backoffs={"s1": (100,), "s2": (0,), "s3": (50,)})
    async with trio.open_nursery() as nursery:
        c.start(nursery)
        await sleep_until_ms(3050)
        c.stop("s1", 6000)  # SIGSTOP at 3050, SIGCONT at 6000
        await sleep_until_ms(10_050)
        c.nodes[P].alive = False
        await sleep_until_ms(40_000)
        nursery.cancel_scope.cancel()
    # s1's last tick was at 3000; at 6000 it sees a 3000 ms gap: TILT until 36 000.
    assert [(e[0], e[1]) for e in c.events("+tilt")] == [(6000, "s1")]
    assert [(e[0], e[1]) for e in c.events("-tilt")] == [(36_000, "s1")]
    # The primary's last PONG is at 10 001: SDOWN at 11 002 everywhere; s2 (back-off 0) asks at
    # 11 003; s1 refuses (TILT), s3 votes; published at 11 007 by s2.
    assert [(e[0], e[1]) for e in c.events("-vote-refused")] == [(11_004, "s1")]
    assert [(p.at_ms, p.by, p.topology.epoch) for p in c.published] == [(11_007, "s2", 2)]
    assert c.events("+try-failover") == [e for e in c.events("+try-failover") if e[1] == "s2"]
    assert c.cores["s1"].topology.epoch == 2  # it still follows topologies while tilted


async def test_a_dead_sentinel_is_forgotten_at_an_exact_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    c = Cluster(one_shard(), backoffs=BACKOFFS, forget_after_ms=5000)
    async with trio.open_nursery() as nursery:
        c.start(nursery)
        await sleep_until_ms(3050)
        c.kill_sentinel("s3")
        await sleep_until_ms(10_000)
        status = c.cores["s1"].quorum_status(now_ms())
        nursery.cancel_scope.cancel()
    # s3 gossiped last at 3000 (received at 3001): forgotten at 3001 + 5000 + 1.
    assert sorted((e[0], e[1]) for e in c.events("-sentinel-forgotten")) == [
        (8002, "s1"),
        (8002, "s2"),
    ]
    assert (status.sentinels, status.majority, status.needed) == (2, 2, 2)
    assert decode_state(c.disk["s1"]).sentinels == (("s2", addr(26380)),)


async def test_a_split_vote_is_retried_after_a_back_off_not_a_failover_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """All three ask at 6003 (back-off 0) and each votes for itself: the answers show nobody
    can win epoch 2, so each abandons it as soon as both answers are in (6005) and re-arms a
    back-off; s1 (0 ms) asks again under epoch 3 at once, the others (40, 80 ms) vote for it."""
    c = Cluster(one_shard(), backoffs={"s1": (0, 0), "s2": (0, 40), "s3": (0, 80)})
    async with trio.open_nursery() as nursery:
        c.start(nursery)
        await sleep_until_ms(5050)
        c.nodes[P].alive = False
        await sleep_until_ms(7000)
        nursery.cancel_scope.cancel()
    tries = [(e[0], e[1], e[2].get("epoch")) for e in c.events("+try-failover")]
    assert sorted(tries[:3]) == [(6003, "s1", "2"), (6003, "s2", "2"), (6003, "s3", "2")]
    splits = sorted((e[0], e[1]) for e in c.events("-failover-abort-split-vote"))
    assert splits == [(6005, "s1"), (6005, "s2"), (6005, "s3")]
    elected = [(e[0], e[1], e[2].get("epoch")) for e in c.events("+elected-leader")]
    assert len(elected) == 1 and elected[0][1] == "s1" and elected[0][2] == "3"
    assert elected[0][0] < 6003 + 200  # a round trip and a back-off, not 2 x failover timeout
    assert [(p.by, p.topology.epoch) for p in c.published] == [("s1", 3)]
    assert c.nodes[R1].role == Role.PRIMARY
