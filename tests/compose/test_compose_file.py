"""compose/docker-compose.yml: valid for a real compose parser, and every service, port, volume
and file it names exists and agrees with the lab's topology (shardgate/lab_config.py).

No Docker engine is needed: ``docker-compose config -q`` (Debian's docker-compose) validates
offline; everything else is read with PyYAML.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shardgate.cli import build_parser
from shardgate.lab_config import CONFIG_DIR, STATE_DIR, Endpoint, LabTopology, endpoints

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
COMPOSE_FILE = COMPOSE / "docker-compose.yml"
EXTRA_SERVICES = {"prometheus", "grafana"}


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run installs it (apt-get install {name})")
        pytest.skip(f"{name} is not installed (apt-get install {name})")
    return path


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


@pytest.fixture(scope="module")
def eps() -> dict[str, Endpoint]:
    return {e.name: e for e in endpoints(LabTopology(), target="compose")}


def _published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    out = []
    for spec in service.get("ports", []):
        parts = str(spec).split(":")
        assert len(parts) == 3, f"publish on an explicit address (127.0.0.1:P:P), got {spec}"
        out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def _option(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command else None


def test_docker_compose_config_accepts_it() -> None:
    exe = _require_tool("docker-compose")
    proc = subprocess.run(
        [exe, "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=COMPOSE,
    )
    assert proc.returncode == 0, proc.stderr


def test_services_are_the_lab_topology(compose: dict[str, Any], eps: dict[str, Endpoint]) -> None:
    assert set(compose["services"]) == set(eps) | EXTRA_SERVICES


def test_every_service_has_a_health_check_and_a_restart_policy(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service.get("restart") in ("unless-stopped", "always", "on-failure"), name
        check = service.get("healthcheck", {})
        assert check.get("test"), f"{name} has no health check"
        assert check.get("interval") and check.get("retries"), name


def test_ports_agree_with_the_topology(compose: dict[str, Any], eps: dict[str, Endpoint]) -> None:
    seen: set[int] = set()
    for name, service in compose["services"].items():
        for address, host_port, container_port in _published(service):
            assert address == "127.0.0.1", f"{name}: publish on loopback only"
            assert host_port not in seen, f"host port {host_port} published twice"
            seen.add(host_port)
            if name in eps:
                assert host_port == container_port == eps[name].port, name
        if name in eps:
            test = " ".join(service["healthcheck"]["test"])
            ports = re.findall(r"-p (\d+)", test)
            assert ports == [str(eps[name].port)], f"{name}: health check pings {ports}"
            hosts = re.findall(r"-h (\S+)", test)
            if eps[name].bind not in ("0.0.0.0", "127.0.0.1"):
                assert hosts == [eps[name].bind], f"{name} listens on {eps[name].bind} only"
    for e in eps.values():
        if e.role in ("proxy", "sentinel"):
            assert e.port in seen, f"{e.name}'s port is not published"


def test_commands_name_existing_files_and_the_right_ports(
    compose: dict[str, Any], eps: dict[str, Endpoint]
) -> None:
    for name, e in eps.items():
        command = compose["services"][name]["command"]
        for arg in command:
            if arg.startswith(CONFIG_DIR + "/"):
                path = COMPOSE / "config" / arg.removeprefix(CONFIG_DIR + "/")
                assert path.is_file(), f"{name}: {arg} is not in compose/config"
        if e.role in ("primary", "replica"):
            assert command[:2] == ["node", "--config"]
            assert command[2] == f"{CONFIG_DIR}/{name}.toml"
        elif e.role == "sentinel":
            assert command[:4] == ["sentinel", "run", "--config", f"{CONFIG_DIR}/{name}.toml"]
            assert _option(command, "--metrics-port") == str(e.metrics_port)
        else:
            assert command[0] == "proxy"
            assert _option(command, "--port") == str(e.port)
            assert _option(command, "--metrics-port") == str(e.metrics_port)
            assert _option(command, "--metrics-host") == "0.0.0.0"
            assert _option(command, "--host") == e.bind
            assert _option(command, "--config") == f"{CONFIG_DIR}/cluster.toml"
            assert _option(command, "--name") == name  # how the sentinels' status shows it


def _roles_registered() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_commands_parse_with_the_real_cli(
    compose: dict[str, Any], eps: dict[str, Endpoint]
) -> None:
    """Every option a service passes exists (argparse exits on an unknown one)."""
    registered = _roles_registered()
    unchecked = []
    for name in eps:
        command = compose["services"][name]["command"]
        if command[0] not in registered:
            unchecked.append(name)
            continue
        try:
            args = build_parser().parse_args(command)
        except SystemExit as exc:
            pytest.fail(f"{name}: `shardgate {' '.join(command)}` does not parse ({exc})")
        assert callable(getattr(args, "func", None)), name
    if unchecked:
        pytest.skip(f"roles not in the CLI yet, unchecked: {', '.join(unchecked)}")


def test_mounts_and_volumes(compose: dict[str, Any], eps: dict[str, Endpoint]) -> None:
    declared = set(compose.get("volumes", {}))
    used: set[str] = set()
    for name, service in compose["services"].items():
        targets = []
        for spec in service.get("volumes", []):
            source, target, *_ = str(spec).split(":")
            targets.append(target)
            if source.startswith((".", "/")):
                assert (COMPOSE / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
        if name in eps:
            assert CONFIG_DIR in targets, f"{name} does not mount ./config at {CONFIG_DIR}"
        if name in eps and eps[name].role == "sentinel":
            assert f"{name}-state" in [str(v).split(":")[0] for v in service["volumes"]]
            assert STATE_DIR in targets, f"{name}: its state volume is not at {STATE_DIR}"
    assert used == declared, f"declared but unused volumes: {declared - used}"


def test_depends_on_names_services(compose: dict[str, Any]) -> None:
    services = set(compose["services"])
    for name, service in compose["services"].items():
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"


def test_prometheus_and_grafana_wiring(compose: dict[str, Any]) -> None:
    prom = compose["services"]["prometheus"]
    mounts = dict(str(v).split(":")[:2] for v in prom["volumes"])
    assert mounts["./prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounts["./prometheus/alerts.yml"] == "/etc/prometheus/alerts.yml"
    assert mounts["./config/targets.json"] == "/etc/prometheus/targets.json"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    grafana = compose["services"]["grafana"]
    gmounts = dict(str(v).split(":")[:2] for v in grafana["volumes"])
    provider = yaml.safe_load(
        (COMPOSE / "grafana/provisioning/dashboards/shardgate.yml").read_text()
    )
    path = provider["providers"][0]["options"]["path"]
    assert gmounts["./grafana/dashboards"] == path
    assert gmounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(path + "/")
    assert (COMPOSE / "grafana/dashboards" / home.removeprefix(path + "/")).is_file()
    datasource = yaml.safe_load(
        (COMPOSE / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    assert ("127.0.0.1", 9090, 9090) in _published(prom)


def test_dockerfile_installs_the_distribution() -> None:
    text = (COMPOSE / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    copied = re.findall(r"^COPY (.+) \S+$", text, re.M)
    for line in copied:
        for source in line.split():
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
    pyproject = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"include = \[([^\]]*)\]", pyproject)
    assert include is not None
    for package in re.findall(r'"(\w+)\*"', include.group(1)):
        assert any(package in line.split() for line in copied), f"Dockerfile misses {package}/"
    ignore = (COMPOSE / "Dockerfile.dockerignore").read_text().split()
    for line in copied:
        for source in line.split():
            assert f"!{source}" in ignore or f"!{source}/" in ignore, source
