"""compose/config holds exactly what shardgate/lab_config.py renders, and what it renders is
what each role's own config loader accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shardgate import lab
from shardgate.lab_config import (
    CLUSTER_FILE,
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
REGENERATE = "python -m shardgate.lab_config --target compose --out compose/config"


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


def test_nodes_come_from_the_lab_plan() -> None:
    """Names and ports of store nodes are the lab's own (``plan_lab``), not a second copy."""
    topo = LabTopology(shards=2, replicas=2, base_port=9000)
    plan = lab.plan_lab(lab.LabConfig(shards=2, replicas=2, base_port=9000, proxy_kind="none"))
    nodes = [e for e in endpoints(topo) if e.role in ("primary", "replica")]
    assert [(e.name, e.role, e.shard, e.port, e.metrics_port) for e in nodes] == [
        (s.name, s.role, s.shard, s.port, s.metrics_port) for s in plan.processes
    ]


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

    topology = load_topology(tmp_path / CLUSTER_FILE)
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
            if e.role == "replica":
                primary = next(
                    p for p in eps.values() if p.shard == e.shard and p.role == "primary"
                )
                assert config.replicaof == primary.address
            assert (config.announce or f"{config.host}:{config.port}") == e.address

    sentinel_config = pytest.importorskip("sentinel.config")
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


def test_compose_sentinel_state_lives_on_its_volume() -> None:
    files = render(LabTopology(), target="compose")
    assert 'state_file = "/var/lib/shardgate/sentinel0.state"' in files["sentinel0.toml"]
    local = render(LabTopology(), target="local")
    assert 'state_file = "sentinel0.state"' in local["sentinel0.toml"]


def test_bad_topologies_are_refused() -> None:
    with pytest.raises(ValueError):
        LabTopology(sentinels=10)
    with pytest.raises(ValueError):
        LabTopology(base_port=0)
    with pytest.raises(lab.LabError):
        render(LabTopology(shards=0))
    assert main(["--out", "/nonexistent-never-written", "--shards", "0"]) == 2
