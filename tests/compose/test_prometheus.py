"""compose/prometheus: the rules and the config load in Prometheus's own checker (promtool, from
Debian's prometheus package), and the rule unit tests pass."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.compose import catalog

PROMETHEUS = catalog.COMPOSE / "prometheus"
SEVERITIES = ("critical", "warning", "info")


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(
                "promtool is not installed; .ci/run installs it (apt-get install prometheus)"
            )
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return path


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )


def test_promtool_checks_the_rules() -> None:
    proc = _run("check", "rules", "alerts.yml", cwd=PROMETHEUS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    proc = _run("test", "rules", "alerts.test.yml", cwd=PROMETHEUS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_checks_the_config_as_the_container_sees_it(tmp_path: Path) -> None:
    """The compose file mounts prometheus.yml, alerts.yml and config/targets.json side by side in
    /etc/prometheus; recreate that layout and check it."""
    for source in ("prometheus/prometheus.yml", "prometheus/alerts.yml", "config/targets.json"):
        shutil.copy(catalog.COMPOSE / source, tmp_path)
    proc = _run("check", "config", "prometheus.yml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rule files found" in proc.stdout


def test_every_rule_is_documented_and_labelled() -> None:
    docs = catalog.DOCS.read_text()
    names = []
    for rule in catalog.alert_rules():
        name = rule["alert"]
        names.append(name)
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"], name
        assert f"| `{name}` |" in docs, f"{name} is not in docs/metrics.md's alert table"
    assert len(names) == len(set(names)), "duplicate alert names"


def test_the_rule_tests_cover_the_issue_s_alerts() -> None:
    """Primary down, no quorum, replication lag, proxy epoch behind, backend errors, evictions."""
    tested = (PROMETHEUS / "alerts.test.yml").read_text()
    for alert in (
        "ShardgatePrimaryDown",
        "ShardgatePrimaryUnreachable",
        "ShardgateNoQuorum",
        "ShardgateReplicationLag",
        "ShardgateProxyEpochBehind",
        "ShardgateBackendErrors",
        "ShardgateEvicting",
    ):
        assert f"alertname: {alert}" in tested, alert
