"""The Grafana dashboard and its provisioning, checked without Grafana (no screenshot needed):
well-formed panels, every query on the provisioned datasource, the panels the issue asks for."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.compose import catalog

GRID_WIDTH = 24  # Grafana's grid


@pytest.fixture(scope="module")
def dash() -> dict[str, Any]:
    return catalog.dashboard()


def _datasource_uid() -> str:
    path = catalog.COMPOSE / "grafana/provisioning/datasources/prometheus.yml"
    uid: str = yaml.safe_load(path.read_text())["datasources"][0]["uid"]
    return uid


def test_dashboard_identity(dash: dict[str, Any]) -> None:
    assert dash["uid"] == "shardgate"
    assert dash["title"] == "shardgate"
    assert isinstance(dash["schemaVersion"], int)


def test_panels_are_well_formed(dash: dict[str, Any]) -> None:
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    uid = _datasource_uid()
    occupied: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= GRID_WIDTH, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["type"] in ("timeseries", "state-timeline", "stat", "gauge", "table")
        assert panel["datasource"]["uid"] == uid, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid
            assert target["expr"].strip()
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_annotations_mark_failovers(dash: dict[str, Any]) -> None:
    uid = _datasource_uid()
    queries = [a for a in dash["annotations"]["list"] if "expr" in a]
    assert any("shardgate_sentinel_failovers_total" in a["expr"] for a in queries)
    assert any("shardgate_proxy_topology_epoch" in a["expr"] for a in queries)
    for ann in queries:
        assert ann["datasource"]["uid"] == uid


def test_the_panels_the_issue_asks_for(dash: dict[str, Any]) -> None:
    """Throughput and latency by command and proxy, errors, per-shard primary and epoch, replication
    lag, memory and evictions per node, sentinel votes and state."""
    used = {
        name for _, expr in catalog.dashboard_exprs(dash) for name in catalog.promql_metrics(expr)
    }
    for metric in (
        "shardgate_proxy_commands_total",
        "shardgate_proxy_backend_latency_seconds_bucket",
        "shardgate_node_command_duration_seconds_bucket",
        "shardgate_proxy_errors_total",
        "shardgate_proxy_backend_errors_total",
        "shardgate_node_role",
        "shardgate_proxy_topology_epoch",
        "shardgate_sentinel_topology_epoch",
        "shardgate_node_replica_ack_lag_seconds",
        "shardgate_node_used_memory_bytes",
        "shardgate_node_evicted_keys_total",
        "shardgate_sentinel_current_epoch",
        "shardgate_sentinel_primary_down",
        "shardgate_sentinel_quorum_ok",
    ):
        assert metric in used, f"no panel shows {metric}"
    exprs = " ".join(expr for _, expr in catalog.dashboard_exprs(dash))
    assert "by (command)" in exprs and "by (process)" in exprs
