"""Scenario 15: a replica that was away while writes went on comes back, resyncs and converges.

Away means frozen (SIGSTOP), cut off by a network-namespace partition (shorter and longer than
the replica's 10 s link timeout), or frozen while its shard failed over to another replica (the
hand-made failover a sentinel will make: it must then follow the new primary). In every case,
after it returns and the workload stops, it holds exactly the primary's keys and TTLs, and the
clients never noticed it was gone (no failed write on an asynchronous shard).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from tests.faults import netns
from tests.faults.cluster import SEMI, Cluster, ShardSpec, dump, repl_info, sync_stats, wait_until
from tests.faults.processes import Services, in_thread
from tests.faults.workload import check, workload

pytestmark = pytest.mark.faults

AWAY = {"paused": 3.0, "partitioned": 3.0, "partitioned-long": 12.0, "paused-failover": 3.0}


@pytest.mark.parametrize("how", list(AWAY))
async def test_returning_replica_resyncs_and_converges(
    procs: Services, tmp_path: Path, netns_reason: str | None, how: str
) -> None:
    if how.startswith("partitioned") and netns_reason is not None:
        pytest.skip(netns_reason)

    def body(network: netns.Network | None) -> None:
        cluster = Cluster(
            procs,
            [ShardSpec(name="s", replicas=2)],
            workdir=tmp_path,
            network=network,
            proxy_args=["--timeout-ms", "2000"],
        ).start()
        shard = cluster.shards["s"]
        primary, (away, other) = shard.primary, shard.replicas
        with workload(cluster.proxy_client(timeout=5), writers=3, pace=0.001) as load:
            time.sleep(1.0)
            before = sync_stats(primary)
            if how.startswith("paused"):
                away.pause()
            else:
                assert network is not None and primary.host and away.host
                network.partition([primary.host], [away.host])
            time.sleep(AWAY[how])
            if how == "paused-failover":
                primary.kill()
                time.sleep(0.2)
                cluster.promote("s", other)  # `away` is frozen: it hears nothing of this
            acked_while_away = load.acked()
            if how.startswith("paused"):
                away.resume()
            else:
                assert network is not None
                network.heal()
            returned = time.monotonic()
            if how == "paused-failover":
                # what a sentinel does when a replica it could not reach comes back
                host, port = other.address.rsplit(":", 1)
                away.client().execute_command("REPLICAOF", host, port)
            time.sleep(1.0)
        new_primary = cluster.shards["s"].primary
        took = wait_until(
            lambda: dump(away.client()) == dump(new_primary.client()),
            30,
            f"{away.name} converges with {new_primary.name}",
        )
        caught_up = time.monotonic() - returned
        report = check(load.writers, cluster.topology(), cluster.primaries(),
                       cluster.durability(), reader=load.reader)  # fmt: skip
        syncs = "" if how == "paused-failover" else (
            f"; full/partial syncs during the absence: {sync_stats(primary)[0] - before[0]}/"
            f"{sync_stats(primary)[1] - before[1]}"
        )  # fmt: skip
        print(
            f"scenario 15 ({how} {AWAY[how]:.0f}s, {acked_while_away} acks by then): equal to "
            f"the primary {caught_up:.2f}s after returning (checked {took:.2f}s after the "
            f"workload stopped){syncs}; {report.summary()}"
        )
        if how != "paused-failover":
            assert report.failed == 0  # clients never noticed: the proxy only uses primaries
            assert report.lost_in("async") == 0
        assert len(dump(away.client())) > 100

    with trio.fail_after(150):
        if how.startswith("partitioned"):
            with netns.network() as network:
                await in_thread(body, network)
                print(procs.check_survivors())  # every process the test did not end
        else:
            await in_thread(body, None)
            print(procs.check_survivors())  # every process the test did not end


DOWN_AFTER_MS = 1000


async def test_replica_away_during_a_sentinel_failover_is_repointed_and_converges(
    procs: Services, tmp_path: Path
) -> None:
    """Scenario 15 with sentinels: a replica frozen while the sentinels fail its primary over.

    One semi-sync shard (primary + 2 replicas), 3 sentinels, a proxy following them, two
    writers through it and the write probe. ``away`` is SIGSTOPped; 0.5 s later the primary is
    ``kill -9``ed; the sentinels can only promote ``other`` (``away`` does not answer them).
    One second after they name it, ``away`` is resumed: it still follows the dead primary.
    Pass: the sentinels re-point it to the new primary (nobody else tells it), it links and
    holds exactly the new primary's keys and TTLs; semi-sync writes, which had no replica to
    ack them while ``away`` was frozen, are acknowledged again; no acknowledged semi-sync write
    lost; two nodes never took writes for longer than ``down_after_ms`` + 1 s.
    """

    def body() -> None:
        cluster = Cluster(
            procs,
            [ShardSpec(name="semi", replicas=2, node_args=SEMI, durability="semi-sync")],
            workdir=tmp_path,
            sentinels=3,
            down_after_ms=DOWN_AFTER_MS,
            proxy_args=["--timeout-ms", "1000"],
        ).start()
        shard = cluster.shards["semi"]
        primary, (away, other) = shard.primary, list(shard.replicas)
        r = cluster.proxy_client(timeout=3)()
        wait_until(lambda: bool(r.set("ready", 1)), 15, "proxy ready")
        with workload(cluster.proxy_client(timeout=3), writers=2, pace=0.002,
                      probe_nodes=cluster.probe_nodes()) as load:  # fmt: skip
            time.sleep(1.5)
            away.pause()
            paused = time.monotonic()
            time.sleep(0.5)
            primary.kill()
            killed = time.monotonic()
            new = cluster.wait_failover("semi", 20)
            switched = time.monotonic() - killed
            time.sleep(1.0)
            acked_while_away = load.acked()
            away.resume()
            returned = time.monotonic()
            repointed = wait_until(
                lambda: (
                    repl_info(away).get("master_port") == new.port
                    and repl_info(away).get("master_link_status") == "up"
                ),
                20,
                f"the sentinels re-point {away.name} to {new.name}",
            )
            # semi-sync writes are acknowledged again once `away` acks for the new primary
            acks_back = load.acked()
            wait_until(lambda: load.acked() > acks_back + 20, 10, "semi-sync acks resume")
            time.sleep(1.0)
        away_for = returned - paused
        took = wait_until(
            lambda: dump(away.client()) == dump(new.client()),
            30,
            f"{away.name} converges with {new.name}",
        )
        full, partial_ok = sync_stats(new)
        report = check(load.writers, cluster.topology(), cluster.primaries(),
                       cluster.durability(), reader=load.reader, probe=load.probe)  # fmt: skip
        print(
            f"scenario 15 with sentinels ({away.name} frozen {away_for:.2f}s, the primary killed "
            f"0.5s in): the sentinels named {new.name} {switched:.2f}s after the kill; "
            f"{acked_while_away} acks by the resume; {away.name} re-pointed and linked "
            f"{repointed:.2f}s after SIGCONT (full/partial syncs served by {new.name}: "
            f"{full}/{partial_ok}), equal to it {took:.2f}s after the workload stopped; "
            f"{report.summary()}"
        )
        assert new is other, (new.name, other.name)
        assert report.lost_in("semi-sync") == 0, report.examples
        assert all(d <= DOWN_AFTER_MS / 1000 + 1 for d in report.split_brain.values())
        assert len(dump(away.client())) > 100

    with trio.fail_after(150):
        await in_thread(body)
    print(procs.check_survivors())  # every process the test did not end
