"""Planning a lab: every process of a local cluster and the files they read (sans-I/O).

From a ``LabConfig`` (and, when the OS picks the ports, the list of ports it picked)
``plan_lab`` computes every process to start (name, role, shard, address, metrics port, argv,
log file) and the files to write. Names, ports and config files come from
``shardgate.lab_config`` (``endpoints`` and ``render_endpoints``), the same code that renders
``compose/config``: a shardgate node runs ``node --config DIR/NAME.toml``, a sentinel
``sentinel run --config DIR/NAME.toml``, a proxy ``proxy --config DIR/cluster.toml --name NAME``
(which, with sentinels, names them: the proxies follow the sentinels' topology). Stand-ins
(stock ``redis-server`` nodes, nutcracker proxies) get their command lines here. Nothing is
started and nothing is read from the machine, so plans are tested on their own;
``shardgate.lab`` runs them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from typing import Literal

import attrs

from shardgate.lab_config import (
    CLUSTER_FILE,
    DEFAULT_TOPOLOGY,
    METRICS_PORT_OFFSET,
    NODE_PORT_OFFSET,
    SENTINEL_DOWN_AFTER_MS,
    SENTINEL_FAILOVER_TIMEOUT_MS,
    SENTINEL_PORT_OFFSET,
    SLOTS,
    TARGETS_FILE,
    LabError,
    LabTopology,
    cluster_toml,
    endpoints,
    node_name,
    render_endpoints,
    slot_ranges,
)

__all__ = [
    "CLUSTER_FILE",
    "METRICS_PORT_OFFSET",
    "NODE_KINDS",
    "NODE_PORT_OFFSET",
    "PROXY_KINDS",
    "SENTINEL_DOWN_AFTER_MS",
    "SENTINEL_FAILOVER_TIMEOUT_MS",
    "SENTINEL_PORT_OFFSET",
    "SLOTS",
    "LabConfig",
    "LabError",
    "LabPlan",
    "NodeKind",
    "ProcessSpec",
    "ProxyKind",
    "Role",
    "cluster_toml",
    "node_argv",
    "node_name",
    "nutcracker_argv",
    "nutcracker_file",
    "nutcracker_yaml",
    "plan_lab",
    "ports_needed",
    "proxy_argv",
    "slot_ranges",
]

NodeKind = Literal["shardgate", "redis"]
ProxyKind = Literal["shardgate", "nutcracker", "none"]
Role = Literal["primary", "replica", "proxy", "sentinel"]
NODE_KINDS: tuple[NodeKind, ...] = ("shardgate", "redis")
PROXY_KINDS: tuple[ProxyKind, ...] = ("shardgate", "nutcracker", "none")

_SHAPE = DEFAULT_TOPOLOGY

# --- planning (pure) ---------------------------------------------------------------------------


@attrs.frozen(slots=True, kw_only=True)
class LabConfig:
    """A local lab: its shape (``LabTopology``'s fields and defaults) and how to run it."""

    directory: str = ".lab"
    shards: int = _SHAPE.shards
    replicas: int = _SHAPE.replicas  # per shard
    sentinels: int = _SHAPE.sentinels
    proxies: int = _SHAPE.proxies
    base_port: int = _SHAPE.base_port  # 0: the OS picks every port
    host: str = "127.0.0.1"
    node_kind: NodeKind = "shardgate"
    proxy_kind: ProxyKind = "shardgate"  # "none": no proxy, whatever ``proxies`` says
    proxy_workers: int = 1
    maxmemory: str = _SHAPE.maxmemory
    maxmemory_policy: str | None = None
    python: str = sys.executable

    def __attrs_post_init__(self) -> None:
        if self.node_kind not in NODE_KINDS:
            raise LabError(f"unknown node command {self.node_kind!r} ({', '.join(NODE_KINDS)})")
        if self.proxy_kind not in PROXY_KINDS:
            raise LabError(f"unknown proxy command {self.proxy_kind!r} ({', '.join(PROXY_KINDS)})")
        if self.proxy_workers < 1:
            raise LabError("--proxy-workers must be at least 1")
        if self.sentinels and self.node_kind != "shardgate":
            raise LabError(
                "sentinels need shardgate nodes (they speak SG.* to them); add --sentinels 0"
            )
        self.topology()  # validates the shape

    def topology(self) -> LabTopology:
        return LabTopology(
            shards=self.shards,
            replicas=self.replicas,
            sentinels=self.sentinels,
            proxies=0 if self.proxy_kind == "none" else self.proxies,
            base_port=self.base_port,
            maxmemory=self.maxmemory,
            maxmemory_policy=self.maxmemory_policy,
        )

    @property
    def managed(self) -> bool:
        """Nodes take no writes until a sentinel assigns their role (with sentinels only)."""
        return self.sentinels > 0


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen(slots=True, kw_only=True)
class ProcessSpec:
    """One process of the lab: what it is, where it listens, and how to start it."""

    name: str
    role: Role
    shard: str | None
    host: str
    port: int
    metrics_port: int | None
    argv: tuple[str, ...] = attrs.field(converter=_str_tuple)
    log: str  # file name inside the lab directory

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@attrs.frozen(slots=True)
class LabPlan:
    processes: tuple[ProcessSpec, ...]
    files: tuple[tuple[str, str], ...]  # (file name in the lab directory, content)

    def by_name(self, name: str) -> ProcessSpec:
        for spec in self.processes:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def named(self, *roles: Role) -> list[str]:
        return [p.name for p in self.processes if p.role in roles]


def ports_needed(config: LabConfig) -> int:
    """How many ports a lab uses: a service port each, plus a metrics port each."""
    return 2 * config.topology().process_count


def node_argv(
    kind: NodeKind,
    *,
    host: str,
    port: int,
    metrics_port: int | None,
    maxmemory: str,
    maxmemory_policy: str | None = None,
    replicaof: str | None = None,
    directory: str = ".",
    python: str = sys.executable,
) -> tuple[str, ...]:
    """The command line of one store node (a shardgate node or a stock ``redis-server``)."""
    if kind == "redis":
        argv = ["redis-server", "--bind", host, "--port", str(port), "--save", ""]
        argv += ["--appendonly", "no", "--daemonize", "no", "--dir", directory, "--logfile", ""]
        argv += ["--maxmemory", maxmemory]
        if maxmemory_policy:
            argv += ["--maxmemory-policy", maxmemory_policy]
        if replicaof:
            rhost, _, rport = replicaof.rpartition(":")
            argv += ["--replicaof", rhost, rport]
        return tuple(argv)
    argv = [python, "-m", "shardgate", "node", "--host", host, "--port", str(port)]
    argv += ["--maxmemory", maxmemory]
    if maxmemory_policy:
        argv += ["--maxmemory-policy", maxmemory_policy]
    if metrics_port:
        argv += ["--metrics-port", str(metrics_port)]
    if replicaof:
        argv += ["--replicaof", replicaof]
    return tuple(argv)


def proxy_argv(
    *,
    host: str,
    port: int,
    metrics_port: int | None,
    config: str | None = None,
    backends: Sequence[str] = (),
    workers: int = 1,
    name: str | None = None,
    python: str = sys.executable,
) -> tuple[str, ...]:
    argv = [python, "-m", "shardgate", "proxy", "--host", host, "--port", str(port)]
    if name:
        argv += ["--name", name]  # how the sentinels' status shows this proxy
    if config:
        argv += ["--config", config]
    if backends:
        argv += ["--backends", ",".join(backends)]
    if workers > 1:
        argv += ["--workers", str(workers)]
    if metrics_port:
        argv += ["--metrics-port", str(metrics_port)]
    return tuple(argv)


def nutcracker_argv(*, config: str, host: str, stats_port: int) -> tuple[str, ...]:
    # -s/-a: every nutcracker needs its own stats port (default 22222 would collide).
    return ("nutcracker", "-c", config, "-s", str(stats_port), "-a", host)


def nutcracker_yaml(*, listen: str, servers: Sequence[str], pool: str = "shardgate") -> str:
    """twemproxy's pool config as a user would write it (ketama, no auto-eject)."""
    lines = [
        f"{pool}:",
        f"  listen: {listen}",
        "  hash: fnv1a_64",
        "  distribution: ketama",
        "  redis: true",
        "  auto_eject_hosts: false",
        "  servers:",
    ]
    lines += [f"   - {server}:1 s{i}" for i, server in enumerate(servers)]
    return "\n".join(lines) + "\n"


def nutcracker_file(name: str) -> str:
    return f"{name}.nutcracker.yml"


def plan_lab(config: LabConfig, *, ports: Sequence[int] = ()) -> LabPlan:
    """Every process and file of a lab, in start order (nodes, sentinels, proxies). ``ports``
    (service ports then metrics ports, in that order) is required when ``base_port`` is 0."""
    topology = config.topology()
    eps = endpoints(topology, target="local", host=config.host, ports=ports)
    rendered = render_endpoints(topology, eps, target="local")
    directory = config.directory
    primaries = {e.shard: e.address for e in eps if e.role == "primary"}
    files: list[tuple[str, str]] = []
    processes: list[ProcessSpec] = []

    def keep(name: str) -> str:
        files.append((name, rendered[name]))
        return os.path.join(directory, name)

    keep(CLUSTER_FILE)
    for ep in eps:
        m_port: int | None = ep.metrics_port
        if ep.role in ("primary", "replica"):
            if config.node_kind == "redis":
                m_port = None  # redis-server has no metrics endpoint
                argv = node_argv(
                    "redis",
                    host=ep.bind,
                    port=ep.port,
                    metrics_port=None,
                    maxmemory=config.maxmemory,
                    maxmemory_policy=config.maxmemory_policy,
                    replicaof=primaries[ep.shard] if ep.role == "replica" else None,
                    directory=directory,
                )
            else:
                path = keep(f"{ep.name}.toml")
                argv = (config.python, "-m", "shardgate", "node", "--config", path)
        elif ep.role == "sentinel":
            path = keep(f"{ep.name}.toml")
            argv = (config.python, "-m", "shardgate", "sentinel", "run", "--config", path)
            argv += ("--metrics-port", str(ep.metrics_port))
        elif config.proxy_kind == "nutcracker":
            yml = nutcracker_file(ep.name)
            servers = list(primaries.values())
            files.append((yml, nutcracker_yaml(listen=ep.address, servers=servers)))
            argv = nutcracker_argv(
                config=os.path.join(directory, yml), host=ep.bind, stats_port=ep.metrics_port
            )
        else:
            argv = proxy_argv(
                host=ep.bind,
                port=ep.port,
                metrics_port=ep.metrics_port,
                config=os.path.join(directory, CLUSTER_FILE),
                workers=config.proxy_workers,
                name=ep.name,
                python=config.python,
            )
        processes.append(
            ProcessSpec(
                name=ep.name,
                role=ep.role,
                shard=ep.shard,
                host=ep.host,
                port=ep.port,
                metrics_port=m_port,
                argv=argv,
                log=f"{ep.name}.log",
            )
        )
    if config.node_kind == "shardgate":
        keep(TARGETS_FILE)  # for a Prometheus of your own: every metrics endpoint, labelled
    return LabPlan(tuple(processes), tuple(files))
