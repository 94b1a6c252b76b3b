"""Every metric the alerts and the dashboard use is one the code exports (or docs/metrics.md
lists as planned), and docs/metrics.md lists exactly what the code exports."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.compose import catalog
from tests.compose.catalog import (
    METRIC_MODULES,
    exported_families,
    exported_metrics,
    exported_samples,
    role_of,
)


def test_extractor_reads_every_style_of_declaration(tmp_path: Path) -> None:
    source = tmp_path / "metrics.py"
    source.write_text(
        "from prometheus_client.core import CounterMetricFamily as C, GaugeMetricFamily\n"
        "from prometheus_client import core\n"
        "P = 'shardgate_x_'\n"
        "def collect(labels):\n"
        "    def gauge(name, value):\n"
        "        g = GaugeMetricFamily(name, 'help', labels=labels)\n"
        "        return g\n"
        "    def counter(name, value):\n"
        "        return core.CounterMetricFamily(name.removesuffix('_total'), 'h')\n"
        "    yield gauge('shardgate_x_keys', 1)\n"
        "    yield counter('shardgate_x_hits_total', 1)\n"
        "    yield core.HistogramMetricFamily(P + 'latency_seconds', 'h')\n"
        "    yield core.CounterMetricFamily(P + 'requests', 'h')\n"
        "    yield core.GaugeMetricFamily('other_thing', 'not ours')\n"
    )
    assert exported_families(source) == {
        "shardgate_x_keys": "gauge",
        "shardgate_x_hits_total": "counter",
        "shardgate_x_latency_seconds": "histogram",
        "shardgate_x_requests_total": "counter",
    }


def test_the_roles_export_what_the_dashboard_is_built_on() -> None:
    exported = exported_metrics()
    assert exported["node"]["shardgate_node_keys"] == "gauge"
    assert exported["node"]["shardgate_node_commands_total"] == "counter"
    assert exported["node"]["shardgate_node_command_duration_seconds"] == "histogram"
    assert exported["proxy"]["shardgate_proxy_backend_latency_seconds"] == "histogram"
    assert exported["proxy"]["shardgate_proxy_topology_epoch"] == "gauge"
    for role, families in exported.items():
        for family in families:
            assert role_of(family) == role, f"{family} is declared in {METRIC_MODULES[role]}"


def test_docs_list_every_exported_metric() -> None:
    documented = catalog.documented_metrics()
    for role, families in exported_metrics().items():
        for family in families:
            assert family in documented, (
                f"{family} ({METRIC_MODULES[role]}) is not in docs/metrics.md"
            )
            assert not documented[family], (
                f"{family} is exported now: move it out of the planned table in docs/metrics.md"
            )


def test_docs_list_no_metric_the_code_lost() -> None:
    exported = {f for families in exported_metrics().values() for f in families}
    for family, planned in catalog.documented_metrics().items():
        role = role_of(family)
        assert role is not None, f"docs/metrics.md: {family} has no known role prefix"
        if not planned:
            assert family in exported, (
                f"docs/metrics.md lists {family} as exported, but {METRIC_MODULES[role]} "
                "does not export it"
            )


def test_alerts_and_dashboard_use_only_known_metrics() -> None:
    documented = catalog.documented_metrics()
    exported = exported_metrics()
    samples = exported_samples(exported)
    # Planned families are not in the code yet; assume the usual naming for their series.
    planned_samples = {
        s: f
        for f, planned in documented.items()
        if planned
        for s in catalog.sample_names(f, "histogram" if f.endswith("_seconds") else "gauge") | {f}
    }
    unknown = []
    for where, expr in catalog.all_exprs():
        for name in catalog.promql_metrics(expr):
            if name not in samples and name not in planned_samples:
                unknown.append(f"{where}: {name}")
    assert not unknown, "metrics neither exported nor planned in docs/metrics.md:\n" + "\n".join(
        unknown
    )


# Roles whose planned metrics (docs/metrics.md) are due with the role's metrics module: once the
# module exists, every such name the rules or the dashboard use must be exported by it.
DUE_WITH_MODULE = ("sentinel",)


@pytest.mark.parametrize("role", DUE_WITH_MODULE)
def test_a_new_metrics_module_exports_the_planned_names(role: str) -> None:
    exported = exported_metrics()
    if role not in exported:
        pytest.skip(f"{METRIC_MODULES[role]} does not exist yet; its planned names are unchecked")
    samples = exported_samples(exported)
    missing = sorted(
        f"{where}: {name}"
        for where, expr in catalog.all_exprs()
        for name in catalog.promql_metrics(expr)
        if role_of(name) == role and name not in samples
    )
    assert not missing, (
        f"{METRIC_MODULES[role]} exists but does not export what the rules and dashboard use "
        "(export it, or change compose/prometheus/alerts.yml, the dashboard and docs/metrics.md):\n"
        + "\n".join(missing)
    )


def test_matchers_name_labels_the_metric_has() -> None:
    """A typo in a label matcher silently matches nothing; check the documented labels."""
    text = catalog.DOCS.read_text()
    labels: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("| `shardgate_"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            labels[cells[0].strip("`")] = {c.strip(" `") for c in cells[2].split(",") if c.strip()}
    target_labels = {"job", "process", "shard", "instance", "node"}
    bad = []
    for where, expr in catalog.all_exprs():
        for metric, label in catalog.promql_matcher_labels(expr):
            family = next((f for f in labels if metric == f or metric.startswith(f + "_")), None)
            if family is not None and label not in labels[family] | target_labels:
                bad.append(f"{where}: {metric}{{{label}=…}}")
    assert not bad, "\n".join(bad)
