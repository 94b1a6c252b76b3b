"""The command line: bad configs are refused clearly; workers share a port; metrics are served."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import trio

from tests.proxy.conftest import ROOT, Proxy, backends, free_port
from tests.proxy.test_integration import blocking


def run_proxy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_bad_configs_are_refused_with_a_message(tmp_path: Path) -> None:
    bad = tmp_path / "c.toml"
    bad.write_text('[[shards]]\nname = "a"\nprimary = "127.0.0.1:1"\nslots = ["0-10"]\n')
    result = run_proxy("--config", str(bad))
    assert result.returncode == 2 and "not owned by any shard" in result.stderr
    result = run_proxy()
    assert result.returncode == 2 and "--config" in result.stderr
    result = run_proxy("--backends", "nohost")
    assert result.returncode == 2 and "host:port" in result.stderr


def _two_free_ports(avoid: int) -> int:
    """A port P with P + 1 free too (worker i serves metrics on P + i)."""
    while True:
        port = free_port()
        if avoid in (port, port + 1):
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


async def test_workers_share_the_port_and_serve_metrics() -> None:
    with backends("redis", 2) as bs:
        proxy = Proxy("--backends", ",".join(b.address for b in bs), "--workers", "2")
        metrics_port = _two_free_ports(avoid=proxy.port)
        proxy.args += ("--metrics-port", str(metrics_port))
        proxy.start()
        try:

            def body() -> set[int]:
                pids: set[int] = set()
                deadline = time.monotonic() + 10  # the second worker may still be starting
                i = 0
                while len(pids) < 2 and time.monotonic() < deadline:
                    r = proxy.client()
                    assert r.set(f"w{i}", i)
                    pids.add(int(r.info("server")["process_id"]))
                    r.close()
                    i += 1
                return pids

            with trio.fail_after(30):
                pids = await blocking(body)
                assert len(pids) == 2  # SO_REUSEPORT spread the connections
                text = await blocking(_metrics, metrics_port)
                assert "shardgate_proxy_commands_total" in text
                assert "shardgate_proxy_backend_up" in text
                assert "shardgate_proxy_topology_epoch 1.0" in text
        finally:
            proxy.stop()
