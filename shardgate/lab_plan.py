"""Planning a lab: every process of a local cluster and the files they read (sans-I/O).

From a ``LabConfig`` (and, when the OS picks the ports, the list of ports it picked)
``plan_lab`` computes every process to start (name, role, shard, address, metrics port, argv,
log file) and the files to write: the proxy's ``cluster.toml``, each sentinel's config, and
nutcracker's YAML when nutcracker stands in for the proxy. Nothing is started and nothing is
read from the machine, so plans are tested on their own; ``shardgate.lab`` runs them.

Port layout for base port B: the proxy on B, sentinels on B+50.., store nodes on B+100..
(shard-major, the primary first); every metrics port is its process's port + 1000.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from typing import Literal

import attrs

SLOTS = 16384  # as shardgate.slots; duplicated so planning stays import-light
CLUSTER_FILE = "cluster.toml"
NUTCRACKER_FILE = "nutcracker.yml"
NODE_PORT_OFFSET = 100  # nodes at base+100.. so a proxy port range never collides with nodes
SENTINEL_PORT_OFFSET = 50  # sentinels at base+50..
# A lab fails over in seconds (sentinel defaults are 5 s / 30 s): failovers are what it is for.
SENTINEL_DOWN_AFTER_MS = 1000
SENTINEL_FAILOVER_TIMEOUT_MS = 10_000
METRICS_PORT_OFFSET = 1000  # metrics port = service port + 1000

NodeKind = Literal["shardgate", "redis"]
ProxyKind = Literal["shardgate", "nutcracker", "none"]
Role = Literal["primary", "replica", "proxy", "sentinel"]
NODE_KINDS: tuple[NodeKind, ...] = ("shardgate", "redis")
PROXY_KINDS: tuple[ProxyKind, ...] = ("shardgate", "nutcracker", "none")


class LabError(Exception):
    """The lab cannot do what was asked; the message says what and what to do about it."""


# --- planning (pure) ---------------------------------------------------------------------------


@attrs.frozen(slots=True, kw_only=True)
class LabConfig:
    directory: str = ".lab"
    shards: int = 3
    replicas: int = 0  # per shard
    base_port: int = 7000  # 0: the OS picks every port
    host: str = "127.0.0.1"
    node_kind: NodeKind = "shardgate"
    proxy_kind: ProxyKind = "shardgate"
    proxy_workers: int = 1
    maxmemory: str = "256mb"  # the node's default
    maxmemory_policy: str | None = None
    sentinels: int = 0
    python: str = sys.executable

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.shards <= 64:
            raise LabError(f"--shards must be between 1 and 64, got {self.shards}")
        if not 0 <= self.replicas <= 8:
            raise LabError(f"--replicas must be between 0 and 8, got {self.replicas}")
        if not (self.base_port == 0 or 1024 <= self.base_port <= 65535 - 2 * METRICS_PORT_OFFSET):
            raise LabError(
                f"--base-port must be 0 (OS-assigned) or 1024..63535, got {self.base_port}"
            )
        if self.node_kind not in NODE_KINDS:
            raise LabError(f"unknown node command {self.node_kind!r} ({', '.join(NODE_KINDS)})")
        if self.proxy_kind not in PROXY_KINDS:
            raise LabError(f"unknown proxy command {self.proxy_kind!r} ({', '.join(PROXY_KINDS)})")
        if self.proxy_workers < 1:
            raise LabError("--proxy-workers must be at least 1")
        if not 0 <= self.sentinels <= 9:
            raise LabError(f"--sentinels must be between 0 and 9, got {self.sentinels}")
        if self.sentinels and self.node_kind != "shardgate":
            raise LabError("sentinels need shardgate nodes (they speak SG.* to them)")


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


def ports_needed(config: LabConfig) -> int:
    """How many ports a lab uses: a service port each, plus a metrics port each."""
    processes = config.shards * (1 + config.replicas) + (config.proxy_kind != "none")
    return 2 * (processes + config.sentinels)


def node_name(shard: int, index: int) -> str:
    """``node0`` is the first node of shard0 (its initial primary); ``node0-1`` its first replica."""
    return f"node{shard}" if index == 0 else f"node{shard}-{index}"


def slot_ranges(shards: int) -> list[tuple[int, int]]:
    """Even split of the slots, as ``Topology.even`` and ``--backends`` do."""
    return [(i * SLOTS // shards, (i + 1) * SLOTS // shards - 1) for i in range(shards)]


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
    python: str = sys.executable,
) -> tuple[str, ...]:
    argv = [python, "-m", "shardgate", "proxy", "--host", host, "--port", str(port)]
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


def cluster_toml(shards: Sequence[tuple[str, str, Sequence[str], tuple[int, int]]]) -> str:
    """The cluster config in ``shardgate.topology``'s TOML form: (name, primary, replicas, slots)."""
    lines = [
        "# Written by `shardgate lab up`: slot ranges → shards (see shardgate/topology.py).",
        "epoch = 1",
    ]
    for name, primary, replicas, (start, end) in shards:
        lines += ["", "[[shards]]", f'name = "{name}"', f'primary = "{primary}"']
        lines.append("replicas = [" + ", ".join(f'"{r}"' for r in replicas) + "]")
        lines.append(f'slots = ["{start}-{end}"]')
    return "\n".join(lines) + "\n"


def sentinel_toml(
    name: str,
    host: str,
    port: int,
    sentinels: Sequence[tuple[str, int, int]],
    shards: Sequence[tuple[str, str, Sequence[str], tuple[int, int]]],
    directory: str,
) -> str:
    """One sentinel's config (see sentinel/config.py): itself, its peers, every shard."""
    lines = [
        "# Written by `shardgate lab up` (see sentinel/config.py).",
        f'id = "{name}"',
        f'listen = "{host}:{port}"',
        f"quorum = {len(sentinels) // 2 + 1}",
        f"down_after_ms = {SENTINEL_DOWN_AFTER_MS}",
        f"failover_timeout_ms = {SENTINEL_FAILOVER_TIMEOUT_MS}",
        f'state_file = "{os.path.join(directory, name + ".state")}"',
    ]
    for peer, peer_port, _ in sentinels:
        if peer != name:
            lines += ["", "[[peers]]", f'id = "{peer}"', f'address = "{host}:{peer_port}"']
    for shard, primary, replicas, (start, end) in shards:
        lines += ["", "[[shards]]", f'name = "{shard}"', f'primary = "{primary}"']
        lines.append("replicas = [" + ", ".join(f'"{r}"' for r in replicas) + "]")
        lines.append(f'slots = ["{start}-{end}"]')
    return "\n".join(lines) + "\n"


def plan_lab(config: LabConfig, *, ports: Sequence[int] = ()) -> LabPlan:
    """Every process and file of a lab. ``ports`` (service ports then metrics ports, in process
    order: nodes shard-major, the proxy, the sentinels) is required when ``base_port`` is 0."""
    n_nodes = config.shards * (1 + config.replicas)
    has_proxy = config.proxy_kind != "none"
    n_procs = n_nodes + has_proxy + config.sentinels
    if config.base_port == 0:
        if len(ports) != 2 * n_procs:
            raise LabError(f"need {2 * n_procs} ports for this lab, got {len(ports)}")
        service = list(ports[:n_procs])
        metrics = list(ports[n_procs:])
    else:
        b = config.base_port
        service = [b + NODE_PORT_OFFSET + k for k in range(n_nodes)] + ([b] if has_proxy else [])
        service += [b + SENTINEL_PORT_OFFSET + i for i in range(config.sentinels)]
        metrics = [p + METRICS_PORT_OFFSET for p in service]
    directory = config.directory
    host = config.host
    processes: list[ProcessSpec] = []
    shard_rows: list[tuple[str, str, list[str], tuple[int, int]]] = []
    k = 0
    for shard, slots in enumerate(slot_ranges(config.shards)):
        shard_name = f"shard{shard}"
        primary = f"{host}:{service[k]}"
        replicas: list[str] = []
        for index in range(1 + config.replicas):
            port = service[k]
            m_port = None if config.node_kind == "redis" else metrics[k]
            name = node_name(shard, index)
            processes.append(
                ProcessSpec(
                    name=name,
                    role="primary" if index == 0 else "replica",
                    shard=shard_name,
                    host=host,
                    port=port,
                    metrics_port=m_port,
                    argv=node_argv(
                        config.node_kind,
                        host=host,
                        port=port,
                        metrics_port=m_port,
                        maxmemory=config.maxmemory,
                        maxmemory_policy=config.maxmemory_policy,
                        replicaof=primary if index else None,
                        directory=directory,
                        python=config.python,
                    ),
                    log=f"{name}.log",
                )
            )
            if index:
                replicas.append(f"{host}:{port}")
            k += 1
        shard_rows.append((shard_name, primary, replicas, slots))
    cluster_path = os.path.join(directory, CLUSTER_FILE)
    files = [(CLUSTER_FILE, cluster_toml(shard_rows))]
    if has_proxy:
        port, m_port = service[k], metrics[k]
        if config.proxy_kind == "nutcracker":
            yml = os.path.join(directory, NUTCRACKER_FILE)
            primaries = [row[1] for row in shard_rows]
            files.append(
                (NUTCRACKER_FILE, nutcracker_yaml(listen=f"{host}:{port}", servers=primaries))
            )
            argv = nutcracker_argv(config=yml, host=host, stats_port=m_port)
        else:
            argv = proxy_argv(
                host=host,
                port=port,
                metrics_port=m_port,
                config=cluster_path,
                workers=config.proxy_workers,
                python=config.python,
            )
        processes.append(
            ProcessSpec(
                name="proxy",
                role="proxy",
                shard=None,
                host=host,
                port=port,
                metrics_port=m_port,
                argv=argv,
                log="proxy.log",
            )
        )
        k += 1
    sentinels = [(f"sentinel{i}", service[k + i], metrics[k + i]) for i in range(config.sentinels)]
    for name, port, m_port in sentinels:
        config_file = f"{name}.toml"
        files.append(
            (config_file, sentinel_toml(name, host, port, sentinels, shard_rows, directory))
        )
        processes.append(
            ProcessSpec(
                name=name,
                role="sentinel",
                shard=None,
                host=host,
                port=port,
                metrics_port=m_port,
                argv=(
                    config.python,
                    "-m",
                    "shardgate",
                    "sentinel",
                    "run",
                    "--config",
                    os.path.join(directory, config_file),
                    "--metrics-port",
                    str(m_port),
                ),
                log=f"{name}.log",
            )
        )
    return LabPlan(tuple(processes), tuple(files))
