"""The lab runner: pure planning, then real processes started through `shardgate lab`.

The integration tests run the lab with stand-ins (stock redis-server nodes behind nutcracker)
whenever those are installed, and with the real shardgate node and proxy once they exist; the
latter skip with a reason until then, so this file tightens by itself.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from shardgate import lab
from shardgate.lab import LabConfig, LabError, NodeKind, plan_lab

ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT = 120  # seconds; a whole `lab up` on a loaded 2-core CI machine stays far below


# --- planning ------------------------------------------------------------------------------------


def test_plan_default_layout() -> None:
    plan = plan_lab(LabConfig(directory="/x", python="py"))
    names = [p.name for p in plan.processes]
    assert names == ["node0", "node1", "node2", "proxy"]
    proxy = plan.by_name("proxy")
    assert (proxy.role, proxy.shard, proxy.port, proxy.metrics_port) == ("proxy", None, 7000, 8000)
    assert proxy.argv[:4] == ("py", "-m", "shardgate", "proxy")
    assert "--config" in proxy.argv and "/x/cluster.toml" in proxy.argv
    for i in range(3):
        node = plan.by_name(f"node{i}")
        assert (node.role, node.shard) == ("primary", f"shard{i}")
        assert (node.port, node.metrics_port) == (7100 + i, 8100 + i)
        assert node.argv[:4] == ("py", "-m", "shardgate", "node")
        assert node.log == f"node{i}.log"
    assert [f[0] for f in plan.files] == ["cluster.toml"]


def test_cluster_toml_covers_every_slot_once() -> None:
    plan = plan_lab(LabConfig(directory="/x", shards=3, replicas=1, base_port=9000))
    data = tomllib.loads(dict(plan.files)["cluster.toml"])
    assert data["epoch"] == 1
    covered: list[int] = []
    for shard in data["shards"]:
        (rng,) = shard["slots"]
        start, end = map(int, rng.split("-"))
        covered.extend(range(start, end + 1))
        assert len(shard["replicas"]) == 1
    assert covered == list(range(16384))
    assert data["shards"][1]["primary"] == "127.0.0.1:9102"
    assert data["shards"][1]["replicas"] == ["127.0.0.1:9103"]
    if importlib.util.find_spec("shardgate.topology") is not None:  # the proxy's own reader
        from shardgate.topology import Topology

        topo = Topology.from_dict(data)
        assert [s.name for s in topo.shards] == ["shard0", "shard1", "shard2"]


def test_plan_replicas_and_redis_nodes() -> None:
    plan = plan_lab(
        LabConfig(directory="/d", shards=2, replicas=2, node_kind="redis", proxy_kind="none")
    )
    assert [p.name for p in plan.processes] == [
        "node0",
        "node0-1",
        "node0-2",
        "node1",
        "node1-1",
        "node1-2",
    ]
    replica = plan.by_name("node1-2")
    assert (replica.role, replica.shard, replica.port) == ("replica", "shard1", 7105)
    assert replica.metrics_port is None  # redis-server has no metrics endpoint
    assert replica.argv[0] == "redis-server"
    assert replica.argv[-3:] == ("--replicaof", "127.0.0.1", "7103")
    assert "--save" in plan.by_name("node0").argv


def test_plan_nutcracker_stand_in() -> None:
    plan = plan_lab(LabConfig(directory="/d", shards=2, proxy_kind="nutcracker", base_port=7500))
    yml = dict(plan.files)["nutcracker.yml"]
    for line in ("listen: 127.0.0.1:7500", "hash: fnv1a_64", "distribution: ketama"):
        assert line in yml
    assert "redis: true" in yml and "auto_eject_hosts: false" in yml
    assert "- 127.0.0.1:7600:1 s0" in yml and "- 127.0.0.1:7601:1 s1" in yml
    proxy = plan.by_name("proxy")
    assert proxy.argv == ("nutcracker", "-c", "/d/nutcracker.yml", "-s", "8500", "-a", "127.0.0.1")


def test_plan_sentinels() -> None:
    plan = plan_lab(LabConfig(directory="/d", shards=2, replicas=1, sentinels=3, python="py"))
    names = [p.name for p in plan.processes]
    assert names[-4:] == ["proxy", "sentinel0", "sentinel1", "sentinel2"]
    s1 = plan.by_name("sentinel1")
    assert (s1.role, s1.shard, s1.port, s1.metrics_port) == ("sentinel", None, 7051, 8051)
    assert s1.argv == (
        "py", "-m", "shardgate", "sentinel", "run", "--config", "/d/sentinel1.toml",
        "--metrics-port", "8051",
    )  # fmt: skip
    config = tomllib.loads(dict(plan.files)["sentinel1.toml"])
    assert (config["id"], config["listen"], config["quorum"]) == ("sentinel1", "127.0.0.1:7051", 2)
    assert config["state_file"] == "/d/sentinel1.state"
    assert [p["id"] for p in config["peers"]] == ["sentinel0", "sentinel2"]
    assert [(s["name"], s["primary"], s["replicas"]) for s in config["shards"]] == [
        ("shard0", "127.0.0.1:7100", ["127.0.0.1:7101"]),
        ("shard1", "127.0.0.1:7102", ["127.0.0.1:7103"]),
    ]
    if importlib.util.find_spec("sentinel.config") is not None:  # the sentinel's own reader
        from sentinel.config import parse_config

        assert parse_config(config).quorum == 2
    with pytest.raises(LabError, match="shardgate nodes"):
        LabConfig(sentinels=3, node_kind="redis")


def test_plan_with_os_assigned_ports() -> None:
    config = LabConfig(directory="/d", shards=2, base_port=0)
    assert lab.ports_needed(config) == 6
    plan = plan_lab(config, ports=[11, 12, 13, 21, 22, 23])
    assert [(p.name, p.port, p.metrics_port) for p in plan.processes] == [
        ("node0", 11, 21),
        ("node1", 12, 22),
        ("proxy", 13, 23),
    ]
    with pytest.raises(LabError, match="need 6 ports"):
        plan_lab(config, ports=[1, 2])


@pytest.mark.parametrize(
    "kwargs",
    [{"shards": 0}, {"replicas": -1}, {"base_port": 80}, {"proxy_workers": 0}],
)
def test_config_rejects_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(LabError):
        LabConfig(**kwargs)


def test_parse_proc_stat_with_awkward_command_name() -> None:
    line = (
        "4242 (a (b) c) T 1 4242 4242 0 -1 4194560 100 0 0 0 "
        "250 75 0 0 20 0 3 0 987654 1000 10 18446744073709551615"
    )
    st = lab.parse_proc_stat(line)
    assert (st.pid, st.state, st.ppid, st.pgrp, st.session) == (4242, "T", 1, 4242, 4242)
    assert (st.utime, st.stime, st.cpu_ticks, st.start_time) == (250, 75, 325, 987654)


def test_parse_own_proc_stat() -> None:
    st = lab.read_proc_stat(os.getpid())
    assert st is not None and st.pid == os.getpid() and st.state in "RS"


def test_port_in_use_and_free_ports() -> None:
    ports = lab.free_ports(3)
    assert len(set(ports)) == 3
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert lab.port_in_use("127.0.0.1", port)
    assert not lab.port_in_use("127.0.0.1", port)


# --- real processes ------------------------------------------------------------------------------


def _missing(node_kind: str, proxy_kind: str) -> str | None:
    """Why this combination cannot run here, or None."""
    if proxy_kind == "shardgate" and importlib.util.find_spec("proxy.cli") is None:
        return "the shardgate proxy (proxy/cli.py) does not exist yet"
    if node_kind == "shardgate" and importlib.util.find_spec("storenode.cli") is None:
        return "the shardgate store node (storenode/cli.py) does not exist yet"
    for kind, binary in ((node_kind, "redis-server"), (proxy_kind, "nutcracker")):
        if kind in ("redis", "nutcracker") and shutil.which(binary) is None:
            return f"{binary} is not installed"
    return None


def _lab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardgate", "lab", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        cwd=ROOT,
        check=False,
    )


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (this container's init does not reap orphans)."""
    st = lab.read_proc_stat(pid)
    return st is None or st.state in "ZX"


def _status(directory: Path) -> dict[str, dict[str, Any]]:
    result = _lab("status", "--dir", str(directory), "--json")
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


@contextlib.contextmanager
def _running_lab(
    directory: Path, *args: str, expect_proxy: bool = True
) -> Iterator[dict[str, dict[str, Any]]]:
    """`lab up` in ``directory``; afterwards `lab down`, and SIGKILL for anything left."""
    pids: list[int] = []
    try:
        result = _lab("up", "--dir", str(directory), "--base-port", "0", *args)
        assert result.returncode == 0, f"lab up failed:\n{result.stdout}\n{result.stderr}"
        assert ("proxy: redis-cli -h 127.0.0.1 -p " in result.stdout) == expect_proxy
        status = _status(directory)
        pids = [row["pid"] for row in status.values()]
        yield status
    finally:
        with contextlib.suppress(Exception):
            _lab("down", "--dir", str(directory), "--grace", "2")
        with contextlib.suppress(Exception):
            state = json.loads((directory / "state.json").read_text())
            pids += [p["pid"] for p in state["processes"]]
        for pid in pids:
            if not _gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


KINDS = [
    pytest.param("redis", "nutcracker", id="redis-nodes+nutcracker"),
    pytest.param("redis", "shardgate", id="redis-nodes+proxy"),
    pytest.param("shardgate", "shardgate", id="nodes+proxy"),
]


@pytest.mark.parametrize(("node_kind", "proxy_kind"), KINDS)
def test_lab_lifecycle(tmp_path: Path, node_kind: str, proxy_kind: str) -> None:
    reason = _missing(node_kind, proxy_kind)
    if reason:
        pytest.skip(reason)
    directory = tmp_path / "lab"
    args = ("--shards", "3", "--node-command", node_kind, "--proxy-command", proxy_kind)
    with _running_lab(directory, *args) as status:
        # status --json: exactly the promised fields, one row per process
        assert sorted(status) == ["node0", "node1", "node2", "proxy"]
        for row in status.values():
            assert set(row) == {
                "name",
                "role",
                "shard",
                "host",
                "port",
                "metrics_port",
                "pid",
                "alive",
            }
            assert row["alive"] is True and row["host"] == "127.0.0.1"
        assert status["proxy"]["role"] == "proxy" and status["proxy"]["shard"] is None
        assert {status[f"node{i}"]["shard"] for i in range(3)} == {"shard0", "shard1", "shard2"}
        assert all(status[f"node{i}"]["role"] == "primary" for i in range(3))
        assert (directory / "cluster.toml").exists() and (directory / "node0.log").exists()

        # the proxy endpoint serves SET/GET for keys on every shard
        # nutcracker closes the connection on HELLO and CLIENT SETINFO: plain RESP2 for it
        quirks: dict[str, Any] = (
            {"protocol": 2, "driver_info": None} if proxy_kind == "nutcracker" else {}
        )
        client = redis.Redis(port=status["proxy"]["port"], socket_timeout=5, **quirks)
        try:
            for i in range(50):
                assert client.set(f"key:{i}", f"value:{i}")
            assert [client.get(f"key:{i}") for i in range(50)] == [
                f"value:{i}".encode() for i in range(50)
            ]
        finally:
            client.close()

        # a second `up` in the same directory refuses
        again = _lab("up", "--dir", str(directory), "--base-port", "0", *args)
        assert again.returncode == 1 and "already running" in again.stderr

        # kill: SIGKILL, reflected in status
        victim = status["node1"]["pid"]
        assert _lab("kill", "node1", "--dir", str(directory)).returncode == 0
        assert _status(directory)["node1"]["alive"] is False
        assert _gone(victim)

        # pause/resume: SIGSTOP/SIGCONT, reflected in status (the table says paused)
        assert _lab("pause", "node2", "--dir", str(directory)).returncode == 0
        paused = lab.read_proc_stat(status["node2"]["pid"])
        assert paused is not None and paused.state == "T"
        table = _lab("status", "--dir", str(directory)).stdout
        assert any(line.startswith("node2") and "paused" in line for line in table.splitlines())
        assert any(line.startswith("node1") and "dead" in line for line in table.splitlines())
        assert _status(directory)["node2"]["alive"] is True
        assert _lab("resume", "node2", "--dir", str(directory)).returncode == 0
        resumed = lab.read_proc_stat(status["node2"]["pid"])
        assert resumed is not None and resumed.state != "T"

        # start: the killed node comes back on its port
        assert _lab("start", "node1", "--dir", str(directory)).returncode == 0
        assert _status(directory)["node1"]["alive"] is True

        unknown = _lab("kill", "nope", "--dir", str(directory))
        assert unknown.returncode == 1 and "no process named 'nope'" in unknown.stderr

        # down, with a node paused: everything goes, the state file too
        assert _lab("pause", "node0", "--dir", str(directory)).returncode == 0
        pids = [row["pid"] for row in _status(directory).values()]
        down = _lab("down", "--dir", str(directory))
        assert down.returncode == 0, down.stderr
        assert all(_gone(pid) for pid in pids), [p for p in pids if not _gone(p)]
        assert not (directory / "state.json").exists()
        assert _lab("down", "--dir", str(directory)).returncode == 0  # safe when nothing runs


def test_down_without_a_lab(tmp_path: Path) -> None:
    result = _lab("down", "--dir", str(tmp_path / "none"))
    assert result.returncode == 0 and "nothing to stop" in result.stdout
    assert _lab("status", "--dir", str(tmp_path / "none"), "--json").stdout.strip() == "[]"


def test_up_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        if port > 63535:
            pytest.skip("the OS handed out a port above the lab's base-port range")
        result = _lab(
            "up",
            "--dir",
            str(tmp_path),
            "--base-port",
            str(port),
            "--node-command",
            "redis",
            "--proxy-command",
            "nutcracker",
        )
    assert result.returncode == 1
    assert "already in use" in result.stderr
    assert not (tmp_path / "state.json").exists()  # nothing was started


def test_failed_start_shows_the_log_and_cleans_up(tmp_path: Path) -> None:
    reason = _missing("redis", "none")
    if reason:
        pytest.skip(reason)
    result = _lab(
        "up",
        "--dir",
        str(tmp_path),
        "--base-port",
        "0",
        "--shards",
        "2",
        "--node-command",
        "redis",
        "--proxy-command",
        "none",
        "--maxmemory",
        "lots",  # redis-server refuses to start with this
    )
    assert result.returncode == 1
    assert "exited before it was ready" in result.stderr
    assert "Last lines of" in result.stderr and "maxmemory" in result.stderr
    assert not (tmp_path / "state.json").exists()


def test_python_api_stops_everything_on_exit(tmp_path: Path) -> None:
    reason = _missing("redis", "none")
    if reason:
        pytest.skip(reason)
    config = LabConfig(
        directory=str(tmp_path), shards=2, base_port=0, node_kind="redis", proxy_kind="none"
    )
    pids: list[int] = []
    try:
        with lab.up(config, die_with_parent=True) as running:
            pids = [r.pid for r in running.records.values()]
            host, port = running.address("node1")
            assert lab.ping(host, port)
            running.pause("node1")
            assert [s.state for s in running.status()] == ["running", "paused"]
            assert not lab.ping(host, port, timeout=0.2)
            running.resume("node1")
            assert lab.ping(host, port)
            running.kill("node0")
            assert not running.is_alive("node0")
            running.restart("node0")
            assert running.is_alive("node0")
            pids.append(running.record("node0").pid)
        assert all(_gone(pid) for pid in pids)
    finally:
        for pid in pids:
            if not _gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


@pytest.mark.parametrize("node_kind", ["redis", "shardgate"])
def test_replicas_report_their_live_role(tmp_path: Path, node_kind: NodeKind) -> None:
    reason = _missing(node_kind, "none")
    if reason:
        pytest.skip(reason)
    config = LabConfig(
        directory=str(tmp_path),
        shards=1,
        replicas=1,
        base_port=0,
        node_kind=node_kind,
        proxy_kind="none",
    )
    pids: list[int] = []
    try:
        with lab.up(config, die_with_parent=True) as running:
            pids = [r.pid for r in running.records.values()]
            roles = {s.name: (s.role, s.shard) for s in running.status()}
            assert roles == {"node0": ("primary", "shard0"), "node0-1": ("replica", "shard0")}
            # promote the replica by hand: status follows the process, not the plan
            host, port = running.address("node0-1")
            assert lab.resp_request(host, port, "REPLICAOF", "NO", "ONE") == b"OK"
            assert {s.name: s.role for s in running.status()}["node0-1"] == "primary"
    finally:
        for pid in pids:
            if not _gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


@pytest.mark.slow
def test_sentinels_fail_over_and_status_follows(tmp_path: Path) -> None:
    reason = _missing("shardgate", "none")
    if reason is None and importlib.util.find_spec("sentinel.cli") is None:
        reason = "the shardgate sentinel (sentinel/cli.py) does not exist yet"
    if reason:
        pytest.skip(reason)
    directory = tmp_path / "lab"
    args = ("--shards", "2", "--replicas", "1", "--sentinels", "3", "--proxy-command", "none")
    with _running_lab(directory, *args, expect_proxy=False) as status:
        assert {n: status[n]["role"] for n in status} == {
            "node0": "primary",
            "node0-1": "replica",
            "node1": "primary",
            "node1-1": "replica",
            "sentinel0": "sentinel",
            "sentinel1": "sentinel",
            "sentinel2": "sentinel",
        }
        port = status["sentinel0"]["port"]
        addr = lab.resp_request("127.0.0.1", port, "SENTINEL", "get-master-addr-by-name", "shard0")
        assert addr == [b"127.0.0.1", str(status["node0"]["port"]).encode()]
        assert _lab("kill", "node0", "--dir", str(directory)).returncode == 0
        deadline = time.monotonic() + 20  # down-after 1 s in the lab; failover takes a few more
        while _status(directory)["node0-1"]["role"] != "primary":
            assert time.monotonic() < deadline, "node0-1 was not promoted"
            time.sleep(0.2)
