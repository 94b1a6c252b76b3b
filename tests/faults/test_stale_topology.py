"""Scenario 9: a stale topology replayed to a proxy that follows the sentinels.

Three sentinels watch one semi-sync shard (primary + 2 replicas); one proxy follows them
(started with ``--config cluster.toml`` for a start and ``--sentinels``); two writers write
through it the whole time. The primary is ``kill -9``ed, the sentinels fail it over (epoch 2 or
more) and the old primary comes back as a replica. Then the epoch-1 ``cluster.toml`` — which
still names the old primary — is replayed to the proxy: ``CONFIG RELOAD``, then SIGHUP, then a
restart of the proxy on that file.

Pass: the proxy keeps the sentinels' epoch every time (INFO's ``epoch``, and its shard's
primary is the new one), writes through it land on the current primary; each node answers a
connection announcing the stale epoch (``SG.FENCE 1 primary``) with ``-STALE <epoch>``, and
the current primary still takes writes after such an announcement; no acknowledged write lost.
"""

from __future__ import annotations

import signal
import time
from functools import partial
from pathlib import Path

import pytest
import redis
import trio

from tests.faults.cluster import (
    repl_info,
    semi_shard_under_sentinels,
    wait_until,
)
from tests.faults.measure import key_in
from tests.faults.processes import Service, Services, in_thread
from tests.faults.workload import check, workload

pytestmark = pytest.mark.faults


def proxy_topology(proxy: Service) -> tuple[int, str]:
    """(epoch, the shard's primary) as the proxy's INFO shows them."""
    info = proxy.client(timeout=2).info("topology")
    shard = info["shard0"]  # redis-py splits "name=…,primary=…,…" into a dict
    return int(info["epoch"]), str(shard["primary"])


def stats(proxy: Service) -> dict[str, int]:
    info = proxy.client(timeout=2).info("stats")
    return {k: int(info[k]) for k in ("topologies_ignored", "reloads_ok", "reloads_failed")}


async def test_a_replayed_lower_epoch_topology_is_ignored_and_nodes_refuse_it(
    procs: Services, tmp_path: Path
) -> None:
    def body() -> None:
        cluster = semi_shard_under_sentinels(procs, tmp_path)
        shard = cluster.shards["semi"]
        stale_file = cluster.config.read_text()  # epoch 1: the old primary is the primary
        assert "epoch = 1" in stale_file
        proxy = cluster.proxies[0]
        tag = key_in((shard.slots.start, shard.slots.end), "tag")
        r = cluster.proxy_client()()
        wait_until(partial(r.set, f"{{{tag}}}:ready", 1), 15, "proxy ready")
        old = shard.primary
        with workload(cluster.proxy_client(timeout=3), writers=2, hash_tag=tag, pace=0.002,
                      probe_nodes=cluster.probe_nodes()) as load:  # fmt: skip
            time.sleep(1.0)
            old.kill()
            new = cluster.wait_failover("semi", 20)
            wait_until(lambda: proxy_topology(proxy)[1] == new.address, 10, "proxy follows")
            epoch, _ = proxy_topology(proxy)
            assert epoch >= 2
            old.restart()
            wait_until(lambda: repl_info(old).get("master_port") == new.port, 20, "old rejoins")
            time.sleep(0.5)
            # the replay: the epoch-1 file, which still names the old primary
            cluster.config.write_text(stale_file)
            seen: dict[str, tuple[int, str]] = {}
            before = stats(proxy)
            assert r.execute_command("CONFIG", "RELOAD") in (b"OK", True)
            time.sleep(0.5)
            seen["CONFIG RELOAD"] = proxy_topology(proxy)
            proxy.signal(signal.SIGHUP)
            time.sleep(0.5)
            seen["SIGHUP"] = proxy_topology(proxy)
            after = stats(proxy)
            for how in seen:  # writes still land on the current primary
                key = f"{{{tag}}}:after-{how.replace(' ', '-')}"
                r.set(key, how)
                assert new.client().get(key) == how.encode(), how
            # a restart on the stale file: the file is only a starting point
            proxy.restart()
            r = cluster.proxy_client()()
            wait_until(partial(r.set, f"{{{tag}}}:after-restart", 1), 15, "restarted proxy ready")
            seen["restart on the stale file"] = proxy_topology(proxy)
            assert new.client().get(f"{{{tag}}}:after-restart") == b"1"
            time.sleep(0.5)
        # a node holding a newer epoch refuses a connection that announces the stale one
        fences: dict[str, str] = {}
        for node in shard.nodes:
            try:
                node.client().execute_command("SG.FENCE", "1", "primary")
                fences[node.name] = "accepted"
            except redis.ResponseError as exc:
                fences[node.name] = str(exc)
        new.client().set(f"{{{tag}}}:after-stale-fence", 1)  # still the primary, not fenced
        report = check(load.writers, cluster.topology(), cluster.primaries(), cluster.durability(),
                       reader=load.reader, probe=load.probe)  # fmt: skip
        print(
            f"scenario 9 (an epoch-1 cluster.toml replayed to a proxy following the sentinels at "
            f"epoch {epoch}): "
            + "; ".join(f"after {how}: epoch {e}, primary {p}" for how, (e, p) in seen.items())
            + f" (the new primary is {new.address}); topologies ignored "
            f"{before['topologies_ignored']} -> {after['topologies_ignored']}, reloads ok "
            f"{before['reloads_ok']} -> {after['reloads_ok']}; SG.FENCE 1 primary: {fences}; "
            f"{report.summary()}"
        )
        for how, (e, p) in seen.items():
            assert e == epoch and p == new.address, (how, e, p)
        assert all(f.startswith(f"STALE {epoch}") for f in fences.values()), fences
        assert report.lost_in("semi-sync") == 0, report.examples

    with trio.fail_after(120):
        await in_thread(body)
        print(procs.check_survivors())  # every process the test did not end
