"""Scenario 7: a failover loop — the semi-sync primary killed 20 times in a row under load.

Three sentinels (``down_after_ms 1000``, quorum 2) watch one semi-sync shard (primary + 2
replicas); two proxies follow the sentinels; two writers per proxy write through them the
whole time, and the write probe watches every node. Each round: ``kill -9`` the current
primary, wait until the sentinels name another, restart the old one on its port (empty) and
wait until it is a linked replica of the new one; then the next round kills the new primary.

Pass: 20 failovers, one per kill — the sentinels' ``SG.HISTORY`` holds exactly 20 completed
failovers of the shard, every kill's own (old primary → new primary as the test saw them), with
strictly increasing epochs, and the epoch the sentinels and both proxies hold grows with each
round; no acknowledged semi-sync write lost; two nodes never took writes for longer than
``down_after_ms`` + 1 s. The blackout per kill (kill → first write acknowledged through each
proxy) is printed as p50 / p99 / max, with the total time.
"""

from __future__ import annotations

import contextlib
import json
import time
from functools import partial
from pathlib import Path

import msgpack
import pytest
import trio

from sentinel.messages import decode_topology
from tests.faults.cluster import (
    link_up,
    repl_info,
    semi_shard_under_sentinels,
    wait_until,
)
from tests.faults.measure import key_in, percentile
from tests.faults.processes import Service, Services, in_thread
from tests.faults.workload import Workload, check, workload

pytestmark = pytest.mark.faults

DOWN_AFTER_MS = 1000
KILLS = 20


def sentinel_epoch(sentinel: Service) -> int:
    blob = sentinel.client(timeout=2).execute_command("SG.TOPOLOGY")
    return decode_topology(msgpack.unpackb(blob, raw=False)).epoch


def proxy_epoch(proxy: Service) -> int:
    return int(proxy.client(timeout=2).info("topology")["epoch"])


def history(sentinel: Service) -> list[dict[str, object]]:
    records: list[dict[str, object]] = json.loads(
        sentinel.client(timeout=2).execute_command("SG.HISTORY", "json")
    )
    return records


def is_replica_of(node: Service, primary: Service) -> bool:
    info = repl_info(node)
    return (
        info.get("role") == "slave"
        and info.get("master_port") == primary.port
        and info.get("master_link_status") == "up"
    )


async def test_twenty_kills_give_twenty_failovers_without_semi_sync_loss(
    procs: Services, tmp_path: Path
) -> None:
    def body() -> None:
        began = time.monotonic()
        cluster = semi_shard_under_sentinels(
            procs, tmp_path, proxies=2, down_after_ms=DOWN_AFTER_MS
        )
        shard = cluster.shards["semi"]
        tag = key_in((shard.slots.start, shard.slots.end), "tag")
        for i in range(2):
            r = cluster.proxy_client(i)()
            wait_until(partial(r.set, f"{{{tag}}}:ready", 1), 15, "proxy ready")
        epochs = [sentinel_epoch(cluster.sentinels[0])]
        kills: list[tuple[float, str, str]] = []  # (kill time, old primary, new primary)
        switch: list[float] = []
        restart: list[float] = []
        with contextlib.ExitStack() as stack:
            loads: list[Workload] = [
                stack.enter_context(
                    workload(cluster.proxy_client(i, timeout=3), writers=2, hash_tag=tag,
                             name=f"p{i}-", pace=0.002, read=i == 0,
                             probe_nodes=cluster.probe_nodes() if i == 0 else None)
                )
                for i in range(2)
            ]  # fmt: skip
            time.sleep(1.0)
            for _ in range(KILLS):
                old = shard.primary
                old.kill()
                killed = time.monotonic()
                new = cluster.wait_failover("semi", 30)
                switch.append(time.monotonic() - killed)
                kills.append((killed, old.address, new.address))
                # the epoch moved on everywhere: the sentinels' and both proxies'
                # (SENTINEL get-master-addr-by-name can name it a moment before SG.TOPOLOGY
                # carries it: the publication is the failover's last step)
                wait_until(lambda: sentinel_epoch(cluster.sentinels[0]) > epochs[-1], 10,
                           "a higher epoch")  # fmt: skip
                epoch = sentinel_epoch(cluster.sentinels[0])
                epochs.append(epoch)
                for proxy in cluster.proxies:
                    wait_until(lambda p=proxy, e=epoch: proxy_epoch(p) >= e, 10, "proxy adopts")
                started = time.monotonic()
                old.restart()  # same port, empty: the sentinels make it a replica of `new`
                wait_until(partial(is_replica_of, old, new), 30, f"{old.name} rejoins")
                restart.append(time.monotonic() - started)
                # both replicas linked again before the next kill: semi-sync needs one
                wait_until(lambda: all(link_up(r) for r in shard.replicas), 30, "replicas up")
                time.sleep(0.3)
            time.sleep(1.0)
        looped = time.monotonic() - began
        # the first write *sent* after each kill and acknowledged, per proxy
        blackout: list[float] = []
        for killed, _, _ in kills:
            for load in loads:
                acks = [
                    ack.at
                    for w in load.writers
                    for ack, took in zip(w.log.acks, w.log.latencies)
                    if ack.at - took > killed
                ]
                assert acks, "a proxy never took a write again after a kill"
                blackout.append(min(acks) - killed)
        time.sleep(2.0)  # no late failover after the last kill
        records = {s.name: history(s) for s in cluster.sentinels}
        done = [r for r in records["sentinel0"] if r["shard"] == "semi" and r["outcome"] == "done"]
        aborted = [r for r in records["sentinel0"] if r["outcome"] != "done"]
        report = check([w for load in loads for w in load.writers], cluster.topology(),
                       cluster.primaries(), cluster.durability(), reader=loads[0].reader,
                       probe=loads[0].probe)  # fmt: skip
        total = time.monotonic() - began
        print(
            f"scenario 7 ({KILLS} kills of the semi-sync primary, 3 sentinels, down_after_ms "
            f"{DOWN_AFTER_MS}, 2 proxies): sentinels named the new primary "
            f"p50 {percentile(switch, 50):.2f}s / p99 {percentile(switch, 99):.2f}s / max "
            f"{max(switch):.2f}s after each kill; blackout (kill -> first acked write, per "
            f"proxy, {len(blackout)}) p50 {percentile(blackout, 50):.2f}s / p99 "
            f"{percentile(blackout, 99):.2f}s / max {max(blackout):.2f}s; restarted old primary "
            f"a linked replica p50 {percentile(restart, 50):.2f}s / max {max(restart):.2f}s "
            f"after its restart; epochs {epochs[0]}..{epochs[-1]} ({len(done)} failovers done, "
            f"{len(aborted)} aborted attempts in the history: "
            f"{', '.join(str(r['outcome']) for r in aborted) or 'none'}); loop {looped:.0f}s, total "
            f"{total:.0f}s; {report.summary()}"
        )
        assert len(done) == KILLS, done
        done_epochs = [int(str(r["epoch"])) for r in done]
        assert done_epochs == sorted(set(done_epochs)), done_epochs  # strictly increasing
        assert done_epochs == epochs[1:], (done_epochs, epochs)
        assert [(r["old_primary"], r["new_primary"]) for r in done] == [(o, n) for _, o, n in kills]
        for name, recs in records.items():  # every sentinel shows the same failovers
            mine = [(r["epoch"], r["new_primary"]) for r in recs if r["outcome"] == "done"]
            assert mine == [(r["epoch"], r["new_primary"]) for r in done], name
        assert sentinel_epoch(cluster.sentinels[0]) == epochs[-1]
        assert report.lost_in("semi-sync") == 0, report.examples
        assert all(d <= DOWN_AFTER_MS / 1000 + 1 for d in report.split_brain.values())

    with trio.fail_after(600):
        await in_thread(body)
        print(procs.check_survivors())  # every process the test did not end
