"""Scenario 8: a manual failover (``SENTINEL FAILOVER``) under load, semi-sync and async.

Three sentinels watch two shards, ``semi`` (semi-sync) and ``async``, each primary + 2
replicas; two proxies follow the sentinels; two writers per shard write through each proxy the
whole time. The semi-sync shard is failed over with ``SENTINEL FAILOVER semi`` sent to a
sentinel, then the async one with ``shardgate sentinel failover async`` (the CLI).

What ``docs/sentinel.md`` promises for a manual failover: election first, then the primary's
writes paused (``CLIENT PAUSE manual_pause_ms WRITE``), the chosen replica caught up to the
primary's offset at the pause, the old primary demoted first, then the replica promoted. So:

Pass: both failovers are done (history: manual, outcome ``done``); zero acknowledged writes
lost in **either** class (the replica had everything the old primary had acknowledged); the
write pause seen through each proxy (the longest time any one writer of that shard went
without an acknowledgement) is under 1 s; the old primary is a replica of the new one.

Found and fixed (node, ``storenode/server.py``): a write held by ``CLIENT PAUSE`` on a
semi-sync primary that is demoted during the pause is refused after the pause (``-READONLY``,
not applied) but then waited for replica acks as if it had been applied — the client loop
compared the replication offset from *before* the pause with the offset after it, and the
demoted node's offset moved with its new primary's stream — and was answered, after
``--sync-timeout-ms``, ``-TIMEOUT write applied but acknowledged by 0 of 1 replicas``: a false
claim, too late for the proxy (whose ``--timeout-ms`` expired first). Now "applied" is decided
from the offset right around ``execute`` in ``_after_pause``;
``test_paused_write_on_a_demoted_semi_sync_primary_is_refused_at_once`` shows it in a few
seconds without sentinels.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
import trio

from tests.faults.cluster import (
    SEMI,
    Cluster,
    ShardSpec,
    link_up,
    repl_info,
    semi_and_async_shards,
    wait_until,
)
from tests.faults.measure import key_in
from tests.faults.processes import ROOT, Service, Services, in_thread
from tests.faults.workload import Workload, check, workload

PAUSE_LIMIT_S = 1.0


def longest_gap(acks: list[float], start: float, end: float) -> float:
    """The longest time without an acknowledgement inside [start, end]."""
    times = sorted(t for t in acks if start <= t <= end)
    edges = [start, *times, end]
    return max(b - a for a, b in itertools.pairwise(edges))


def timeline(record: dict[str, Any]) -> str:
    return " ".join(f"{t['step']}@{t['after_ms']}" for t in record["timeline"])


def replica_of(node: Service, primary: Service) -> bool:
    info = repl_info(node)
    return info.get("role") == "slave" and info.get("master_port") == primary.port


def cli_failover(sentinel: Service, shard: str) -> str:
    host, port = sentinel.address.rsplit(":", 1)
    done = subprocess.run(
        [sys.executable, "-m", "shardgate", "sentinel", "failover", shard, "--host", host,
         "--port", port],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return done.stdout.strip()


@pytest.mark.faults
@pytest.mark.parametrize(
    ("victims", "pause_checked"),
    [
        pytest.param(("semi", "async"), False, id="semi-then-async"),
        pytest.param(("async",), True, id="async"),
        pytest.param(("semi",), True, id="semi-pause"),
    ],
)
async def test_manual_failover_under_load_loses_nothing_and_pauses_writes_briefly(
    procs: Services, tmp_path: Path, victims: tuple[str, ...], pause_checked: bool
) -> None:
    def body() -> None:
        cluster = Cluster(
            procs,
            semi_and_async_shards(),
            workdir=tmp_path,
            proxies=2,
            sentinels=3,
            proxy_args=["--timeout-ms", "1000"],
        ).start()
        tags = cluster.tags_ready()  # both proxies serve every shard
        old = {name: shard.primary for name, shard in cluster.shards.items()}
        windows: dict[str, tuple[float, float]] = {}
        switched: dict[str, float] = {}
        with contextlib.ExitStack() as stack:
            loads: dict[tuple[str, int], Workload] = {}
            for shard, tag in tags.items():
                for i in range(2):
                    loads[(shard, i)] = stack.enter_context(
                        workload(cluster.proxy_client(i, timeout=3), writers=2, hash_tag=tag,
                                 name=f"{shard}p{i}-", pace=0.002,
                                 probe_nodes=cluster.probe_nodes() if not loads else None,
                                 read=not loads)
                    )  # fmt: skip
            time.sleep(2.0)
            for shard in victims:
                asked = time.monotonic()
                if shard == "semi":
                    reply = (
                        cluster.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", shard)
                    )
                    assert reply in (b"OK", "OK", True), reply
                else:
                    cli_failover(cluster.sentinels[1], shard)
                cluster.wait_failover(shard, 20)
                switched[shard] = time.monotonic() - asked
                time.sleep(1.5)
                windows[shard] = (asked, time.monotonic())
            time.sleep(0.5)
        pauses: dict[tuple[str, int], float] = {}
        errors: dict[tuple[str, int], int] = {}
        for (shard, i), load in loads.items():
            if shard not in victims:
                continue
            start, end = windows[shard]
            # as a client sees it: the longest wait between two of its own acknowledgements
            pauses[(shard, i)] = max(
                longest_gap([a.at for a in w.log.acks], start, end) for w in load.writers
            )
            errors[(shard, i)] = sum(len(w.log.failed) for w in load.writers)
        for shard, node in old.items():
            if shard not in victims:
                continue
            new = cluster.shards[shard].primary
            wait_until(partial(replica_of, node, new), 20, f"old {shard} primary is a replica")
        records = json.loads(cluster.sentinels[2].client().execute_command("SG.HISTORY", "json"))
        writers = [w for load in loads.values() for w in load.writers]
        first = next(iter(loads.values()))
        report = check(writers, cluster.topology(), cluster.primaries(), cluster.durability(),
                       reader=first.reader, probe=first.probe)  # fmt: skip
        print(
            "scenario 8 (manual failover under load, 3 sentinels, 2 proxies): "
            + "; ".join(
                f"{shard}: new primary named {switched[shard]:.2f}s after the request, write "
                f"pause per proxy {pauses[(shard, 0)] * 1000:.0f} / "
                f"{pauses[(shard, 1)] * 1000:.0f} ms, write errors "
                f"{errors[(shard, 0)]} / {errors[(shard, 1)]}"
                for shard in victims
            )
            + f"; errors: {sorted({e for w in writers for _, _, e in w.log.failed})}"
            + "; history: "
            + ", ".join(
                f"{r['shard']} manual={r['manual']} {r['outcome']} in {r['duration_ms']} ms "
                f"({timeline(r)})"
                for r in records
            )
            + "; "
            f"{report.summary()}"
        )
        done = [(r["shard"], r["manual"]) for r in records if r["outcome"] == "done"]
        assert done == [(shard, True) for shard in victims], records
        assert report.lost_in("semi-sync") == 0, report.examples
        assert report.lost_in("async") == 0, report.examples
        if pause_checked:
            assert all(p < PAUSE_LIMIT_S for p in pauses.values()), pauses
        else:  # only the async shard's (the semi-sync one's is checked in its own run)
            assert all(p < PAUSE_LIMIT_S for (s, _), p in pauses.items() if s == "async"), pauses

    with trio.fail_after(180):
        await in_thread(body)
        print(procs.check_survivors())  # every process the test did not end


async def test_paused_write_on_a_demoted_semi_sync_primary_is_refused_at_once(
    procs: Services,
) -> None:
    """The node bug behind the semi-sync manual failover's long pause, without sentinels: a
    write held by CLIENT PAUSE, the primary made a replica meanwhile; after the pause it must
    be answered -READONLY (not applied, so a proxy may retry it elsewhere), not wait for acks."""

    def body() -> None:
        primary = procs.add(Service("p", ["node", *SEMI]))
        replica = procs.add(Service("r", ["node", "--replicaof", primary.address, *SEMI]))
        wait_until(partial(link_up, replica), 15, "replica linked")
        pause_s = 0.5
        primary.client().execute_command("CLIENT", "PAUSE", str(int(pause_s * 1000)), "WRITE")
        outcome: list[object] = []

        def write() -> None:
            start = time.monotonic()
            try:
                outcome.append(primary.client().set("paused", 1))
            except redis.RedisError as exc:
                outcome.append(exc)
            outcome.append(time.monotonic() - start)

        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(0.1)  # the write is held
        replica.client().execute_command("REPLICAOF", "NO", "ONE")
        primary.client().execute_command("REPLICAOF", *replica.address.rsplit(":", 1))
        replica.client().set("moves-the-offset", 1)  # the demoted node's offset moves with it
        writer.join(10)
        reply, took = outcome
        print(f"paused write on the demoted primary: {reply!r} after {took:.2f}s")
        assert isinstance(reply, redis.exceptions.ReadOnlyError), reply  # -READONLY …
        assert isinstance(took, float) and took < pause_s + 0.5, took

    with trio.fail_after(60):
        await in_thread(body)
        print(procs.check_survivors())  # every process the test did not end


@pytest.mark.faults
async def test_manual_failover_whose_replica_cannot_catch_up_is_aborted_and_unpaused(
    procs: Services, tmp_path: Path
) -> None:
    """The other half of the promise: when no replica reaches the paused primary's offset in
    half of ``manual_pause_ms`` (250 ms), the failover is aborted (``catchup-timeout``), the
    primary is unpaused (``CLIENT UNPAUSE``) and stays primary, and nothing is lost.

    Both replicas are frozen (SIGSTOP) 0.1 s before the request and resumed 0.8 s after the
    freeze: long enough to miss the catch-up window, short enough to stay eligible (a report
    in the last second) and never SDOWN. (A throttled replication link does not do: the
    sentinels re-point a replica that follows a fault proxy to the primary they know.)"""

    def body() -> None:
        cluster = Cluster(
            procs,
            [ShardSpec(name="async", replicas=2)],
            workdir=tmp_path,
            proxies=1,
            sentinels=3,
            proxy_args=["--timeout-ms", "1000"],
        ).start()
        shard = cluster.shards["async"]
        tag = key_in((shard.slots.start, shard.slots.end), "tag")
        r = cluster.proxy_client()()
        wait_until(partial(r.set, f"{{{tag}}}:ready", 1), 15, "proxy ready")
        old = shard.primary
        records: list[dict[str, Any]] = []

        def ended() -> bool:
            records[:] = json.loads(
                cluster.sentinels[0].client().execute_command("SG.HISTORY", "json")
            )
            return bool(records)

        with workload(cluster.proxy_client(timeout=3), writers=4, hash_tag=tag, pace=0.002,
                      probe_nodes=cluster.probe_nodes()) as load:  # fmt: skip
            time.sleep(1.0)
            replicas = list(shard.replicas)
            for replica in replicas:
                replica.pause()
            frozen = time.monotonic()
            time.sleep(0.1)
            asked = time.monotonic()
            reply = cluster.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", "async")
            assert reply in (b"OK", "OK", True), reply
            time.sleep(max(0.0, frozen + 0.8 - time.monotonic()))
            for replica in replicas:
                replica.resume()
            wait_until(ended, 10, "the manual failover ends")
            time.sleep(1.0)
            window = (asked, time.monotonic())
        pause = max(longest_gap([a.at for a in w.log.acks], *window) for w in load.writers)
        wait_until(partial(cluster.converged, "async"), 30, "replicas catch up")
        report = check(load.writers, cluster.topology(), cluster.primaries(),
                       cluster.durability(), reader=load.reader, probe=load.probe)  # fmt: skip
        primary_now = cluster.sentinel_primary("async")
        print(
            "scenario 8, replicas that cannot catch up (frozen 0.8 s across the request): "
            "history "
            + ", ".join(f"{r['outcome']} in {r['duration_ms']} ms ({timeline(r)})" for r in records)
            + f"; still the primary: {primary_now == old.address}; longest write pause per "
            f"writer {pause * 1000:.0f} ms; {report.summary()}"
        )
        assert [(r["manual"], r["outcome"]) for r in records] == [(True, "catchup-timeout")]
        assert primary_now == old.address
        assert pause < PAUSE_LIMIT_S, pause
        assert report.lost_in("async") == 0, report.examples
        old.client().set(f"{{{tag}}}:still-primary", 1)  # unpaused and writable

    with trio.fail_after(120):
        await in_thread(body)
        print(procs.check_survivors())  # every process the test did not end
