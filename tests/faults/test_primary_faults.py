"""Primaries crashed and partitioned under a recorded workload; every acknowledgement checked.

- A primary is ``kill -9``ed under the workload, in a semi-synchronous shard
  (``--sync-replicas 1``) and in an asynchronous one, then each shard is failed over by hand to
  its best replica (the highest offset: what a sentinel picks) and the proxy reloaded. Pass: not
  one acknowledged semi-sync write is lost; async losses are counted and reported.
- A primary is cut off from both its replicas by a network-namespace partition while clients
  still reach it (``--min-replicas-to-write 1 --min-replicas-max-lag 1``); a replica is promoted
  on the other side. Pass: the old primary refuses writes within max-lag + 1 s of the cut, so
  every acknowledged write the failover loses was acknowledged inside that window, and the two
  primaries overlap for no longer than that either.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import pytest
import trio

from tests.faults import netns
from tests.faults.cluster import SEMI, Cluster, ShardSpec, wait_until
from tests.faults.measure import key_in
from tests.faults.processes import Services, in_thread
from tests.faults.workload import Report, check, workload

pytestmark = pytest.mark.faults

MAX_LAG = 1  # seconds: --min-replicas-max-lag
LINK_BANDWIDTH = 50_000  # bytes/s per replication link in the "throttled" kill scenario


@pytest.mark.parametrize("link", ["clean", "throttled"])
async def test_primary_killed_semi_sync_loses_nothing_async_losses_counted(
    procs: Services, tmp_path: Path, link: str
) -> None:
    reports: list[Report] = []

    def body() -> None:
        cluster = Cluster(
            procs,
            [
                ShardSpec(name="semi", replicas=2, node_args=SEMI, durability="semi-sync",
                          replica_links=True),
                ShardSpec(name="async", replicas=2, durability="async", replica_links=True),
            ],
            workdir=tmp_path,
            proxy_args=["--timeout-ms", "3000"],
        ).start()  # fmt: skip
        if link == "throttled":
            # replication slower than the writes: the async primary's unsent stream grows, and
            # a kill -9 takes it along (bytes already on the wire still arrive, as on a network)
            for shard in cluster.shards.values():
                for fp in shard.links.values():
                    fp.send_control("direction down")
                    fp.send_control(f"bandwidth {LINK_BANDWIDTH}")
        # one set of writers per shard (hash-tagged keys), so the semi-sync shard's slower
        # acknowledgements do not slow the async writers down
        loads = [
            workload(
                cluster.proxy_client(timeout=5),
                writers=3,
                name=name,
                hash_tag=key_in((shard.slots.start, shard.slots.end), "tag"),
            )
            for name, shard in cluster.shards.items()
        ]
        with loads[0] as semi_load, loads[1] as async_load:
            time.sleep(2.0)
            for shard in cluster.shards.values():
                shard.primary.kill()
            killed_at = time.monotonic()
            time.sleep(0.3)  # writes in flight fail; nobody takes writes for the shard now
        writers = [*semi_load.writers, *async_load.writers]
        for name in cluster.shards:
            cluster.promote(name, cluster.best_replica(name))
        report = check(writers, cluster.topology(), cluster.primaries(), cluster.durability(),
                       reader=async_load.reader)  # fmt: skip
        reports.append(report)
        print(f"primary killed ({semi_load.acked() + async_load.acked()} acks, {link} "
              f"replication links, "
              f"failover by hand "
              f"{time.monotonic() - killed_at:.1f}s after the kill): {report.summary()}")  # fmt: skip
        assert report.acked_in("semi-sync") > 100 and report.acked_in("async") > 100
        assert report.lost_in("semi-sync") == 0, report.examples
        # the promoted replicas take writes through the reloaded proxy
        r = cluster.proxy_client()()
        for i in range(50):
            assert r.set(f"after:{i}", "1")

    with trio.fail_after(120):
        await in_thread(body)
        print(procs.check_survivors())  # every process the test did not end


async def test_partitioned_primary_stops_taking_writes_within_max_lag(
    procs: Services, tmp_path: Path, network: netns.Network
) -> None:
    def body() -> None:
        args = ("--min-replicas-to-write", "1", "--min-replicas-max-lag", str(MAX_LAG))
        cluster = Cluster(
            procs,
            [ShardSpec(name="mr", replicas=2, node_args=args, durability="async")],
            workdir=tmp_path,
            network=network,
            proxy_args=["--timeout-ms", "1000"],
        ).start()
        shard = cluster.shards["mr"]
        old, (r1, r2) = shard.primary, shard.replicas
        assert old.host is not None and r1.host is not None and r2.host is not None
        # a client that stays on the old primary's side (as one behind a proxy that never heard
        # of the failover would): it writes to the old primary for as long as it accepts
        stuck = workload(partial(old.client, timeout=3), writers=1, pace=0.002, read=False,
                         name="stuck")  # fmt: skip
        with workload(cluster.proxy_client(timeout=3), writers=4, pace=0.002,
                      probe_nodes=cluster.probe_nodes()) as load, stuck as stuck_load:  # fmt: skip
            time.sleep(1.5)
            network.partition([old.host], [r1.host, r2.host])  # clients still reach `old`
            cut = time.monotonic()
            time.sleep(0.5)
            # the failover a sentinel on the replicas' side would make
            cluster.promote("mr", r1)
            time.sleep(3.0)
            assert load.probe is not None
            old_accepts = [at for at, _, seen in load.probe.rounds if seen.get(old.name)]
        network.heal()
        host, port = r1.address.rsplit(":", 1)
        old.client().execute_command("REPLICAOF", host, port)
        wait_until(lambda: cluster.converged("mr"), 20, "old primary rejoins as a replica")
        report = check([*load.writers, *stuck_load.writers], cluster.topology(),
                       cluster.primaries(), cluster.durability(), reader=load.reader,
                       probe=load.probe)  # fmt: skip
        refused_after = max(old_accepts) - cut
        late = [at - cut for at in report.lost_set_acked_at]
        print(f"primary partitioned from its replicas (max lag {MAX_LAG}s): old primary's last "
              f"accepted write {refused_after:.2f}s after the cut; lost SETs acked "
              f"{min(late, default=0):.2f}..{max(late, default=0):.2f}s after the cut; "
              f"{report.summary()}")  # fmt: skip
        assert refused_after <= MAX_LAG + 1
        assert all(t <= MAX_LAG + 1 for t in late), late
        assert all(d <= MAX_LAG + 1 for d in report.split_brain.values()), report.split_brain

    with trio.fail_after(120):
        await in_thread(body)
        print(procs.check_survivors())  # every process the test did not end
