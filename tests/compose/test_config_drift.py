"""compose/config holds exactly what shardgate/lab_config.py renders, the local lab runs on the
same renderer, and what it renders is what each role's own config loader accepts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config import ProxyConfig
from shardgate import lab
from shardgate.lab_config import (
    CLUSTER_FILE,
    STATE_DIR,
    TARGETS_FILE,
    LabTopology,
    endpoints,
    main,
    render,
)
from shardgate.topology import NodeAddress, load_topology
from storenode.config import load_node_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_CONFIG = ROOT / "compose" / "config"
REGENERATE = "shardgate lab config --target compose --out compose/config"


def test_committed_compose_configs_match_the_generator() -> None:
    expected = render(LabTopology(), target="compose")
    committed = {p.name: p.read_text() for p in COMPOSE_CONFIG.iterdir() if p.is_file()}
    assert sorted(committed) == sorted(expected), f"files differ; run `{REGENERATE}`"
    for name, text in expected.items():
        assert committed[name] == text, f"compose/config/{name} drifted; run `{REGENERATE}`"


def test_cli_writes_the_same_files(tmp_path: Path) -> None:
    assert main(["--target", "compose", "--out", str(tmp_path)]) == 0
    for path in tmp_path.iterdir():
        assert path.read_text() == (COMPOSE_CONFIG / path.name).read_text()


def test_lab_config_verb_writes_the_committed_files(tmp_path: Path) -> None:
    """`shardgate lab config` (what docs/lab.md and the compose file say to run)."""
    proc = subprocess.run(
        [sys.executable, "-m", "shardgate", "lab", "config", "--target", "compose", "--out",
         str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in COMPOSE_CONFIG.iterdir()
    )
    for path in tmp_path.iterdir():
        assert path.read_text() == (COMPOSE_CONFIG / path.name).read_text(), path.name


@pytest.mark.parametrize(
    "shape",
    [
        {},  # the default cluster: 3 x (primary + replica), 3 sentinels, 2 proxies
        {"shards": 2, "replicas": 2, "sentinels": 0, "proxies": 1, "base_port": 9000},
    ],
)
def test_the_local_lab_runs_on_the_rendered_files(shape: dict[str, int], tmp_path: Path) -> None:
    """One source of truth: `lab up` writes exactly the files `lab config --target local`
    renders, starts every process on them, and names and places processes the same way."""
    config = lab.LabConfig(directory=str(tmp_path), **shape)  # type: ignore[arg-type]
    plan = lab.plan_lab(config)
    topo = config.topology()
    rendered = render(topo, target="local")
    assert dict(plan.files) == rendered
    eps = endpoints(topo)
    assert [(p.name, p.role, p.shard, p.port, p.metrics_port) for p in plan.processes] == [
        (e.name, e.role, e.shard, e.port, e.metrics_port) for e in eps
    ]
    for spec in plan.processes:
        if spec.role == "proxy":
            assert _option(spec.argv, "--config") == str(tmp_path / CLUSTER_FILE)
            assert _option(spec.argv, "--name") == spec.name
        else:
            assert _option(spec.argv, "--config") == str(tmp_path / f"{spec.name}.toml")
    # and compose differs from local only in addresses (and where state and logs go)
    compose = render(topo, target="compose")
    assert sorted(compose) == sorted(rendered)
    for name, text in compose.items():
        local = rendered[name]
        for e, c in zip(eps, endpoints(topo, target="compose"), strict=True):
            text = text.replace(f'"{c.address}"', f'"{e.address}"')
            text = text.replace(f'"{c.host}:{c.metrics_port}"', f'"{e.host}:{e.metrics_port}"')
        text = text.replace(f'"{STATE_DIR}/', '"')
        strip = ("host = ", "announce = ", "listen = ", "log_format = ")
        keep = [ln for ln in text.splitlines() if not ln.lstrip().startswith(strip)]
        want = [ln for ln in local.splitlines() if not ln.lstrip().startswith(strip)]
        assert keep == want, name


def _option(argv: tuple[str, ...], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_default_topology_layout() -> None:
    eps = endpoints(LabTopology(), target="compose")
    by_role: dict[str, list[str]] = {}
    for e in eps:
        by_role.setdefault(e.role, []).append(e.name)
    assert by_role == {
        "primary": ["node0", "node1", "node2"],
        "replica": ["node0-1", "node1-1", "node2-1"],
        "sentinel": ["sentinel0", "sentinel1", "sentinel2"],
        "proxy": ["proxy0", "proxy1"],
    }
    ports = [e.port for e in eps] + [e.metrics_port for e in eps]
    assert len(set(ports)) == len(ports)
    assert {e.name: e.port for e in eps if e.role != "primary" and e.role != "replica"} == {
        "sentinel0": 7050,
        "sentinel1": 7051,
        "sentinel2": 7052,
        "proxy0": 7000,
        "proxy1": 7001,
    }
    for e in eps:
        assert e.metrics_port == e.port + 1000
        assert e.host == e.name  # compose: a service is reached by its name


@pytest.mark.parametrize("target", ["local", "compose"])
def test_rendered_files_load_with_the_roles_loaders(target: str, tmp_path: Path) -> None:
    topo = LabTopology()
    files = render(topo, target=target)  # type: ignore[arg-type]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    eps = {e.name: e for e in endpoints(topo, target=target)}  # type: ignore[arg-type]

    # The proxies' file names the sentinels (they own the topology)...
    settings = ProxyConfig(config_path=str(tmp_path / CLUSTER_FILE)).load_settings()
    assert settings.topology is None
    assert [str(a) for a in settings.sentinels] == [
        e.address for e in eps.values() if e.role == "sentinel"
    ]
    # ...and the sentinels start from the layout's slot map, at epoch 1.
    sentinel_config = pytest.importorskip("sentinel.config")
    topology = sentinel_config.load_config(tmp_path / "sentinel0.toml").topology
    assert topology.epoch == 1
    assert [s.name for s in topology.shards] == ["shard0", "shard1", "shard2"]
    for shard in topology.shards:
        primary = next(e for e in eps.values() if e.shard == shard.name and e.role == "primary")
        assert shard.primary == NodeAddress.parse(primary.address)

    for e in eps.values():
        if e.role in ("primary", "replica"):
            config = load_node_config(tmp_path / f"{e.name}.toml", {})
            assert (config.host, config.port, config.metrics_port) == (
                e.bind,
                e.port,
                e.metrics_port,
            )
            assert config.managed is True  # roles come from the sentinels
            if e.role == "replica":
                primary = next(
                    p for p in eps.values() if p.shard == e.shard and p.role == "primary"
                )
                assert config.replicaof == primary.address
            assert (config.announce or f"{config.host}:{config.port}") == e.address

    for e in eps.values():
        if e.role == "sentinel":
            config = sentinel_config.load_config(tmp_path / f"{e.name}.toml")
            assert str(config.listen) == e.address
            assert config.sentinel_count == topo.sentinels
            assert config.quorum == topo.quorum
            assert config.topology == topology

    targets = json.loads(files[TARGETS_FILE])
    assert sorted(t["targets"][0] for t in targets) == sorted(
        f"{e.host}:{e.metrics_port}" for e in eps.values()
    )
    for group in targets:
        e = eps[group["labels"]["process"]]
        assert group["labels"]["job"] in ("shardgate-node", "shardgate-proxy", "shardgate-sentinel")
        assert group["labels"].get("shard") == e.shard


def test_a_static_lab_gives_the_proxies_the_slot_map(tmp_path: Path) -> None:
    files = render(LabTopology(sentinels=0))
    (tmp_path / CLUSTER_FILE).write_text(files[CLUSTER_FILE])
    topology = load_topology(tmp_path / CLUSTER_FILE)
    assert topology.epoch == 1 and [s.name for s in topology.shards] == [
        "shard0",
        "shard1",
        "shard2",
    ]
    assert "managed" not in files["node0.toml"]  # nothing would ever assign a role
    assert not any(name.startswith("sentinel") for name in files)


def test_compose_sentinel_state_lives_on_its_volume() -> None:
    files = render(LabTopology(), target="compose")
    assert 'state_file = "/var/lib/shardgate/sentinel0.state"' in files["sentinel0.toml"]
    local = render(LabTopology(), target="local")
    assert 'state_file = "sentinel0.state"' in local["sentinel0.toml"]


def test_bad_topologies_are_refused() -> None:
    with pytest.raises(ValueError):
        LabTopology(sentinels=10)
    with pytest.raises(lab.LabError, match="need 22 ports"):
        render(LabTopology(base_port=0))  # OS-assigned ports must be passed in
    with pytest.raises(lab.LabError):
        render(LabTopology(shards=0))
    assert main(["--out", "/nonexistent-never-written", "--shards", "0"]) == 2
    assert main(["--out", "/nonexistent-never-written", "--base-port", "0"]) == 2
