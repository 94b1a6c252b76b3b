"""Two shards down at once while one sentinel of three is cut off (fault scenario 4, found with
real processes): two candidates in one epoch must not wait out the election timeout.

Votes are one per epoch. If s2 and s3 stand at the same moment (for one shard, or each for a
different one), each has already voted for itself, so each refuses the other; the third voter
is cut off, so neither can tell for certain that it is a split vote, and both used to wait the
whole election timeout (10 s), then time out together and collide again on the other shard
(30 s for two shards in a real run). Now a candidate that sees a rival holding votes in its
epoch gives the silent voters one back-off period, then retries like a split vote.
"""

from __future__ import annotations

import trio
import trio.testing

from shardgate.topology import Shard, SlotRange, Topology
from tests.sentinel.sim import Cluster, addr, sleep_until_ms

A, B = addr(7001), addr(7002)
TWO_SHARDS = Topology(
    1,
    (
        Shard("a", A, (addr(7101),), (SlotRange(0, 8191),)),
        Shard("b", B, (addr(7102),), (SlotRange(8192, 16383),)),
    ),
)


async def test_two_shards_down_with_one_sentinel_cut_off_fail_over_without_colliding(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # back-offs in the order drawn (a, b, then any later one): s2 would go for b first, s3 for a
    backoffs = {"s1": (0,), "s2": (40, 20, 30), "s3": (20, 40, 60)}
    c = Cluster(TWO_SHARDS, backoffs=backoffs, failover_timeout_ms=10_000)
    async with trio.open_nursery() as nursery:
        c.start(nursery)
        await sleep_until_ms(5050)
        c.partition({"s1"})
        c.nodes[A].alive = c.nodes[B].alive = False
        await sleep_until_ms(40_000)
        nursery.cancel_scope.cancel()
    tries = [(e[0], e[1], e[2].get("shard"), e[2].get("epoch")) for e in c.events("+try-failover")]
    published = [(p.at_ms, p.by, p.topology.epoch) for p in c.published]
    print(tries, published, [(e[0], e[1], e[2].get("node")) for e in c.events("+odown")])
    # both shards failed over within a second of ODOWN (6003), not after election timeouts
    assert len(published) >= 2 and published[1][0] < 7000, (tries, published)
    assert c.events("-failover-abort-not-elected") == [], tries
    assert c.events("-failover-abort-split-vote"), tries  # they did collide
    assert [s.primary for s in c.newest().shards] == [addr(7101), addr(7102)]
