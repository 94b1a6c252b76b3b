"""A proxy following real sentinels over a real cluster: failover, blackout, replica reads.

3 sentinels, 2 shards of (primary + 1 replica) ``--managed`` nodes, and proxies started with
``--sentinels`` and no slot map of their own. Every wait has a hard deadline; every process is
stopped by ``tests.procs.running`` (SIGCONT first, so a SIGSTOPped node is stopped too).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import redis

from shardgate.slots import slot_for_key
from tests.procs import (
    ROOT,
    Proc,
    free_port,
    running,
    wait_until,
)

pytestmark = pytest.mark.slow

DOWN_AFTER_MS = 1000  # the benchmark setting


def key_on(shard: int, prefix: str = "k") -> str:
    """A key of shard-0 (slots 0-8191) or shard-1 (8192-16383): the sentinels split evenly."""
    i = 0
    while (slot_for_key(f"{prefix}{i}".encode()) >= 8192) != (shard == 1):
        i += 1
    return f"{prefix}{i}"


def info(port: int, section: str = "replication") -> dict[str, object]:
    return redis.Redis(port=port, socket_timeout=1).info(section)  # type: ignore[no-any-return]


@attrs.define
class Cluster:
    stack: contextlib.ExitStack
    shards: list[list[int]]  # per shard: [primary port, replica port]
    sentinel_ports: list[int]
    nodes: dict[int, Proc]
    sentinels: list[Proc]

    def primary_of(self, shard: int) -> int:
        for port in self.shards[shard]:
            proc = self.nodes.get(port)
            if proc is not None and proc.popen.poll() is None:
                with contextlib.suppress(redis.RedisError):
                    if info(port)["shardgate_role"] == "primary":
                        return port
        raise AssertionError(f"shard-{shard} has no primary")

    def replica_of(self, shard: int) -> int:
        primary = self.primary_of(shard)
        return next(p for p in self.shards[shard] if p != primary)

    def proxy(self, *extra: str) -> Proc:
        sentinels = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        args = ["proxy", "--port", str(free_port()), "--sentinels", sentinels, *extra]
        return self.stack.enter_context(running(args))

    def explain_dead_sentinels(self) -> None:
        """No failover without a majority of sentinels: when they died, say so plainly."""
        dead = [p for p in self.sentinels if p.popen.poll() is not None]
        if dead:
            logs = "\n".join("".join(p.output[-5:]) for p in dead)
            raise AssertionError(
                f"{len(dead)} of {len(self.sentinels)} sentinels exited during the failover:\n"
                + logs
            )

    def kill(self, port: int) -> None:
        proc = self.nodes.pop(port)
        os.kill(proc.pid, signal.SIGKILL)
        proc.popen.wait(5)


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports from the OS (held open together, so none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


@contextlib.contextmanager
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with contextlib.ExitStack() as stack:
        ports = free_ports(7)
        shards = [ports[0:2], ports[2:4]]
        sentinel_ports = ports[4:7]
        sentinels: list[Proc] = []
        nodes = {
            port: stack.enter_context(running(["node", "--port", str(port), "--managed"]))
            for ports in shards
            for port in ports
        }
        shard_toml = "".join(
            f'[[shards]]\nname = "shard-{i}"\nprimary = "127.0.0.1:{p}"\n'
            f'replicas = [{{ address = "127.0.0.1:{r}" }}]\n'
            for i, (p, r) in enumerate(shards)
        )
        for i, port in enumerate(sentinel_ports):
            peers = "".join(
                f'[[peers]]\nid = "s{j}"\naddress = "127.0.0.1:{q}"\n'
                for j, q in enumerate(sentinel_ports)
                if j != i
            )
            path = tmp_path / f"s{i}.toml"
            path.write_text(
                f'id = "s{i}"\nlisten = "127.0.0.1:{port}"\nquorum = 2\n'
                f"down_after_ms = {DOWN_AFTER_MS}\nfailover_timeout_ms = 3000\n"
                f'state_file = "{tmp_path / f"s{i}.state"}"\n{peers}{shard_toml}'
            )
            sentinels.append(
                stack.enter_context(running(["sentinel", "run", "--config", str(path)]))
            )
        for p, r in shards:
            wait_until(lambda p=p: info(p)["shardgate_role"] == "primary", 15, "primaries")
            wait_until(lambda r=r: info(r)["master_link_status"] == "up", 15, "replicas linked")
        c = Cluster(stack, shards, sentinel_ports, nodes, sentinels)
        try:
            yield c
        except BaseException:
            for proc in sentinels:
                if proc.popen.poll() is not None:
                    print(f"sentinel on {proc.port} exited:", "".join(proc.output[-30:]))
            raise


def sentinel_status(port: int) -> dict[str, object]:
    """``shardgate sentinel status --json``, as an operator runs it."""
    out = subprocess.run(
        [sys.executable, "-m", "shardgate", "sentinel", "status", "--json", "--port", str(port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=10,
    )
    if out.returncode != 0:
        raise OSError(f"sentinel status failed: {out.stderr.strip()}")
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_proxy_follows_sentinels_through_primary_kills(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        proxy = c.proxy("--name", "proxy-a", "--timeout-ms", "500")
        r = redis.Redis(port=proxy.port, socket_timeout=2)
        # learned from the sentinels: the proxy has no slot map of its own
        for shard in (0, 1):
            assert r.set(key_on(shard), "before")
            assert redis.Redis(port=c.primary_of(shard)).get(key_on(shard)) == b"before"
        epoch0 = int(r.info("topology")["epoch"])
        # the epoch it routes by, in the inspection CLI of every sentinel
        for port in c.sentinel_ports:
            wait_until(
                lambda port=port: sentinel_status(port)["proxies"].get("proxy-a") == epoch0,  # type: ignore[attr-defined]
                5,
                "SG.PROXYEPOCH in sentinel status",
            )
        blackouts = []
        for shard in (0, 1):
            old = c.primary_of(shard)
            key = key_on(shard, "w")
            killed_at = time.monotonic()
            c.kill(old)

            def write(key: str = key) -> bool:
                return bool(redis.Redis(port=proxy.port, socket_timeout=1).set(key, "after"))

            try:
                wait_until(write, 15, f"a write to shard-{shard} after the kill")
            except AssertionError:
                c.explain_dead_sentinels()
                print("".join(proxy.output[-40:]))
                raise
            blackout = time.monotonic() - killed_at
            blackouts.append(blackout)
            new = c.primary_of(shard)
            assert new != old
            assert redis.Redis(port=new).get(key) == b"after"
            print(f"\nblackout shard-{shard}: kill -9 -> first acked write through the proxy: "
                  f"{blackout * 1000:.0f} ms (down_after_ms={DOWN_AFTER_MS})")  # fmt: skip
        topo = r.info("all")
        assert int(topo["epoch"]) >= epoch0 + 2
        assert topo["topologies_adopted"] >= 3
        assert r.get(key_on(0)) == b"before"  # replicated before the kill
        for proc, port in zip(c.sentinels, c.sentinel_ports):
            assert proc.popen.poll() is None, "".join(proc.output[-5:])
            try:
                wait_until(
                    lambda port=port: (
                        sentinel_status(port)["proxies"].get("proxy-a") == topo["epoch"]
                    ),  # type: ignore[attr-defined]
                    5,
                    "the new epoch reported",
                )
            except AssertionError:
                print(port, topo["epoch"], r.info("sentinels"))
                print("".join(proxy.output[-30:]))
                raise
        assert max(blackouts) < 10


def test_replica_reads_and_lagging_replicas_are_skipped(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        strict = c.proxy("--read-from", "replica", "--max-replica-lag-ms", "500")
        prefer = c.proxy("--read-from", "prefer_replica", "--max-replica-lag-ms", "500")
        rs = redis.Redis(port=strict.port, socket_timeout=2)
        rp = redis.Redis(port=prefer.port, socket_timeout=2)
        key = key_on(0)
        primary, replica = c.primary_of(0), c.replica_of(0)
        assert rs.set(key, "v")  # writes go to the primary

        def gets(port: int) -> int:
            stats = info(port, "commandstats").get("cmdstat_get", {"calls": 0})
            return int(stats["calls"])  # type: ignore[index]

        # the replica has caught up and the proxy has measured it: reads are served there
        for r in (rs, rp):
            wait_until(
                lambda r=r: r.info("replicas")["shard-0_replica0"]["eligible"] == 1,  # type: ignore[index]
                5,
                "the replica measured and eligible",
            )
        before_r, before_p = gets(replica), gets(primary)
        for _ in range(50):
            assert rs.get(key) == b"v"
            assert rp.get(key) == b"v"
        assert gets(replica) - before_r == 100
        assert gets(primary) == before_p
        assert rs.mget(key, key) == [b"v", b"v"]
        assert rs.info("replicas")["shard-0_reads"]["replica"] >= 51  # type: ignore[index]
        # SIGSTOP the replica: its lag bound grows past 500 ms and it is skipped
        os.kill(c.nodes[replica].pid, signal.SIGSTOP)
        try:
            for r in (rs, rp):
                wait_until(
                    lambda r=r: r.info("replicas")["shard-0_replica0"]["eligible"] == 0,  # type: ignore[index]
                    5,
                    "the stopped replica skipped",
                )
            with pytest.raises(redis.ResponseError, match="no replica of shard shard-0"):
                rs.get(key)
            before_p = gets(primary)
            assert rp.get(key) == b"v"  # prefer_replica falls back to the primary
            assert gets(primary) == before_p + 1
            assert rs.get(key_on(1)) is None  # the other shard's replica still serves
        finally:
            os.kill(c.nodes[replica].pid, signal.SIGCONT)
        wait_until(lambda: rs.get(key) == b"v", 5, "the replica eligible again")
        metrics = rs.info("all")
        assert metrics["write_retries"] == 0
