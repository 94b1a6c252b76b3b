"""Scenario 4: a minority sentinel cut off together with the primaries.

Every node and every sentinel is a host of its own (network namespaces). Two shards, `semi`
(semi-sync) and `async`, each primary + 2 replicas, all with ``--min-replicas-to-write 1
--min-replicas-max-lag 1``; 3 sentinels (quorum 2); two proxies in the test's own namespace,
which reaches every host on both sides (as clients on both sides of a real partition would).
Writers go through both proxies; one more writer talks straight to the old semi-sync primary (a
client stuck on the minority side); the write probe tries every node every 100 ms.

Then {both primaries, sentinel0} are cut off from {the replicas, sentinel1, sentinel2}. The
majority fails both shards over; sentinel0 still sees its primaries healthy and cannot fail
anything over, nor publish anything. After ``CUT_S`` the partition heals.

Pass: the majority fails both shards over; sentinel0 never publishes a topology nor stands for
election during the cut (its ``INFO`` keeps epoch 1); each old primary stops taking writes
within ``min_replicas_max_lag`` + 1 s of the cut as measured by the write probe, and two nodes
of one shard never take writes for longer than that; no acknowledged semi-sync write is lost
(the direct writer's included) and every lost async write was acknowledged within that window;
after the heal the old primaries are replicas of the new ones, sentinel0 holds the newest
epoch, and every replica has its primary's data.
"""

from __future__ import annotations

import contextlib
import threading
import time
from functools import partial
from pathlib import Path

import pytest
import redis
import trio

from tests.faults import netns
from tests.faults.cluster import (
    Cluster,
    repl_info,
    semi_and_async_shards,
    wait_until,
)
from tests.faults.processes import Service, Services, in_thread
from tests.faults.workload import Workload, check, workload

pytestmark = pytest.mark.faults

MAX_LAG = 1
MIN_REPLICAS = ("--min-replicas-to-write", "1", "--min-replicas-max-lag", str(MAX_LAG))
CUT_S = 6.0


class SentinelWatch(threading.Thread):
    """The minority sentinel's topology and current epochs, polled every 50 ms."""

    def __init__(self, sentinel: Service) -> None:
        super().__init__(name="sentinel-watch", daemon=True)
        self.sentinel = sentinel
        self.stop_event = threading.Event()
        self.seen: list[tuple[float, int, int]] = []  # (time, topology epoch, current epoch)

    def run(self) -> None:
        r = self.sentinel.client(timeout=0.5)
        while not self.stop_event.is_set():
            with contextlib.suppress(redis.RedisError):
                info = r.info()
                now = (int(info["shardgate_topology_epoch"]), int(info["shardgate_current_epoch"]))
                if not self.seen or self.seen[-1][1:] != now:
                    self.seen.append((time.monotonic(), *now))
            self.stop_event.wait(0.05)


async def test_a_minority_sentinel_cut_off_with_the_primaries_cannot_fail_over(
    procs: Services, tmp_path: Path, network: netns.Network
) -> None:
    def body() -> None:
        cluster = Cluster(
            procs,
            semi_and_async_shards(MIN_REPLICAS),
            workdir=tmp_path,
            network=network,
            proxies=2,
            sentinels=3,
            proxy_args=["--timeout-ms", "3000"],
        ).start()  # fmt: skip
        tags = cluster.tags_ready()  # both proxies serve every shard
        old = {name: shard.primary for name, shard in cluster.shards.items()}
        lonely = cluster.sentinels[0]
        minority = [n.host for n in old.values()] + [lonely.host]
        majority = [h for h in network.hosts.values() if h not in minority and h.index != 0]

        def majority_primary(shard: str) -> str | None:
            for sentinel in cluster.sentinels[1:]:
                with contextlib.suppress(redis.RedisError):
                    reply = sentinel.client(timeout=1).execute_command(
                        "SENTINEL", "get-master-addr-by-name", shard
                    )
                    return f"{reply[0].decode()}:{int(reply[1])}"
            return None

        watch = SentinelWatch(lonely)
        watch.start()
        with contextlib.ExitStack() as stack:
            loads: dict[str, Workload] = {}
            for shard, tag in tags.items():
                for i in range(2):
                    loads[f"{shard}p{i}"] = stack.enter_context(
                        workload(cluster.proxy_client(i, timeout=4), writers=2, hash_tag=tag,
                                 name=f"{shard}p{i}-", pace=0.002, read=not loads,
                                 probe_nodes=cluster.probe_nodes() if not loads else None)
                    )  # fmt: skip
            old_semi = old["semi"]
            loads["direct"] = stack.enter_context(
                workload(lambda: old_semi.client(timeout=4), writers=1, hash_tag=tags["semi"],
                         name="direct-", pace=0.002, read=False)
            )  # fmt: skip
            time.sleep(2.0)
            mark = len(lonely.output)
            assert all(h is not None for h in minority)
            network.partition([h for h in minority if h], majority)
            cut = time.monotonic()
            new = {}
            for name in cluster.shards:  # the sentinels fail over one shard at a time
                # asked of the majority: sentinel0 keeps naming the old primary
                wait_until(lambda name=name: majority_primary(name) not in (None, old[name].address),
                           30, f"failover of {name}")  # fmt: skip
                address = majority_primary(name)
                assert address is not None
                new[name] = cluster.adopt(name, address)
            failed_over = time.monotonic() - cut
            time.sleep(max(0.0, CUT_S - (time.monotonic() - cut)))
            during = lonely.output[mark:]
            seen_during = [s for s in watch.seen if s[0] < time.monotonic()]
            network.heal()
            healed = time.monotonic()
            for name, node in old.items():
                wait_until(
                    partial(cluster.follows_sentinel_primary, node, name),
                    30,
                    f"old {name} primary rejoins",
                )
            rejoined = time.monotonic() - healed
            time.sleep(max(0.0, healed + 2.0 - time.monotonic()))
        newest = max(int(str(repl_info(n.primary)["shardgate_epoch"]))
                     for n in cluster.shards.values())  # fmt: skip
        wait_until(lambda: int(lonely.client(timeout=1).info()["shardgate_topology_epoch"])
                   == newest, 15, "sentinel0 adopts the newest topology")  # fmt: skip
        watch.stop_event.set()
        extra = [n for n in cluster.shards if cluster.sentinel_primary(n) != new[n].address]
        cluster.adopt_sentinel_view()
        for name in cluster.shards:
            wait_until(partial(cluster.converged, name), 20, f"{name} converged")
        probe = loads["semip0"].probe
        assert probe is not None
        old_accepts = {
            name: [at - cut for at, shard, seen in probe.rounds
                   if shard == name and seen.get(node.name) and at > cut]
            for name, node in old.items()
        }  # fmt: skip
        in_cut = {n: max([t for t in a if t < healed - cut], default=0.0)
                  for n, a in old_accepts.items()}  # fmt: skip
        after_heal = {n: [t for t in a if t >= healed - cut] for n, a in old_accepts.items()}
        writers = [w for load in loads.values() for w in load.writers]
        report = check(writers, cluster.topology(), cluster.primaries(), cluster.durability(),
                       reader=loads["semip0"].reader, probe=probe)  # fmt: skip
        late = [at - cut for at in report.lost_set_acked_at]
        direct = loads["direct"].writers[0].log
        direct_acked = sum(1 for a in direct.acks if a.at > cut)
        published = [line for line in during if "topology_published" in line]
        stood = [line for line in during if "+try-failover" in line or "+new-epoch" in line]
        print(
            f"scenario 4 (primaries + sentinel0 cut off for {CUT_S:.0f}s, max lag {MAX_LAG}s): "
            f"the majority failed both shards over within {failed_over:.2f}s; sentinel0 during "
            f"the cut: (topology, current) epochs {[s[1:] for s in seen_during]}, published "
            f"{len(published)}, stood for election {len(stood)} time(s); old primaries' last "
            f"accepted probe {', '.join(f'{n} {t:.2f}s' for n, t in in_cut.items())} after the "
            f"cut, and after the heal ({healed - cut:.2f}s): "
            f"{ {n: len(a) for n, a in after_heal.items()} } probe(s); direct writer to the old "
            f"semi primary: {direct_acked} acked after the cut; lost SETs acknowledged "
            f"{min(late, default=0):.2f}..{max(late, default=0):.2f}s after the cut; old "
            f"primaries replicas again {rejoined:.2f}s after healing; sentinel0 at epoch "
            f"{newest}; shards failed over again since: {extra or 'none'}; {report.summary()}"
        )
        assert all(s[1] == 1 for s in seen_during), seen_during
        assert published == [] and stood == [], (published, stood)
        assert all(t <= MAX_LAG + 1 for t in in_cut.values()), in_cut
        assert report.lost_in("semi-sync") == 0, report.examples
        assert all(t <= MAX_LAG + 1 for t in late), late
        assert all(d <= MAX_LAG + 1 for d in report.split_brain.values()), report.split_brain
        for i in range(2):  # both proxies serve both shards on the new primaries
            r = cluster.proxy_client(i)()
            for tag in tags.values():
                wait_until(partial(r.set, f"{{{tag}}}:after", 1), 15, "proxy writes after heal")

    try:
        with trio.fail_after(180):
            await in_thread(body)
            print(procs.check_survivors())  # every process the test did not end
    finally:  # the processes' own account, for a failure or the docs
        for service in procs.all:
            (tmp_path / f"{service.name}.log").write_text("".join(service.output))
        print(f"logs in {tmp_path}")
