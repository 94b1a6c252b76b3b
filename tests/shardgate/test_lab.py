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
    """The default lab is issue 6's cluster: 3 x (primary + replica), 3 sentinels, 2 proxies."""
    plan = plan_lab(LabConfig(directory="/x", python="py"))
    assert [p.name for p in plan.processes] == [
        "node0", "node0-1", "node1", "node1-1", "node2", "node2-1",
        "sentinel0", "sentinel1", "sentinel2", "proxy0", "proxy1",
    ]  # fmt: skip
    for i in range(2):
        proxy = plan.by_name(f"proxy{i}")
        assert (proxy.role, proxy.shard, proxy.port, proxy.metrics_port) == (
            "proxy", None, 7000 + i, 8000 + i,
        )  # fmt: skip
        assert proxy.argv[:4] == ("py", "-m", "shardgate", "proxy")
        assert _opt(proxy.argv, "--config") == "/x/cluster.toml"
        assert _opt(proxy.argv, "--name") == f"proxy{i}"
    for i in range(3):
        node = plan.by_name(f"node{i}")
        assert (node.role, node.shard) == ("primary", f"shard{i}")
        assert (node.port, node.metrics_port) == (7100 + 2 * i, 8100 + 2 * i)
        assert node.argv == ("py", "-m", "shardgate", "node", "--config", f"/x/node{i}.toml")
        assert node.log == f"node{i}.log"
        replica = plan.by_name(f"node{i}-1")
        assert (replica.role, replica.shard, replica.port) == ("replica", f"shard{i}", 7101 + 2 * i)
        s = plan.by_name(f"sentinel{i}")
        assert (s.role, s.port, s.metrics_port) == ("sentinel", 7050 + i, 8050 + i)
    files = dict(plan.files)
    assert sorted(files) == sorted(
        ["cluster.toml", "targets.json"]
        + [f"node{i}{r}.toml" for i in range(3) for r in ("", "-1")]
        + [f"sentinel{i}.toml" for i in range(3)]
    )
    # the proxies follow the sentinels; the nodes wait for the sentinels to assign roles
    cluster = tomllib.loads(files["cluster.toml"])
    assert cluster == {"sentinels": ["127.0.0.1:7050", "127.0.0.1:7051", "127.0.0.1:7052"]}
    node = tomllib.loads(files["node1-1.toml"])
    assert node["managed"] is True and node["replicaof"] == "127.0.0.1:7102"
    assert (node["host"], node["port"], node["metrics_port"]) == ("127.0.0.1", 7103, 8103)


def _opt(argv: tuple[str, ...], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_static_lab_cluster_toml_covers_every_slot_once() -> None:
    plan = plan_lab(LabConfig(directory="/x", shards=3, replicas=1, sentinels=0, base_port=9000))
    files = dict(plan.files)
    assert "managed" not in files["node0.toml"]  # no sentinel would ever assign a role
    data = tomllib.loads(files["cluster.toml"])
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
    from shardgate.topology import Topology  # the proxy's own reader

    topo = Topology.from_dict(data)
    assert [s.name for s in topo.shards] == ["shard0", "shard1", "shard2"]


def test_plan_replicas_and_redis_nodes() -> None:
    plan = plan_lab(
        LabConfig(
            directory="/d", shards=2, replicas=2, sentinels=0, node_kind="redis", proxy_kind="none"
        )
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
    assert [f[0] for f in plan.files] == ["cluster.toml"]  # redis-server takes flags


def test_plan_nutcracker_stand_in() -> None:
    config = LabConfig(
        directory="/d", shards=2, sentinels=0, proxy_kind="nutcracker", base_port=7500
    )
    plan = plan_lab(config)
    files = dict(plan.files)
    for i in range(2):
        yml = files[f"proxy{i}.nutcracker.yml"]
        for line in (f"listen: 127.0.0.1:{7500 + i}", "hash: fnv1a_64", "distribution: ketama"):
            assert line in yml
        assert "redis: true" in yml and "auto_eject_hosts: false" in yml
        assert "- 127.0.0.1:7600:1 s0" in yml and "- 127.0.0.1:7602:1 s1" in yml
        assert plan.by_name(f"proxy{i}").argv == (
            "nutcracker", "-c", f"/d/proxy{i}.nutcracker.yml", "-s", str(8500 + i),
            "-a", "127.0.0.1",
        )  # fmt: skip


def test_plan_sentinels() -> None:
    plan = plan_lab(
        LabConfig(directory="/d", shards=2, replicas=1, sentinels=3, proxies=1, python="py")
    )
    names = [p.name for p in plan.processes]
    assert names[-4:] == ["sentinel0", "sentinel1", "sentinel2", "proxy0"]
    s1 = plan.by_name("sentinel1")
    assert (s1.role, s1.shard, s1.port, s1.metrics_port) == ("sentinel", None, 7051, 8051)
    assert s1.argv == (
        "py", "-m", "shardgate", "sentinel", "run", "--config", "/d/sentinel1.toml",
        "--metrics-port", "8051",
    )  # fmt: skip
    config = tomllib.loads(dict(plan.files)["sentinel1.toml"])
    assert (config["id"], config["listen"], config["quorum"]) == ("sentinel1", "127.0.0.1:7051", 2)
    assert config["down_after_ms"] == lab.SENTINEL_DOWN_AFTER_MS
    assert config["state_file"] == "sentinel1.state"  # next to its config: the lab directory
    assert [p["id"] for p in config["peers"]] == ["sentinel0", "sentinel2"]
    assert [(s["name"], s["primary"], s["replicas"]) for s in config["shards"]] == [
        ("shard0", "127.0.0.1:7100", ["127.0.0.1:7101"]),
        ("shard1", "127.0.0.1:7102", ["127.0.0.1:7103"]),
    ]
    from sentinel.config import parse_config  # the sentinel's own reader

    assert parse_config(config).quorum == 2
    with pytest.raises(LabError, match="shardgate nodes"):
        LabConfig(sentinels=3, node_kind="redis")
    assert plan_lab(LabConfig(sentinels=5, proxies=0)).by_name("sentinel4").port == 7054


def test_plan_with_os_assigned_ports() -> None:
    config = LabConfig(directory="/d", shards=2, replicas=0, sentinels=1, proxies=1, base_port=0)
    assert lab.ports_needed(config) == 8
    plan = plan_lab(config, ports=[11, 12, 13, 14, 21, 22, 23, 24])
    assert [(p.name, p.port, p.metrics_port) for p in plan.processes] == [
        ("node0", 11, 21),
        ("node1", 12, 22),
        ("sentinel0", 13, 23),
        ("proxy0", 14, 24),
    ]
    assert tomllib.loads(dict(plan.files)["cluster.toml"]) == {"sentinels": ["127.0.0.1:13"]}
    with pytest.raises(LabError, match="need 8 ports"):
        plan_lab(config, ports=[1, 2])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shards": 0},
        {"replicas": -1},
        {"base_port": 80},
        {"proxy_workers": 0},
        {"sentinels": 10},
        {"proxies": 51},
    ],
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
        assert ("proxy0: redis-cli -p " in result.stdout) == expect_proxy
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
    args = ("--shards", "3", "--replicas", "0", "--sentinels", "0", "--proxies", "1")
    args += ("--node-command", node_kind, "--proxy-command", proxy_kind)
    with _running_lab(directory, *args) as status:
        # status --json: exactly the promised fields, one row per process
        assert sorted(status) == ["node0", "node1", "node2", "proxy0"]
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
        assert status["proxy0"]["role"] == "proxy" and status["proxy0"]["shard"] is None
        assert {status[f"node{i}"]["shard"] for i in range(3)} == {"shard0", "shard1", "shard2"}
        assert all(status[f"node{i}"]["role"] == "primary" for i in range(3))
        assert (directory / "cluster.toml").exists() and (directory / "node0.log").exists()

        # the proxy endpoint serves SET/GET for keys on every shard
        # nutcracker closes the connection on HELLO and CLIENT SETINFO: plain RESP2 for it
        quirks: dict[str, Any] = (
            {"protocol": 2, "driver_info": None} if proxy_kind == "nutcracker" else {}
        )
        client = redis.Redis(port=status["proxy0"]["port"], socket_timeout=5, **quirks)
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
            "--replicas",
            "0",
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
        directory=str(tmp_path),
        shards=2,
        replicas=0,
        sentinels=0,
        base_port=0,
        node_kind="redis",
        proxy_kind="none",
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
        sentinels=0,  # not managed: roles are the ones the nodes start with
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


def _sentinel_status(ports: list[int]) -> dict[str, Any]:
    """`shardgate sentinel status --json` from the first sentinel that answers (any one will do:
    they converge on the same topology)."""
    errors = []
    for port in ports:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "shardgate",
                "sentinel",
                "status",
                "--port",
                str(port),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            cwd=ROOT,
            check=False,
        )
        if result.returncode == 0:
            status: dict[str, Any] = json.loads(result.stdout)
            return status
        errors.append(f"{port}: {result.stderr.strip()}")
    raise AssertionError("no sentinel answered `sentinel status`: " + "; ".join(errors))


def _no_failover(directory: Path, shard: dict[str, Any]) -> str:
    """The failure message: the shard's status, and which sentinels died, with their logs."""
    dead = [n for n, r in _status(directory).items() if r["role"] == "sentinel" and not r["alive"]]
    lines = [f"no failover in sentinel status: {shard}", f"dead sentinels: {dead or 'none'}"]
    for name in dead:
        lines.append(f"--- {name}.log:\n{lab.log_tail(directory / f'{name}.log', 8)}")
    return "\n".join(lines)


def _writes_everywhere(port: int, tag: str) -> bool:
    """SET then GET a key on every shard through the proxy on ``port``; False on any error."""
    client = redis.Redis(port=port, socket_timeout=2)
    try:
        for shard, key in SHARD_KEYS.items():
            value = f"{tag}:{shard}"
            if not client.set(key, value) or client.get(key) != value.encode():
                return False
        return True
    except redis.RedisError:
        return False
    finally:
        client.close()


SHARD_KEYS: dict[str, str] = {}  # shard name -> a key it owns (filled by the test)


def _keys_per_shard(shards: int) -> dict[str, str]:
    from shardgate.slots import slot_for_key

    ranges = lab.slot_ranges(shards)
    out: dict[str, str] = {}
    i = 0
    while len(out) < shards:
        key = f"lab-test:{i}"
        slot = slot_for_key(key.encode())
        shard = next(n for n, (lo, hi) in enumerate(ranges) if lo <= slot <= hi)
        out.setdefault(f"shard{shard}", key)
        i += 1
    return out


def test_default_cluster_fails_over_and_down_leaves_nothing(tmp_path: Path) -> None:
    """Issue 6's done-when, as a user runs it: `lab up` (no options: 3 x (primary + replica),
    3 sentinels, 2 proxies following them), SET/GET through each proxy, `lab kill` a primary ->
    `sentinel status` shows the new primary under a bumped epoch and both proxies write to it,
    the old primary rejoins as a replica, and `lab down` leaves no process behind."""
    reason = _missing("shardgate", "shardgate")
    if reason is None and importlib.util.find_spec("sentinel.cli") is None:
        reason = "the shardgate sentinel (sentinel/cli.py) does not exist yet"
    if reason:
        pytest.skip(reason)
    SHARD_KEYS.update(_keys_per_shard(3))
    directory = tmp_path / "lab"
    pids: list[int] = []
    try:
        result = _lab("up", "--dir", str(directory), "--base-port", "0")
        assert result.returncode == 0, f"lab up failed:\n{result.stdout}\n{result.stderr}"
        status = _status(directory)
        pids = [row["pid"] for row in status.values()]
        assert {n: (r["role"], r["shard"]) for n, r in status.items()} == {
            "node0": ("primary", "shard0"), "node0-1": ("replica", "shard0"),
            "node1": ("primary", "shard1"), "node1-1": ("replica", "shard1"),
            "node2": ("primary", "shard2"), "node2-1": ("replica", "shard2"),
            "sentinel0": ("sentinel", None), "sentinel1": ("sentinel", None),
            "sentinel2": ("sentinel", None), "proxy0": ("proxy", None), "proxy1": ("proxy", None),
        }  # fmt: skip
        # every endpoint printed, proxies first, then sentinels
        endpoints = [ln.split(":")[0] for ln in result.stdout.splitlines() if "redis-cli -p" in ln]
        assert endpoints == ["proxy0", "proxy1", "sentinel0", "sentinel1", "sentinel2"]
        for name in endpoints:
            assert f"{name}: redis-cli -p {status[name]['port']}" in result.stdout

        # `up` returned only once the cluster settled: both proxies write at once, everywhere
        proxies = [status["proxy0"]["port"], status["proxy1"]["port"]]
        for port in proxies:
            assert _writes_everywhere(port, f"before:{port}")
        client = redis.Redis(port=proxies[0], socket_timeout=5)
        try:  # one proxy reads what the other wrote
            assert client.get(SHARD_KEYS["shard0"]) == f"before:{proxies[1]}:shard0".encode()
        finally:
            client.close()

        sentinels = [status[f"sentinel{i}"]["port"] for i in range(3)]
        before = _sentinel_status(sentinels)
        epoch = before["topology_epoch"]
        shard0 = next(s for s in before["shards"] if s["name"] == "shard0")
        assert shard0["primary"]["address"] == f"127.0.0.1:{status['node0']['port']}"

        # the drill: kill shard0's primary; the sentinels promote node0-1 under a new epoch
        assert _lab("kill", "node0", "--dir", str(directory)).returncode == 0
        assert _gone(status["node0"]["pid"])
        new_primary = f"127.0.0.1:{status['node0-1']['port']}"
        # down-after is 1 s in the lab and a failover takes ~0.1 s more; a split vote (rare)
        # is retried after the lab's 3 s failover timeout.
        deadline = time.monotonic() + 20
        while True:
            after = _sentinel_status(sentinels)
            shard0 = next(s for s in after["shards"] if s["name"] == "shard0")
            if shard0["primary"]["address"] == new_primary and after["topology_epoch"] > epoch:
                break
            assert time.monotonic() < deadline, _no_failover(directory, shard0)
            time.sleep(0.2)
        assert shard0["last_failover"] is not None
        assert _status(directory)["node0-1"]["role"] == "primary"

        # both proxies follow: writes to every shard work again (through the new primary)
        deadline = time.monotonic() + 10
        for port in proxies:
            while not _writes_everywhere(port, f"after:{port}"):
                assert time.monotonic() < deadline, f"proxy on {port} did not follow the failover"
                time.sleep(0.2)

        # the old primary comes back as a replica of the new one
        assert _lab("start", "node0", "--dir", str(directory)).returncode == 0
        pids.append(_status(directory)["node0"]["pid"])
        deadline = time.monotonic() + 15
        while _status(directory)["node0"]["role"] != "replica":
            assert time.monotonic() < deadline, "node0 did not rejoin as a replica"
            time.sleep(0.2)

        # down: every process (and anything it forked) is gone, and the state file too
        pids = [row["pid"] for row in _status(directory).values()]
        down = _lab("down", "--dir", str(directory))
        assert down.returncode == 0, down.stderr
        assert all(_gone(pid) for pid in pids), [p for p in pids if not _gone(p)]
        assert all(not lab.group_members(pid) for pid in pids)
        assert not (directory / "state.json").exists()
    finally:
        with contextlib.suppress(Exception):
            _lab("down", "--dir", str(directory), "--grace", "2")
        for pid in pids:
            if not _gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    "stop", [signal.SIGINT, signal.SIGKILL, None], ids=["ctrl-c", "kill-9", "lab-down-elsewhere"]
)
def test_foreground_lab_leaves_nothing_behind(tmp_path: Path, stop: signal.Signals | None) -> None:
    """`make lab` is `lab up --foreground`: it prints the endpoints, stays attached, and on
    Ctrl-C stops the lab; even a `kill -9` of it takes every process with it (PDEATHSIG)."""
    reason = _missing("shardgate", "shardgate")
    if reason:
        pytest.skip(reason)
    directory = tmp_path / "lab"
    args = ["up", "--foreground", "--dir", str(directory), "--base-port", "0", "--shards", "1"]
    fg = subprocess.Popen(
        [sys.executable, "-m", "shardgate", "lab", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    pids: list[int] = []
    try:
        assert fg.stdout is not None
        out = []
        deadline = time.monotonic() + CLI_TIMEOUT
        for line in fg.stdout:  # until it says it is up (or exits)
            out.append(line)
            if line.startswith("running in the foreground"):
                break
            assert time.monotonic() < deadline
        text = "".join(out)
        assert "proxy0: redis-cli -p " in text and "sentinel2: redis-cli -p " in text, text
        status = _status(directory)
        pids = [row["pid"] for row in status.values()]
        assert len(pids) == 7 and all(row["alive"] for row in status.values())
        client = redis.Redis(port=status["proxy1"]["port"], socket_timeout=5)
        try:
            assert client.set("fg", "1") and client.get("fg") == b"1"
        finally:
            client.close()
        if stop is None:  # `lab down` from another shell: the foreground runner exits too
            _lab("down", "--dir", str(directory))
        else:
            fg.send_signal(stop)
        fg.wait(timeout=30)
        deadline = time.monotonic() + 10
        while not all(_gone(pid) for pid in pids):
            assert time.monotonic() < deadline, [p for p in pids if not _gone(p)]
            time.sleep(0.05)
        if stop in (signal.SIGINT, None):
            assert fg.returncode == 0
            assert not (directory / "state.json").exists()
    finally:
        if fg.poll() is None:
            fg.kill()
            fg.wait(timeout=10)
        if fg.stdout is not None:
            fg.stdout.close()
        for pid in pids:
            if not _gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
