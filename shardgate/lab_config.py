"""The config files of a lab topology, rendered once for the local lab and for docker compose.

How it works
- ``LabTopology`` is the cluster's shape (shards, replicas per shard, sentinels, proxies, base
  port and the sentinels' timing rules). ``endpoints`` lays it out with the local lab's names and
  ports: the store nodes come from ``shardgate.lab.plan_lab`` itself (so ``node0``, ``node0-1``,
  ports B+100.., metrics at port+1000 are the lab's, not a copy); proxies are ``proxy0``,
  ``proxy1`` on B, B+1; sentinels ``sentinel0``.. on B+50.. (the lab's documented layout).
- A ``Target`` says how processes find each other: ``local`` (everything on 127.0.0.1, what
  ``shardgate lab`` runs) or ``compose`` (each process is a compose service reachable by its
  name; stores and proxies bind 0.0.0.0, sentinels bind their service name because it is also
  their identity among peers). Ports are the same in both, so a port means the same process in
  ``make lab`` and in ``docker compose up``.
- ``render`` returns every file as text: ``cluster.toml`` (the proxies' topology, written by
  ``shardgate.lab.cluster_toml``), ``NODE.toml`` per store node (``shardgate node --config``),
  ``SENTINEL.toml`` per sentinel (``sentinel/config.py``'s format) and ``targets.json``
  (Prometheus file-based discovery: every metrics endpoint with its ``process``, ``role`` and
  ``shard`` labels).

``python -m shardgate.lab_config --out compose/config --target compose`` writes the files the
compose services mount; ``tests/compose/test_config_drift.py`` fails when they differ from what
this module renders. Pure: nothing here starts a process or opens a socket.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import attrs

from shardgate.lab import (
    LabConfig,
    LabError,
    ProcessSpec,
    cluster_toml,
    plan_lab,
    slot_ranges,
)

Target = Literal["local", "compose"]
TARGETS: tuple[Target, ...] = ("local", "compose")
EndpointRole = Literal["primary", "replica", "proxy", "sentinel"]
ShardRow = tuple[str, str, list[str], tuple[int, int]]  # name, primary, replicas, slots

SENTINEL_PORT_OFFSET = 50  # docs/lab.md: sentinels on base+50..
METRICS_PORT_OFFSET = 1000  # as shardgate.lab: metrics port = service port + 1000
STATE_DIR = "/var/lib/shardgate"  # compose: the sentinels' named volumes are mounted here
CONFIG_DIR = "/etc/shardgate"  # compose: where ./compose/config is mounted
TARGETS_FILE = "targets.json"
CLUSTER_FILE = "cluster.toml"


@attrs.frozen(slots=True, kw_only=True)
class LabTopology:
    """The default is the lab's default cluster (issue 5): 3 shards x (primary + 1 replica),
    3 sentinels, 2 proxies."""

    shards: int = 3
    replicas: int = 1
    sentinels: int = 3
    proxies: int = 2
    base_port: int = 7000
    maxmemory: str = "256mb"
    quorum: int = 2  # a majority of 3 sentinels
    down_after_ms: int = 1000  # the lab fails over fast; sentinel/config.py's default is 5000
    failover_timeout_ms: int = 10_000

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.sentinels <= 9:
            raise ValueError(f"sentinels must be between 0 and 9, got {self.sentinels}")
        if not 1 <= self.proxies <= SENTINEL_PORT_OFFSET:
            raise ValueError(f"proxies must be between 1 and 50, got {self.proxies}")
        if self.base_port < 1024:
            raise ValueError("base_port must be a fixed port (1024 or more)")


@attrs.frozen(slots=True, kw_only=True)
class Endpoint:
    """One process: ``host`` is how the others reach it, ``bind`` what it listens on."""

    name: str
    role: EndpointRole
    shard: str | None
    host: str
    bind: str
    port: int
    metrics_port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def endpoints(topology: LabTopology, *, target: Target = "local") -> tuple[Endpoint, ...]:
    """Every process of the topology: store nodes (shard-major), then sentinels, then proxies."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r} ({', '.join(TARGETS)})")
    plan = plan_lab(
        LabConfig(
            shards=topology.shards,
            replicas=topology.replicas,
            base_port=topology.base_port,
            proxy_kind="none",
        )
    )

    def place(name: str, *, identity_bind: bool = False) -> tuple[str, str]:
        if target == "local":
            return "127.0.0.1", "127.0.0.1"
        return name, (name if identity_bind else "0.0.0.0")

    out: list[Endpoint] = []
    for spec in plan.processes:
        assert spec.metrics_port is not None  # shardgate nodes always serve metrics in the lab
        host, bind = place(spec.name)
        role: EndpointRole = "primary" if spec.role == "primary" else "replica"
        out.append(
            Endpoint(
                name=spec.name,
                role=role,
                shard=spec.shard,
                host=host,
                bind=bind,
                port=spec.port,
                metrics_port=spec.metrics_port,
            )
        )
    for i in range(topology.sentinels):
        name = f"sentinel{i}"
        port = topology.base_port + SENTINEL_PORT_OFFSET + i
        host, bind = place(name, identity_bind=True)
        out.append(
            Endpoint(
                name=name,
                role="sentinel",
                shard=None,
                host=host,
                bind=bind,
                port=port,
                metrics_port=port + METRICS_PORT_OFFSET,
            )
        )
    for i in range(topology.proxies):
        name = f"proxy{i}"
        port = topology.base_port + i
        host, bind = place(name)
        out.append(
            Endpoint(
                name=name,
                role="proxy",
                shard=None,
                host=host,
                bind=bind,
                port=port,
                metrics_port=port + METRICS_PORT_OFFSET,
            )
        )
    return tuple(out)


def _shard_rows(eps: Sequence[Endpoint], shards: int) -> list[ShardRow]:
    rows = []
    for i, slots in enumerate(slot_ranges(shards)):
        members = [e for e in eps if e.shard == f"shard{i}"]
        primary = next(e for e in members if e.role == "primary")
        replicas = [e.address for e in members if e.role == "replica"]
        rows.append((f"shard{i}", primary.address, replicas, slots))
    return rows


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a TOML basic string is a JSON string for what we write


def node_toml(
    ep: Endpoint, *, topology: LabTopology, primary: Endpoint | None, target: Target
) -> str:
    lines = [
        f"# {ep.name}: {ep.role} of {ep.shard}. Rendered by shardgate/lab_config.py; do not edit.",
        f"host = {_toml_str(ep.bind)}",
        f"port = {ep.port}",
        f"metrics_port = {ep.metrics_port}",
        f"maxmemory = {_toml_str(topology.maxmemory)}",
    ]
    if ep.bind != ep.host:
        lines.append(f"announce = {_toml_str(ep.address)}  # how replicas and sentinels see it")
    if primary is not None:
        lines.append(f"replicaof = {_toml_str(primary.address)}")
    if target == "compose":
        lines.append('log_format = "json"')
    return "\n".join(lines) + "\n"


def sentinel_toml(
    ep: Endpoint,
    *,
    topology: LabTopology,
    peers: Sequence[Endpoint],
    rows: Sequence[ShardRow],
    target: Target,
) -> str:
    state = f"{STATE_DIR}/{ep.name}.state" if target == "compose" else f"{ep.name}.state"
    lines = [
        f"# {ep.name}. Rendered by shardgate/lab_config.py; do not edit.",
        f"id = {_toml_str(ep.name)}",
        f"listen = {_toml_str(ep.address)}",
        f"quorum = {topology.quorum}",
        f"down_after_ms = {topology.down_after_ms}",
        f"failover_timeout_ms = {topology.failover_timeout_ms}",
        f"state_file = {_toml_str(state)}",
    ]
    for peer in peers:
        lines += [
            "",
            "[[peers]]",
            f"id = {_toml_str(peer.name)}",
            f"address = {_toml_str(peer.address)}",
        ]
    for name, primary, replicas, (start, end) in rows:
        lines += [
            "",
            "[[shards]]",
            f"name = {_toml_str(name)}",
            f"primary = {_toml_str(primary)}",
            "replicas = [" + ", ".join(_toml_str(r) for r in replicas) + "]",
            f'slots = ["{start}-{end}"]',
        ]
    return "\n".join(lines) + "\n"


def shard_rows(nodes: Sequence[ProcessSpec]) -> list[ShardRow]:
    """The shards of a running lab's store nodes (``Lab.records[...].spec`` or ``plan_lab``)."""
    names = sorted({n.shard for n in nodes if n.shard}, key=lambda s: int(s.removeprefix("shard")))
    rows = []
    for name, slots in zip(names, slot_ranges(len(names)), strict=True):
        members = [n for n in nodes if n.shard == name]
        primary = next(n.address for n in members if n.role == "primary")
        rows.append((name, primary, [n.address for n in members if n.role == "replica"], slots))
    return rows


def plan_sentinels(
    rows: Sequence[ShardRow],
    *,
    ports: Sequence[int],
    metrics_ports: Sequence[int],
    directory: str,
    topology: LabTopology | None = None,
    host: str = "127.0.0.1",
    python: str = sys.executable,
) -> tuple[list[ProcessSpec], dict[str, str]]:
    """Sentinels for a local lab whose nodes already exist: their process specs (started with
    ``Lab.start``) and their config files (to write into the lab directory first)."""
    topo = topology or LabTopology(sentinels=len(ports))
    eps = [
        Endpoint(
            name=f"sentinel{i}",
            role="sentinel",
            shard=None,
            host=host,
            bind=host,
            port=port,
            metrics_port=mport,
        )
        for i, (port, mport) in enumerate(zip(ports, metrics_ports, strict=True))
    ]
    specs, files = [], {}
    for ep in eps:
        name = f"{ep.name}.toml"
        files[name] = sentinel_toml(
            ep, topology=topo, peers=[p for p in eps if p is not ep], rows=rows, target="local"
        )
        argv = [python, "-m", "shardgate", "sentinel", "run"]
        argv += ["--config", os.path.join(directory, name), "--metrics-port", str(ep.metrics_port)]
        specs.append(
            ProcessSpec(
                name=ep.name,
                role="sentinel",
                shard=None,
                host=host,
                port=ep.port,
                metrics_port=ep.metrics_port,
                argv=tuple(argv),
                log=f"{ep.name}.log",
            )
        )
    return specs, files


def prometheus_targets(eps: Sequence[Endpoint]) -> str:
    """Prometheus ``file_sd_configs`` JSON: one group per process, labelled with what it is.

    ``role`` here is the role a process starts with (a node's current role is its own metric);
    ``job`` groups processes by kind so alerts can say ``up{job="shardgate-node"} == 0``."""
    groups = []
    for ep in eps:
        kind = "node" if ep.role in ("primary", "replica") else ep.role
        labels = {"job": f"shardgate-{kind}", "process": ep.name}
        if ep.shard is not None:
            labels["shard"] = ep.shard
        groups.append({"targets": [f"{ep.host}:{ep.metrics_port}"], "labels": labels})
    return json.dumps(groups, indent=2) + "\n"


def render(topology: LabTopology, *, target: Target = "local") -> dict[str, str]:
    """Every config file of the topology: file name → content."""
    eps = endpoints(topology, target=target)
    rows = _shard_rows(eps, topology.shards)
    files: dict[str, str] = {CLUSTER_FILE: cluster_toml(rows)}
    by_address = {e.address: e for e in eps}
    for ep in eps:
        if ep.role in ("primary", "replica"):
            primary = None
            if ep.role == "replica":
                row = next(r for r in rows if r[0] == ep.shard)
                primary = by_address[row[1]]
            files[f"{ep.name}.toml"] = node_toml(
                ep, topology=topology, primary=primary, target=target
            )
    sentinels = [e for e in eps if e.role == "sentinel"]
    for ep in sentinels:
        peers = [p for p in sentinels if p is not ep]
        files[f"{ep.name}.toml"] = sentinel_toml(
            ep, topology=topology, peers=peers, rows=rows, target=target
        )
    files[TARGETS_FILE] = prometheus_targets(eps)
    return files


def write(files: dict[str, str], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in sorted(files.items()):
        path = out / name
        path.write_text(text)
        written.append(path)
    return written


_DEFAULTS = attrs.fields(LabTopology)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shardgate.lab_config",
        description="Render the lab's config files (the ones compose/config holds).",
    )
    parser.add_argument("--out", required=True, help="directory to write the files into")
    parser.add_argument("--target", choices=TARGETS, default="local")
    parser.add_argument("--shards", type=int, default=_DEFAULTS.shards.default)
    parser.add_argument("--replicas", type=int, default=_DEFAULTS.replicas.default)
    parser.add_argument("--sentinels", type=int, default=_DEFAULTS.sentinels.default)
    parser.add_argument("--proxies", type=int, default=_DEFAULTS.proxies.default)
    parser.add_argument("--base-port", type=int, default=_DEFAULTS.base_port.default)
    args = parser.parse_args(argv)
    try:
        topology = LabTopology(
            shards=args.shards,
            replicas=args.replicas,
            sentinels=args.sentinels,
            proxies=args.proxies,
            base_port=args.base_port,
        )
        files = render(topology, target=args.target)
    except (ValueError, LabError) as exc:
        print(f"lab_config: {exc}", file=sys.stderr)
        return 2
    for path in write(files, Path(args.out)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
