"""Scenario 3 (the Jepsen 2013 case): primaries isolated with one proxy and its clients.

Every node, sentinel and proxy is a host of its own (network namespaces). Two shards, `semi`
(semi-sync) and `async`, each primary + 2 replicas, all with ``--min-replicas-to-write 1
--min-replicas-max-lag 1``. Writers go through both proxies. Then both primaries and proxy0
are cut off from everything else (their replicas, the sentinels, proxy1); the test process
still reaches both sides, as clients on both sides of a real partition would. The sentinels on
the majority side fail both shards over; after a while the partition heals.

Pass: no acknowledged semi-sync write lost; every lost async write was acknowledged within
``min_replicas_max_lag`` + 1 s of the cut; two nodes of one shard never took writes for longer
than that; the old primaries come back as replicas and proxy0 follows the new topology.
Redis Sentinel, in the same situation, lost 56% of acknowledged writes in Jepsen's test.

This test found that replication acks held up by the partition, delivered in a burst at the
heal, made the old primary meet ``min-replicas-to-write`` again and take proxy0's writes for
~50 ms (lost outside the window); fixed in 6f3c685 (acks judged by their send time) and made
independent of the hosts' clock skew since (``storenode/replication.py``, echoed stamps).
"""

from __future__ import annotations

import contextlib
import time
from functools import partial
from pathlib import Path

import pytest
import trio

from tests.faults import netns
from tests.faults.cluster import (
    Cluster,
    repl_info,
    semi_and_async_shards,
    wait_until,
)
from tests.faults.processes import Services, in_thread
from tests.faults.workload import Workload, check, workload

pytestmark = pytest.mark.faults

MAX_LAG = 1
MIN_REPLICAS = ("--min-replicas-to-write", "1", "--min-replicas-max-lag", str(MAX_LAG))
CUT_S = 6.0


async def test_primaries_isolated_with_one_proxy_lose_only_the_bounded_window(
    procs: Services, tmp_path: Path, network: netns.Network
) -> None:
    def body() -> None:
        proxy_hosts = [network.add_host("proxy0"), network.add_host("proxy1")]
        cluster = Cluster(
            procs,
            semi_and_async_shards(MIN_REPLICAS),
            workdir=tmp_path,
            network=network,
            proxies=2,
            proxy_hosts=proxy_hosts,
            sentinels=3,
            proxy_args=["--timeout-ms", "3000"],
        ).start()  # fmt: skip
        tags = cluster.tags_ready()  # both proxies serve every shard
        old = {name: shard.primary for name, shard in cluster.shards.items()}
        minority = [*(p.host for p in old.values()), proxy_hosts[0]]
        majority = [h for h in network.hosts.values() if h not in minority and h.index != 0]
        with contextlib.ExitStack() as stack:
            loads: dict[tuple[str, int], Workload] = {}
            for shard, tag in tags.items():
                for i in range(2):
                    loads[(shard, i)] = stack.enter_context(
                        workload(cluster.proxy_client(i, timeout=4), writers=2, hash_tag=tag,
                                 name=f"{shard}p{i}-", pace=0.002, read=not loads,
                                 probe_nodes=cluster.probe_nodes() if not loads else None)
                    )  # fmt: skip
            time.sleep(2.0)
            assert all(h is not None for h in minority)
            network.partition([h for h in minority if h], majority)
            cut = time.monotonic()
            new = {}
            for name in cluster.shards:  # the sentinels fail over one shard at a time
                new[name] = cluster.wait_failover(name, 30)
            failed_over = time.monotonic() - cut
            time.sleep(max(0.0, CUT_S - (time.monotonic() - cut)))
            network.heal()
            healed = time.monotonic()
            time.sleep(2.0)
        for name, node in old.items():
            try:
                wait_until(
                    partial(cluster.follows_sentinel_primary, node, name, link=False),
                    30,
                    f"old {name} primary rejoins",
                )
            except AssertionError as exc:
                info = {k: v for k, v in repl_info(node).items() if "master" in k or "role" in k}
                sentinels = []
                for sentinel in cluster.sentinels:
                    try:
                        reply = sentinel.client(timeout=2).execute_command(
                            "SENTINEL", "get-master-addr-by-name", name
                        )
                    except Exception as err:  # report whatever it is
                        reply = repr(err)
                    log = tmp_path / f"{sentinel.name}.log"
                    log.write_text("".join(sentinel.output))
                    sentinels.append((sentinel.name, sentinel.running, reply, str(log)))
                raise AssertionError(f"{exc}; it reports {info}; the sentinels: "
                                     f"{sentinels}") from None  # fmt: skip
        rejoined = time.monotonic() - healed
        extra = [n for n in cluster.shards if cluster.sentinel_primary(n) != new[n].address]
        cluster.adopt_sentinel_view()  # the checker reads from the primaries as they are now
        writers = [w for load in loads.values() for w in load.writers]
        first = next(iter(loads.values()))
        report = check(writers, cluster.topology(), cluster.primaries(), cluster.durability(),
                       reader=first.reader, probe=first.probe)  # fmt: skip
        late = [at - cut for at in report.lost_set_acked_at]
        after_heal = [t for t in late if t > MAX_LAG + 1]
        print(
            f"scenario 3 (primaries + proxy0 cut off for {CUT_S:.0f}s, max lag {MAX_LAG}s): both "
            f"shards failed over within {failed_over:.2f}s; lost SETs acknowledged "
            f"{min(late, default=0):.2f}..{max(late, default=0):.2f}s after the cut "
            f"({len(after_heal)} of them after the window, the heal came "
            f"{healed - cut:.2f}s after the cut); old "
            f"primaries replicas again {rejoined:.2f}s after healing; shards failed over again "
            f"since: {extra or 'none'}; {report.summary()}"
        )
        assert report.lost_in("semi-sync") == 0, report.examples
        assert all(t <= MAX_LAG + 1 for t in late), late
        assert all(d <= MAX_LAG + 1 for d in report.split_brain.values()), report.split_brain
        # proxy0 follows the new topology once it can reach the sentinels again
        r = cluster.proxy_client(0)()
        for tag in tags.values():
            wait_until(partial(r.set, f"{{{tag}}}:after", 1), 15, "proxy0 writes after healing")

    with trio.fail_after(180):
        await in_thread(body)
        print(procs.check_survivors())  # every process the test did not end
