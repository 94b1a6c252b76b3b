"""Scenario 14: a sentinel frozen (SIGSTOP) long enough to trigger TILT, then resumed.

Three sentinels watch one semi-sync shard (primary + 2 replicas); a proxy follows them and
writers go through it. sentinel2 is frozen for ``PAUSE_S`` (past the 2 s TILT trigger); while it
is frozen the primary is killed and the other two fail it over. Once resumed, sentinel2 sees
more than 2 s between two of its ticks and enters TILT for 30 s. During its TILT the new primary
is killed too, and both old primaries are restarted (empty): the two others fail the shard over
again and make the restarted nodes replicas, without sentinel2's vote or help.

Pass: sentinel2 reports TILT (``INFO`` ``sentinel_tilt:1``, ``sentinel status --json``) from its
first tick after the resume; while tilted it refuses to vote (``-vote-refused … tilt=True``), is
not among the voters of the failover, and neither stands for election nor sends a role fix; the
two others fail over both times (the proxy takes writes again, no acknowledged semi-sync write
is lost); sentinel2 leaves TILT after its tilt period, holding the newest topology.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from functools import partial
from pathlib import Path

import pytest
import redis
import trio

from sentinel.tilt import TILT_PERIOD_MS, TILT_TRIGGER_MS
from tests.faults.cluster import (
    repl_info,
    semi_shard_under_sentinels,
    wait_until,
)
from tests.faults.processes import Service, Services, in_thread
from tests.faults.workload import check, workload

pytestmark = pytest.mark.faults

PAUSE_S = 3.5  # past TILT_TRIGGER_MS (2 s), with room for a slow tick before the SIGSTOP


class TiltWatch(threading.Thread):
    """Polls a sentinel's INFO every 50 ms; records (monotonic time, tilt) at every change."""

    def __init__(self, sentinel: Service) -> None:
        super().__init__(name="tilt-watch", daemon=True)
        self.sentinel = sentinel
        self.stop_event = threading.Event()
        self.changes: list[tuple[float, bool]] = []

    def run(self) -> None:
        r = self.sentinel.client(timeout=0.5)
        while not self.stop_event.is_set():
            if not self.sentinel.paused:
                with contextlib.suppress(redis.RedisError):
                    tilt = bool(int(r.info()["sentinel_tilt"]))
                    if not self.changes or self.changes[-1][1] != tilt:
                        self.changes.append((time.monotonic(), tilt))
            self.stop_event.wait(0.05)

    def first(self, tilt: bool, after: float = 0.0) -> float | None:
        return next((t for t, v in self.changes if v is tilt and t >= after), None)


def events(service: Service, start: int = 0) -> list[str]:
    return [line for line in service.output[start:] if " sentinel " in line]


def primary_of(node: Service) -> str | None:
    info = repl_info(node)
    if info.get("role") != "slave":
        return None
    return f"{info.get('master_host')}:{info.get('master_port')}"


async def test_a_sentinel_paused_into_tilt_neither_votes_nor_acts_while_the_others_fail_over(
    procs: Services, tmp_path: Path
) -> None:
    def body() -> None:
        cluster = semi_shard_under_sentinels(procs, tmp_path)
        tilted = cluster.sentinels[2]
        r = cluster.proxy_client(0)()
        wait_until(partial(r.set, "ready", 1), 15, "proxy ready")
        watch = TiltWatch(tilted)
        watch.start()
        with workload(cluster.proxy_client(0, timeout=3), writers=2, pace=0.005,
                      probe_nodes=cluster.probe_nodes()) as load:  # fmt: skip
            time.sleep(1.0)
            first_old = cluster.shards["semi"].primary
            tilted.pause()
            paused = time.monotonic()
            time.sleep(0.3)
            first_old.kill()
            killed = time.monotonic()
            first_new = cluster.wait_failover("semi", 20)
            first_switch = time.monotonic() - killed
            time.sleep(max(0.0, paused + PAUSE_S - time.monotonic()))
            mark = len(tilted.output)
            tilted.resume()
            resumed = time.monotonic()
            wait_until(lambda: watch.first(True, resumed) is not None, 10, "sentinel2 in TILT")
            entered = watch.first(True, resumed)
            assert entered is not None
            status = json.loads(tilted.client(timeout=2).execute_command("SG.STATUS", "json"))
            assert status["tilt"] is True, status
            # A second failover while sentinel2 is tilted: the two others must do it alone.
            time.sleep(1.0)
            second_old = cluster.shards["semi"].primary
            second_old.kill()
            killed2 = time.monotonic()
            second_new = cluster.wait_failover("semi", 20)
            second_switch = time.monotonic() - killed2
            # Both old primaries come back empty; the two others make them replicas.
            first_old.restart()
            second_old.restart()
            restarted = time.monotonic()
            for node in (first_old, second_old):
                wait_until(lambda node=node: primary_of(node) == second_new.address, 20,
                           f"{node.name} a replica of {second_new.name}")  # fmt: skip
            rejoined = time.monotonic() - restarted
            time.sleep(1.0)
            still_tilted = watch.first(False, resumed) is None
        during = events(tilted, mark)  # sentinel2's log from its resume to here, all in TILT
        report = check(load.writers, cluster.topology(), cluster.primaries(),
                       cluster.durability(), reader=load.reader, probe=load.probe)  # fmt: skip
        history = json.loads(
            cluster.sentinels[0].client(timeout=2).execute_command("SG.HISTORY", "json")
        )
        done = [h for h in history if h["outcome"] == "done"]
        refused = [line for line in during if "-vote-refused" in line and "tilt=True" in line]
        acted = [line for line in during
                 if any(e in line for e in ("+try-failover", "+elected-leader", "+fix-role",
                                            "+vote-for-leader", "+new-epoch"))]  # fmt: skip
        # sentinel2 leaves TILT once the period has passed since its last anomaly
        wait_until(lambda: watch.first(False, resumed) is not None,
                   TILT_PERIOD_MS / 1000 + 20, "sentinel2 leaves TILT")  # fmt: skip
        left = watch.first(False, resumed)
        assert left is not None
        watch.stop_event.set()
        info = tilted.client(timeout=2).info()
        newest = max(h["epoch"] for h in done)
        print(
            f"scenario 14 (sentinel2 SIGSTOPped {PAUSE_S}s, TILT trigger {TILT_TRIGGER_MS} ms, "
            f"period {TILT_PERIOD_MS} ms): the others named {first_new.name} {first_switch:.2f}s "
            f"after the kill during the pause; sentinel2 in TILT {entered - resumed:.2f}s after "
            f"SIGCONT; second kill during TILT -> {second_new.name} after {second_switch:.2f}s "
            f"(votes {done[-1]['votes']}, leader {done[-1]['leader']}); both old primaries "
            f"replicas {rejoined:.2f}s after restarting; sentinel2 refused {len(refused)} vote "
            f"request(s) in TILT, acted {len(acted)} time(s); left TILT {left - entered:.2f}s "
            f"after entering it, at topology epoch {info['shardgate_topology_epoch']} (newest "
            f"{newest}); {report.summary()}"
        )
        assert still_tilted, "sentinel2 left TILT before the checks were done"
        assert [h["epoch"] for h in done] == sorted({h["epoch"] for h in done}), done
        assert len(done) == 2, done
        assert all(h["leader"] != tilted.name for h in done), done
        assert tilted.name not in done[-1]["votes"], done[-1]
        assert refused, "".join(during[-40:])
        assert acted == [], acted
        assert report.lost_in("semi-sync") == 0, report.examples
        assert (TILT_PERIOD_MS - 1000) / 1000 <= left - entered <= TILT_PERIOD_MS / 1000 + 5
        assert int(info["sentinel_tilt"]) == 0
        assert int(info["shardgate_topology_epoch"]) == newest
        assert [s.running for s in cluster.sentinels] == [True] * 3

    with trio.fail_after(150):
        await in_thread(body)
        print(procs.check_survivors())  # every process the test did not end
