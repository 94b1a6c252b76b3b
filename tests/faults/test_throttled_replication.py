"""Scenario 13: the replication link throttled past the backlog, then a full resync.

A fault proxy sits on the replica's replication link. With its bandwidth capped, the primary
takes writes faster than the link carries them: the replica falls behind. When the link then
breaks (an RST, as a flaky network or an output-buffer limit would end it), the replica
reconnects with its offset. Inside the backlog that is a partial resync; past a small
``--repl-backlog-size`` the primary must send a full snapshot. Either way the replica converges
to exactly the primary's keys and TTLs, and the primary keeps serving clients meanwhile.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
import trio

from tests.faults.cluster import Cluster, ShardSpec, dump, repl_offset, sync_stats, wait_until
from tests.faults.measure import percentile
from tests.faults.processes import Service, Services, in_thread

pytestmark = pytest.mark.faults

BACKLOG = 64 * 1024
BANDWIDTH = 20_000  # bytes per second: a few seconds of writes here are far past the backlog


def acked_offset(primary: Service) -> int:
    """The replica's offset as the primary last heard it (INFO's slave0 ``offset``)."""
    info = primary.client().info("replication")
    slave = info.get("slave0")
    return int(slave["offset"]) if isinstance(slave, dict) else -1


def write_batch(r: redis.Redis, prefix: str, count: int, size: int) -> list[float]:
    """``count`` SETs (a quarter with a TTL) one at a time; their latencies."""
    took = []
    for i in range(count):
        start = time.monotonic()
        if i % 4 == 0:
            r.set(f"{prefix}:{i}", "v" * size, ex=3600)
        else:
            r.set(f"{prefix}:{i}", "v" * size)
        took.append(time.monotonic() - start)
    return took


async def test_throttled_link_partial_inside_backlog_full_past_it(
    procs: Services, tmp_path: Path
) -> None:
    results: dict[str, object] = {}

    def body() -> None:
        cluster = Cluster(
            procs,
            [
                ShardSpec(
                    name="s",
                    replicas=1,
                    replica_links=True,
                    node_args=("--repl-backlog-size", str(BACKLOG)),
                )
            ],
            workdir=tmp_path,
            proxies=0,
        ).start()
        shard = cluster.shards["s"]
        primary, replica = shard.primary, shard.replicas[0]
        link = shard.links[replica.name]
        r = primary.client()
        write_batch(r, "warm", 200, 100)
        wait_until(lambda: cluster.converged("s"), 10, "initial sync")
        full0, partial0 = sync_stats(primary)

        # inside the backlog: ~20 KB behind, then the link is cut -> partial resync
        link.send_control("direction down")
        link.send_control(f"bandwidth {BANDWIDTH}")
        write_batch(r, "in", 100, 200)
        behind = repl_offset(primary) - acked_offset(primary)
        assert 0 < behind < BACKLOG, behind
        link.send_control("reset")
        link.send_control("bandwidth off")
        took = wait_until(lambda: cluster.converged("s"), 20, "convergence inside the backlog")
        assert sync_stats(primary) == (full0, partial0 + 1)
        assert dump(replica.client()) == dump(r)
        results["inside"] = {"behind_bytes": behind, "converged_s": round(took, 2)}

        # past the backlog: ~400 KB written while the link carries 20 KB/s
        link.send_control(f"bandwidth {BANDWIDTH}")
        latencies = write_batch(r, "past", 2000, 200)
        behind = repl_offset(primary) - acked_offset(primary)
        assert behind > BACKLOG, behind
        rss_mid = primary.rss_bytes()
        link.send_control("reset")
        time.sleep(0.5)  # the replica reconnects through the still-throttled link
        link.send_control("bandwidth off")
        took = wait_until(lambda: cluster.converged("s"), 30, "convergence past the backlog")
        full1, partial1 = sync_stats(primary)
        assert full1 >= full0 + 1 and partial1 == partial0 + 1, (full1, partial1)
        assert dump(replica.client()) == dump(r)
        results["past"] = {
            "behind_bytes": behind,
            "full_syncs": full1 - full0,
            "converged_s": round(took, 2),
            "primary_set_p99_ms": round(percentile(latencies, 99) * 1000, 2),
            "primary_rss_mib": round(rss_mid / 2**20, 1),
        }

    with trio.fail_after(120):
        await in_thread(body)
        print(procs.check_survivors())  # every process the test did not end
    print(f"scenario 13 (backlog {BACKLOG} B, link {BANDWIDTH} B/s): {results}")
