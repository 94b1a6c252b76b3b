"""What metrics exist, read from the code, the docs, the alert rules and the dashboard.

- ``exported_families`` reads a role's ``metrics.py`` with ``ast`` (nothing is imported, so a
  role that does not import cleanly cannot hide its metrics): every call that builds a
  ``*MetricFamily`` with a name the module spells out — a literal, a module or function constant
  plus a literal (``p + "commands"``), ``.removesuffix("_total")``, or a local helper such as
  ``gauge(name, value)`` called with a literal. The roles are found by path, so
  ``sentinel/metrics.py`` is picked up the day it exists.
- ``documented_metrics`` reads the tables of ``docs/metrics.md``: rows whose first cell is a
  backticked ``shardgate_…`` name; a table under a heading containing "planned" lists metrics
  that dashboards and alerts already use but the code does not export yet.
- ``promql_metrics`` finds the metric names an expression uses.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
DOCS = ROOT / "docs" / "metrics.md"
ALERTS = COMPOSE / "prometheus" / "alerts.yml"
DASHBOARD = COMPOSE / "grafana" / "dashboards" / "shardgate.json"

# role → its metrics module; a role without the file exports nothing yet.
METRIC_MODULES = {
    "node": ROOT / "storenode" / "metrics.py",
    "proxy": ROOT / "proxy" / "metrics.py",
    "sentinel": ROOT / "sentinel" / "metrics.py",
}
PREFIXES = {
    "node": "shardgate_node_",
    "proxy": "shardgate_proxy_",
    "sentinel": "shardgate_sentinel_",
}
_KINDS = {
    "CounterMetricFamily": "counter",
    "GaugeMetricFamily": "gauge",
    "HistogramMetricFamily": "histogram",
    "SummaryMetricFamily": "summary",
    "InfoMetricFamily": "info",
    "StateSetMetricFamily": "stateset",
    "GaugeHistogramMetricFamily": "gaugehistogram",
    "Counter": "counter",
    "Gauge": "gauge",
    "Histogram": "histogram",
    "Summary": "summary",
}
_METRIC_NAME = re.compile(r"\bshardgate_[a-z0-9_]+\b")
_MATCHERS = re.compile(r"\b(shardgate_[a-z0-9_]+)\s*\{([^}]*)\}")
_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def role_of(metric: str) -> str | None:
    for role, prefix in PREFIXES.items():
        if metric.startswith(prefix):
            return role
    return None


def family_name(name: str, kind: str) -> str:
    """The name docs and PromQL use for a family: counters end in ``_total``."""
    if kind == "counter":
        return name.removesuffix("_total") + "_total"
    return name


def sample_names(family: str, kind: str) -> set[str]:
    """Every series name a family produces in the Prometheus text format."""
    if kind == "counter":
        return {family_name(family, kind)}
    if kind in ("histogram", "gaugehistogram"):
        return {family + "_bucket", family + "_sum", family + "_count"}
    if kind == "summary":
        return {family, family + "_sum", family + "_count"}
    if kind == "info":
        return {family.removesuffix("_info") + "_info"}
    return {family}


def _call_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def _eval_str(node: ast.AST, env: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return env.get(node.id)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _eval_str(node.left, env), _eval_str(node.right, env)
        return None if left is None or right is None else left + right
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("removesuffix", "removeprefix")
        and len(node.args) == 1
    ):
        base, arg = _eval_str(node.func.value, env), _eval_str(node.args[0], env)
        if base is None or arg is None:
            return None
        return (
            base.removesuffix(arg) if node.func.attr == "removesuffix" else base.removeprefix(arg)
        )
    return None


def _string_constants(tree: ast.AST) -> dict[str, str]:
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            out[node.targets[0].id] = node.value.value
    return out


def exported_families(path: Path) -> dict[str, str]:
    """Family name (counters with ``_total``) → kind, for every family ``path`` builds."""
    tree = ast.parse(path.read_text(), filename=str(path))
    consts = _string_constants(tree)
    # Helpers: functions whose first parameter becomes a family's name.
    helpers: dict[str, tuple[int, ast.AST, str, str]] = {}
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        params = [a.arg for a in fn.args.args]
        for node in ast.walk(fn):
            if isinstance(node, ast.Call) and _call_name(node) in _KINDS and node.args:
                used = {n.id for n in ast.walk(node.args[0]) if isinstance(n, ast.Name)}
                for index, param in enumerate(params):
                    if param in used:
                        kind = _KINDS[_call_name(node) or ""]
                        helpers[fn.name] = (index, node.args[0], param, kind)
    families: dict[str, str] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        if name in _KINDS and node.args:
            value = _eval_str(node.args[0], consts)
            if value is not None:
                kind = _KINDS[name]
                families[family_name(value, kind)] = kind
        elif name in helpers:
            index, expr, param, kind = helpers[name]
            if index < len(node.args):
                arg = _eval_str(node.args[index], consts)
                if arg is not None:
                    value = _eval_str(expr, {**consts, param: arg})
                    if value is not None:
                        families[family_name(value, kind)] = kind
    return {k: v for k, v in families.items() if k.startswith("shardgate_")}


def exported_metrics() -> dict[str, dict[str, str]]:
    """role → {family: kind} for every role whose metrics module exists."""
    return {role: exported_families(p) for role, p in METRIC_MODULES.items() if p.exists()}


def exported_samples(exported: dict[str, dict[str, str]]) -> dict[str, str]:
    """Series name → the family it belongs to."""
    out: dict[str, str] = {}
    for families in exported.values():
        for family, kind in families.items():
            for sample in sample_names(family, kind):
                out[sample] = family
    return out


def documented_metrics(path: Path = DOCS) -> dict[str, bool]:
    """Metric family → planned? (True when it sits under a heading that says "planned")."""
    out: dict[str, bool] = {}
    planned = False
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            planned = "planned" in line.lower()
            continue
        m = re.match(r"\|\s*`(shardgate_[a-z0-9_]+)`", line)
        if m:
            out[m.group(1)] = planned
    return out


def promql_metrics(expr: str) -> set[str]:
    return set(_METRIC_NAME.findall(expr))


def promql_matcher_labels(expr: str) -> Iterator[tuple[str, str]]:
    """(metric, label) for every label matcher written on a shardgate metric."""
    for metric, body in _MATCHERS.findall(expr):
        for label in _LABEL.findall(body):
            yield metric, label


def alert_rules(path: Path = ALERTS) -> list[dict[str, Any]]:
    data = yaml.safe_load(path.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_panels(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included (rows themselves excluded)."""
    out = []
    for panel in data.get("panels", []):
        if panel.get("type") == "row":
            out += panel.get("panels", [])
        else:
            out.append(panel)
    return out


def dashboard_exprs(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and annotation query."""
    out = []
    for panel in dashboard_panels(data):
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r}", target["expr"]))
    for ann in data.get("annotations", {}).get("list", []):
        if "expr" in ann:
            out.append((f"annotation {ann['name']!r}", ann["expr"]))
    return out


def all_exprs() -> list[tuple[str, str]]:
    rules = [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]
    return rules + dashboard_exprs(dashboard())
