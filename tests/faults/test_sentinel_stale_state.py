"""Scenario 6: a sentinel restarted with a stale state file (an operator restored a backup, a
disk snapshot rolled back).

Three sentinels watch one semi-sync shard (primary + 2 replicas); a proxy follows them and
writers go through it. After a first failover (epoch 2) sentinel2's state file is saved; a
second failover follows (epoch 3). Then sentinel2 is stopped, the saved file is copied over its
state file, and it is started again: it believes epoch 2 and a primary that is now a replica.
A third failover (the primary killed once more) checks the cluster still moves forward.

Pass: the restarted sentinel adopts the newest epoch from its peers (what it reports: ``INFO``
``shardgate_topology_epoch``, ``SENTINEL get-master-addr-by-name``); it never publishes a lower
topology, never stands for election or sends a role under a lower epoch; the proxy's topology
epoch never goes down; no node's epoch ever goes down (no node accepts a role under a lower
epoch); the third failover gets a higher epoch; no acknowledged semi-sync write is lost.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import shutil
import threading
import time
from functools import partial
from pathlib import Path

import pytest
import redis
import trio

from sentinel.state_file import read_state_file
from tests.faults.cluster import (
    repl_info,
    semi_shard_under_sentinels,
    wait_until,
)
from tests.faults.processes import Service, Services, in_thread
from tests.faults.workload import check, workload

pytestmark = pytest.mark.faults

_EPOCH = re.compile(r"epoch=(\d+)")
_UNREACHABLE = re.compile(r'error="(all attempts to connect|\[Errno|Connection)', re.IGNORECASE)


class EpochWatch(threading.Thread):
    """Every 50 ms: the proxy's topology epoch, each node's epoch (per process), what the
    restarted sentinel reports. Records every value seen, in order."""

    def __init__(self, proxy: Service, nodes: list[Service], sentinel: Service) -> None:
        super().__init__(name="epoch-watch", daemon=True)
        self.proxy, self.nodes, self.sentinel = proxy, nodes, sentinel
        self.stop_event = threading.Event()
        self.proxy_epochs: list[int] = []
        self.node_epochs: dict[tuple[str, int], list[int]] = {}  # (node, pid) -> epochs
        self.sentinel_epochs: list[tuple[float, int]] = []  # (time, topology epoch)
        self._last: tuple[int, int] | None = None  # (sentinel pid, epoch) last recorded

    def run(self) -> None:
        while not self.stop_event.is_set():
            with contextlib.suppress(redis.RedisError):
                epoch = int(self.proxy.client(timeout=0.5).info("topology")["epoch"])
                if not self.proxy_epochs or self.proxy_epochs[-1] != epoch:
                    self.proxy_epochs.append(epoch)
            for node in self.nodes:
                if not node.running:
                    continue
                with contextlib.suppress(redis.RedisError):
                    epoch = int(str(repl_info(node)["shardgate_epoch"]))
                    seen = self.node_epochs.setdefault((node.name, node.pid), [])
                    if not seen or seen[-1] != epoch:
                        seen.append(epoch)
            if self.sentinel.running:
                with contextlib.suppress(redis.RedisError):
                    info = self.sentinel.client(timeout=0.5).info()
                    key = (self.sentinel.pid, int(info["shardgate_topology_epoch"]))
                    if key != self._last:
                        self._last = key
                        self.sentinel_epochs.append((time.monotonic(), key[1]))
            self.stop_event.wait(0.05)


def stamp(line: str) -> float:
    """The wall-clock time of a log line (``2026-11-26T20:11:05.123Z ...``), in seconds."""
    return datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()


def epochs_in(lines: list[str], event: str) -> list[int]:
    return [int(m.group(1)) for line in lines if event in line and (m := _EPOCH.search(line))]


async def test_a_sentinel_restarted_with_a_stale_state_file_adopts_the_newest_epoch(
    procs: Services, tmp_path: Path
) -> None:
    def body() -> None:
        cluster = semi_shard_under_sentinels(procs, tmp_path)
        stale = cluster.sentinels[2]
        state = tmp_path / "sentinel2.state"
        r = cluster.proxy_client(0)()
        wait_until(partial(r.set, "ready", 1), 15, "proxy ready")

        def fail_over() -> Service:
            old = cluster.shards["semi"].primary
            old.kill()
            new = cluster.wait_failover("semi", 20)
            old.restart()  # empty, same port: the sentinels make it a replica of `new`
            wait_until(lambda: repl_info(old).get("master_port") == new.port
                       and repl_info(old).get("master_link_status") == "up", 20,
                       f"{old.name} rejoins")  # fmt: skip
            return new

        def saved_epoch() -> int:
            saved = read_state_file(state)
            return saved.topology.epoch if saved is not None and saved.topology else 0

        with workload(cluster.proxy_client(0, timeout=3), writers=2, pace=0.005,
                      probe_nodes=cluster.probe_nodes()) as load:  # fmt: skip
            time.sleep(1.0)
            fail_over()
            wait_until(lambda: saved_epoch() >= 2, 10, "sentinel2 persisted epoch 2")
            old_epoch = saved_epoch()
            shutil.copyfile(state, tmp_path / "sentinel2.state.old")
            fail_over()
            newest = int(str(repl_info(cluster.shards["semi"].primary)["shardgate_epoch"]))
            assert newest > old_epoch
            wait_until(lambda: saved_epoch() == newest, 10, "sentinel2 persisted the newest")
            watch = EpochWatch(cluster.proxies[0], cluster.shards["semi"].nodes, stale)
            watch.start()
            time.sleep(0.5)
            stopping = time.monotonic()
            stale.stop()
            shutil.copyfile(tmp_path / "sentinel2.state.old", state)
            mark = len(stale.output)
            stale.start()
            started = time.monotonic()
            wait_until(
                lambda: int(stale.client(timeout=1).info()["shardgate_topology_epoch"]) == newest,
                10,
                "the restarted sentinel adopts the newest epoch",
            )
            adopted = time.monotonic() - started
            named = stale.client(timeout=1).execute_command(
                "SENTINEL", "get-master-addr-by-name", "semi"
            )
            assert f"{named[0].decode()}:{int(named[1])}" == cluster.shards["semi"].primary.address
            time.sleep(1.0)
            third = fail_over()  # the cluster still moves forward, sentinel2 included
            third_epoch = int(str(repl_info(third)["shardgate_epoch"]))
            time.sleep(1.0)
            watch.stop_event.set()
            watch.join(5)
        after = stale.output[mark:]
        report = check(load.writers, cluster.topology(), cluster.primaries(),
                       cluster.durability(), reader=load.reader, probe=load.probe)  # fmt: skip
        published = epochs_in(after, "topology_published")
        fixes = epochs_in(after, "+fix-role")
        attempts = epochs_in(after, "+try-failover")
        # a node's refusal (a reply such as STALE); not a role call to the node the test has
        # just killed, which the sentinel logs the same way ("all attempts to connect … failed")
        refused = [
            line for line in after if "role_refused" in line and not _UNREACHABLE.search(line)
        ]
        proxy_log = "".join(cluster.proxies[0].output)
        ignored = proxy_log.count("topology_ignored")
        reports = [(t, e) for t, e in watch.sentinel_epochs if t > stopping]
        stale_reports = [t for t, e in reports if e < newest]
        started_at = epochs_in([line for line in after if " listening " in line], "listening")
        adoptions = [line.split("+config-update ", 1)[1].strip()
                     for line in after if "+config-update" in line]  # fmt: skip
        # how long it held the stale topology: from its "listening" line to its first adoption
        stamps = [stamp(line) for line in after if line[:4].isdigit()
                  and (" listening " in line or "+config-update" in line)][:2]  # fmt: skip
        held_ms = (stamps[1] - stamps[0]) * 1000 if len(stamps) == 2 else float("nan")
        print(
            f"scenario 6 (sentinel2 restarted with its state file of epoch {old_epoch}, newest "
            f"{newest}): it started at epoch {started_at} and adopted {adoptions[:1]} {held_ms:.0f} ms later (its log); its INFO "
            f"said {[e for _, e in reports]} ({newest} {adopted:.2f}s after its start, the stale "
            f"epoch seen by {len(stale_reports)} poll(s)); "
            f"it published {published}, stood for {attempts}, sent role fixes under {fixes}, "
            f"had {len(refused)} role(s) refused; proxy epochs {watch.proxy_epochs} "
            f"({ignored} stale topologies ignored); node epochs "
            f"{ {f'{n}/{pid}': e for (n, pid), e in watch.node_epochs.items()} }; "
            f"third failover under epoch {third_epoch}; {report.summary()}"
        )
        assert started_at == [old_epoch], started_at  # it really started from the stale file
        assert all(e >= newest for e in published), published
        assert all(e > newest for e in attempts), attempts
        assert all(e >= newest for e in fixes), fixes
        assert refused == [], refused
        assert watch.proxy_epochs == sorted(watch.proxy_epochs), watch.proxy_epochs
        for key, seen in watch.node_epochs.items():
            assert seen == sorted(seen), (key, seen)
        assert third_epoch > newest
        assert int(stale.client(timeout=2).info()["shardgate_topology_epoch"]) == third_epoch
        assert report.lost_in("semi-sync") == 0, report.examples

    with trio.fail_after(150):
        await in_thread(body)
        print(procs.check_survivors())  # every process the test did not end
