"""Scenario 5: the failover leader killed in the middle of a failover.

Three sentinels watch one semi-sync shard (primary + 2 replicas); two proxies follow them and
writers go through both. The primary is ``kill -9``ed. A watcher *process* (no GIL shared with
the writers, so it reacts within a millisecond) subscribes to ``+elected-leader`` on every
sentinel and ``kill -9``s the first sentinel that announces it was elected, the moment the
message arrives. The leader has by then sent its promotion, or is about to: it dies between its
election and its publication.

The kill is a race with the leader's next steps (a promotion and a publication take a few
milliseconds), so a round in which the leader had already published before it died is reported
and the round is repeated (the dead sentinel and the old primary are restarted first), up to
``ROUNDS`` times.

Pass: in a round where the leader died before publishing, another sentinel finishes the
failover under a strictly higher epoch; in the end exactly one node of the shard is a primary,
both proxies route to it under the newest epoch, the old primary is its replica, and no
acknowledged semi-sync write is lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import trio

from tests.faults.cluster import (
    repl_info,
    semi_shard_under_sentinels,
    wait_until,
)
from tests.faults.processes import ROOT, Service, Services, in_thread
from tests.faults.workload import Workload, check, workload

pytestmark = pytest.mark.faults

FAILOVER_TIMEOUT_MS = 5000  # the voters of a dead leader wait this long before a new election
ROUNDS = 4


def watch_and_kill(targets: list[tuple[str, int, int]]) -> None:
    """Subscribe to +elected-leader on every (host, port, pid); SIGKILL the first announcer.

    Prints "ready" once subscribed, then one JSON line: who was killed, the epoch it was
    elected in, and the monotonic time of the kill (CLOCK_MONOTONIC is system-wide)."""
    socks = []
    for host, port, _ in targets:
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(b"SUBSCRIBE +elected-leader\r\n")
        socks.append(s)
    for s in socks:
        s.recv(4096)  # the subscribe confirmation
    print("ready", flush=True)
    buffers = [b""] * len(socks)
    while True:
        ready, _, _ = select.select(socks, [], [], 60)
        if not ready:
            print(json.dumps({"killed": None}), flush=True)
            return
        for s in ready:
            i = socks.index(s)
            buffers[i] += s.recv(4096)
            if b"epoch=" in buffers[i]:
                os.killpg(targets[i][2], signal.SIGKILL)
                at = time.monotonic()
                text = buffers[i].decode("utf-8", "replace")
                epoch = int(text.split("epoch=")[1].split()[0])
                print(json.dumps({"killed": i, "epoch": epoch, "at": at}), flush=True)
                return


def role_of(node: Service) -> str | None:
    with contextlib.suppress(Exception):
        return str(repl_info(node).get("role"))
    return None


async def test_a_leader_killed_mid_failover_is_replaced_under_a_higher_epoch(
    procs: Services, tmp_path: Path
) -> None:
    def body() -> None:
        cluster = semi_shard_under_sentinels(
            procs, tmp_path, proxies=2, failover_timeout_ms=FAILOVER_TIMEOUT_MS
        )
        for i in range(2):
            r = cluster.proxy_client(i)()
            wait_until(partial(r.set, "ready", 1), 15, "proxy ready")
        shard = cluster.shards["semi"]
        rounds: list[str] = []
        replaced: list[tuple[int, int, float]] = []  # (dead leader's epoch, new epoch, seconds)
        with contextlib.ExitStack() as stack:
            loads: list[Workload] = []
            for i in range(2):
                loads.append(stack.enter_context(
                    workload(cluster.proxy_client(i, timeout=3), writers=2, pace=0.005,
                             name=f"p{i}-", read=i == 0,
                             probe_nodes=cluster.probe_nodes() if i == 0 else None)
                ))  # fmt: skip
            time.sleep(1.0)
            for n in range(ROUNDS):
                targets = []
                for s in cluster.sentinels:
                    host, port = s.address.rsplit(":", 1)
                    targets.append(f"{host}:{port}:{s.pid}")
                watcher = subprocess.Popen(
                    [sys.executable, "-m", "tests.faults.test_leader_killed", *targets],
                    cwd=ROOT, stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                try:
                    assert watcher.stdout is not None
                    assert watcher.stdout.readline().strip() == "ready"
                    old = shard.primary
                    old.kill()
                    killed_at = time.monotonic()
                    verdict = json.loads(watcher.stdout.readline())
                finally:
                    watcher.kill()
                    watcher.wait(5)
                assert verdict["killed"] is not None, "no sentinel was elected"
                dead = cluster.sentinels[verdict["killed"]]
                wait_until(lambda dead=dead: not dead.running, 5, "the leader is dead")
                # what the leader had done by then: a replica promoted under its epoch?
                promoted = [r.name for r in shard.replicas
                            if repl_info(r).get("shardgate_epoch") == verdict["epoch"]
                            and role_of(r) == "master"]  # fmt: skip
                new = cluster.wait_failover("semi", FAILOVER_TIMEOUT_MS / 1000 * 3 + 20)
                switched = time.monotonic() - killed_at
                epoch = int(str(repl_info(new)["shardgate_epoch"]))
                history = json.loads(
                    next(s for s in cluster.sentinels if s.running)
                    .client(timeout=2)
                    .execute_command("SG.HISTORY", "json")
                )
                record = next(h for h in history if h["epoch"] == epoch and h["outcome"] == "done")
                # the dead leader's last words: how far into the failover it got
                last = [w.split()[3] for w in dead.output if w[:4].isdigit()][-2:]
                line = (
                    f"round {n + 1}: {dead.name} elected under epoch {verdict['epoch']} killed "
                    f"{(verdict['at'] - killed_at):.2f}s after the primary; its last events "
                    f"{last}; a replica primary under its epoch: {promoted or 'none'}; "
                    f"{record['leader']} published {new.name} under "
                    f"epoch {epoch}, {switched:.2f}s after the primary's kill"
                )
                rounds.append(line)
                print(line)
                # the dead sentinel and the old primary come back before anything else
                dead.start()
                old.restart()
                wait_until(lambda old=old, new=new: repl_info(old).get("master_port") == new.port
                           and repl_info(old).get("master_link_status") == "up", 30,
                           f"{old.name} rejoins")  # fmt: skip
                if record["leader"] != dead.name:
                    assert epoch > verdict["epoch"], (epoch, verdict)
                    replaced.append((verdict["epoch"], epoch, switched))
                    break
                # the leader had published before it died: nothing left to take over; again
                assert epoch == verdict["epoch"]
                time.sleep(1.0)
            time.sleep(1.0)
        final = shard.primary
        final_epoch = int(str(repl_info(final)["shardgate_epoch"]))
        roles = {n.name: role_of(n) for n in shard.nodes}
        for i, proxy in enumerate(cluster.proxies):
            wait_until(
                lambda proxy=proxy: (
                    int(proxy.client(timeout=1).info("topology")["epoch"]) == final_epoch
                ),
                10,
                f"proxy{i} at epoch {final_epoch}",
            )
            topo = proxy.client(timeout=1).info("topology")
            assert topo["shard0"]["primary"] == final.address, topo
        writers = [w for load in loads for w in load.writers]
        report = check(writers, cluster.topology(), cluster.primaries(), cluster.durability(),
                       reader=loads[0].reader, probe=loads[0].probe)  # fmt: skip
        print(
            f"scenario 5 (leader kill -9ed on +elected-leader, failover timeout "
            f"{FAILOVER_TIMEOUT_MS} ms): {len(rounds)} round(s); taken over: "
            f"{[f'epoch {a} -> {b} after {t:.2f}s' for a, b, t in replaced]}; final primary "
            f"{final.name} at epoch {final_epoch}, roles {roles}, both proxies on it; "
            f"{report.summary()}"
        )
        assert replaced, "every kill landed after the leader had published:\n" + "\n".join(rounds)
        assert sorted(roles.values()) == ["master", "slave", "slave"], roles
        assert report.lost_in("semi-sync") == 0, report.examples

    try:
        with trio.fail_after(240):
            await in_thread(body)
            print(procs.check_survivors())  # every process the test did not end
    finally:  # the processes' own account, for a failure or the docs
        for service in procs.all:
            (tmp_path / f"{service.name}.log").write_text("".join(service.output))
        print(f"logs in {tmp_path}")


if __name__ == "__main__":
    watch_and_kill(
        [(h, int(p), int(pid)) for h, p, pid in (t.rsplit(":", 2) for t in sys.argv[1:])]
    )
