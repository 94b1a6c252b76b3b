"""The shape of a lab cluster, its names and ports, and the config files it runs on (pure).

How it works
- ``LabTopology`` is the cluster's shape: shards, replicas per shard, sentinels, proxies, base
  port and the sentinels' timing rules. The default is the lab's default cluster (issues 5 and
  6): 3 shards x (primary + 1 replica), 3 sentinels, 2 proxies.
- ``endpoints`` lays it out. Names: ``node0`` is shard0's first primary, ``node0-1`` its first
  replica, then ``sentinel0``.., ``proxy0``... Ports for base port B: proxies on B.., sentinels
  on B+50.., store nodes on B+100.. (shard-major, the primary first); every metrics port is its
  process's port + 1000. With base port 0 the caller passes the ports the OS handed out.
- A ``Target`` says how processes find each other: ``local`` (everything on one host, what
  ``shardgate lab up`` runs) or ``compose`` (each process is a compose service reachable by its
  name; stores and proxies bind 0.0.0.0, sentinels bind their service name because it is also
  their identity among peers). Ports are the same in both, so a port means the same process in
  ``make lab`` and in ``docker compose up``.
- ``render`` returns every file as text: ``cluster.toml`` (the proxies' file: the sentinels to
  follow, or with no sentinels the static slot map), ``NODE.toml`` per store node
  (``shardgate node --config``; ``managed = true`` when sentinels assign the roles),
  ``SENTINEL.toml`` per sentinel (``sentinel/config.py``'s format) and ``targets.json``
  (Prometheus file-based discovery with ``process``, ``job`` and ``shard`` labels).

``shardgate.lab_plan`` builds the local lab's processes from these endpoints and files, so
``shardgate lab up`` and ``shardgate lab config --target compose --out compose/config`` (the files
the compose services mount) come from the same code; ``tests/compose/test_config_drift.py``
fails when the committed files differ from what this module renders. Nothing here starts a
process or opens a socket, and nothing here imports the rest of the lab.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import attrs

SLOTS = 16384  # as shardgate.slots; duplicated so planning stays import-light
CLUSTER_FILE = "cluster.toml"
TARGETS_FILE = "targets.json"
NODE_PORT_OFFSET = 100  # store nodes at base+100..: proxies and sentinels never collide with them
SENTINEL_PORT_OFFSET = 50  # sentinels at base+50..
METRICS_PORT_OFFSET = 1000  # metrics port = service port + 1000
MAX_PROXIES = SENTINEL_PORT_OFFSET  # proxies on base..base+49
# A lab fails over in seconds (sentinel/config.py's defaults are 5 s / 30 s): failovers are
# what a lab is for. The failover timeout is also how long a sentinel waits before retrying
# after a split vote (all candidates asked within the same few ms, none got a majority): 3 s
# keeps that rare case short, and a promotion on one machine takes milliseconds, far below it.
SENTINEL_DOWN_AFTER_MS = 1000
SENTINEL_FAILOVER_TIMEOUT_MS = 3000
STATE_DIR = "/var/lib/shardgate"  # compose: the sentinels' named volumes are mounted here
CONFIG_DIR = "/etc/shardgate"  # compose: where ./compose/config is mounted

Target = Literal["local", "compose"]
TARGETS: tuple[Target, ...] = ("local", "compose")
EndpointRole = Literal["primary", "replica", "proxy", "sentinel"]
ShardRow = tuple[str, str, list[str], tuple[int, int]]  # name, primary, replicas, slots


class LabError(ValueError):
    """The lab cannot do what was asked; the message says what and what to do about it."""


def _majority(topology: LabTopology) -> int:
    return topology.sentinels // 2 + 1


@attrs.frozen(slots=True, kw_only=True)
class LabTopology:
    """The shape of a lab cluster; the defaults are the lab's default cluster."""

    shards: int = 3
    replicas: int = 1  # per shard
    sentinels: int = 3
    proxies: int = 2
    base_port: int = 7000  # 0: the OS picks every port (``endpoints(..., ports=...)``)
    maxmemory: str = "256mb"  # the node's default
    maxmemory_policy: str | None = None  # None: the node's default (allkeys-lru)
    quorum: int = attrs.field(default=attrs.Factory(_majority, takes_self=True))
    down_after_ms: int = SENTINEL_DOWN_AFTER_MS
    failover_timeout_ms: int = SENTINEL_FAILOVER_TIMEOUT_MS

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.shards <= 64:
            raise LabError(f"--shards must be between 1 and 64, got {self.shards}")
        if not 0 <= self.replicas <= 8:
            raise LabError(f"--replicas must be between 0 and 8, got {self.replicas}")
        if not 0 <= self.sentinels <= 9:
            raise LabError(f"--sentinels must be between 0 and 9, got {self.sentinels}")
        if not 0 <= self.proxies <= MAX_PROXIES:
            raise LabError(f"--proxies must be between 0 and {MAX_PROXIES}, got {self.proxies}")
        if not (self.base_port == 0 or 1024 <= self.base_port <= 65535 - 2 * METRICS_PORT_OFFSET):
            raise LabError(
                f"--base-port must be 0 (OS-assigned) or 1024..63535, got {self.base_port}"
            )
        if self.sentinels and self.quorum < 1:
            raise LabError(f"quorum must be at least 1, got {self.quorum}")

    @property
    def process_count(self) -> int:
        return self.shards * (1 + self.replicas) + self.sentinels + self.proxies


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


def node_name(shard: int, index: int) -> str:
    """``node0`` is the first node of shard0 (its initial primary); ``node0-1`` its first replica."""
    return f"node{shard}" if index == 0 else f"node{shard}-{index}"


def slot_ranges(shards: int) -> list[tuple[int, int]]:
    """Even split of the slots, as ``Topology.even`` and ``--backends`` do."""
    return [(i * SLOTS // shards, (i + 1) * SLOTS // shards - 1) for i in range(shards)]


def ports_needed(topology: LabTopology) -> int:
    """How many ports a lab uses: a service port each, plus a metrics port each."""
    return 2 * topology.process_count


def endpoints(
    topology: LabTopology,
    *,
    target: Target = "local",
    host: str = "127.0.0.1",
    ports: Sequence[int] = (),
) -> tuple[Endpoint, ...]:
    """Every process in start order: store nodes (shard-major), sentinels, proxies.

    ``ports`` (service ports then metrics ports, in that order) is required when the base port
    is 0, and ignored otherwise."""
    if target not in TARGETS:
        raise LabError(f"unknown target {target!r} ({', '.join(TARGETS)})")
    n = topology.process_count
    b = topology.base_port
    if b == 0:
        if len(ports) != 2 * n:
            raise LabError(f"need {2 * n} ports for this lab, got {len(ports)}")
        service, metrics = list(ports[:n]), list(ports[n:])
    else:
        n_nodes = topology.shards * (1 + topology.replicas)
        service = [b + NODE_PORT_OFFSET + k for k in range(n_nodes)]
        service += [b + SENTINEL_PORT_OFFSET + i for i in range(topology.sentinels)]
        service += [b + i for i in range(topology.proxies)]
        metrics = [p + METRICS_PORT_OFFSET for p in service]

    layout: list[tuple[str, EndpointRole, str | None]] = []
    for i in range(topology.shards):
        for index in range(1 + topology.replicas):
            role: EndpointRole = "primary" if index == 0 else "replica"
            layout.append((node_name(i, index), role, f"shard{i}"))
    layout += [(f"sentinel{i}", "sentinel", None) for i in range(topology.sentinels)]
    layout += [(f"proxy{i}", "proxy", None) for i in range(topology.proxies)]

    out = []
    for (name, role, shard), port, m_port in zip(layout, service, metrics, strict=True):
        if target == "local":
            reach, bind = host, host
        else:  # a compose service is reached by its name; a sentinel's name is its identity
            reach, bind = name, (name if role == "sentinel" else "0.0.0.0")
        out.append(
            Endpoint(
                name=name,
                role=role,
                shard=shard,
                host=reach,
                bind=bind,
                port=port,
                metrics_port=m_port,
            )
        )
    return tuple(out)


def shard_rows(eps: Sequence[Endpoint]) -> list[ShardRow]:
    """The shards of the layout: (name, primary address, replica addresses, slot range)."""
    names = sorted({e.shard for e in eps if e.shard}, key=lambda s: int(s.removeprefix("shard")))
    rows = []
    for name, slots in zip(names, slot_ranges(len(names)), strict=True):
        members = [e for e in eps if e.shard == name]
        primary = next(e.address for e in members if e.role == "primary")
        rows.append((name, primary, [e.address for e in members if e.role == "replica"], slots))
    return rows


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a TOML basic string is a JSON string for what we write


def _shard_tables(rows: Sequence[ShardRow]) -> list[str]:
    lines = []
    for name, primary, replicas, (start, end) in rows:
        lines += [
            "",
            "[[shards]]",
            f"name = {_toml_str(name)}",
            f"primary = {_toml_str(primary)}",
            "replicas = [" + ", ".join(_toml_str(r) for r in replicas) + "]",
            f'slots = ["{start}-{end}"]',
        ]
    return lines


def cluster_toml(rows: Sequence[ShardRow], *, sentinels: Sequence[str] = ()) -> str:
    """The proxies' cluster file (``proxy/config.py``). With sentinels it names them and no slot
    map: the sentinels own the topology (epoch-stamped, changed by failovers), and a proxy
    answers ``-CLUSTERDOWN`` until it holds theirs rather than guess from a stale file. Without
    sentinels it is the static slot map (``shardgate/topology.py``'s TOML form)."""
    if sentinels:
        return (
            "# The proxies follow the sentinels: the topology (epoch, shards, primaries) is theirs;\n"
            "# `shardgate sentinel topology --port PORT` shows it. Rendered by lab_config.py.\n"
            "sentinels = [" + ", ".join(_toml_str(s) for s in sentinels) + "]\n"
        )
    lines = [
        "# A static slot map (no sentinels): slot ranges -> shards (see shardgate/topology.py).",
        "epoch = 1",
        *_shard_tables(rows),
    ]
    return "\n".join(lines) + "\n"


def node_toml(
    ep: Endpoint, *, topology: LabTopology, primary: Endpoint | None, target: Target
) -> str:
    """One store node's config (``storenode/config.py``)."""
    lines = [
        f"# {ep.name}: {ep.role} of {ep.shard}. Rendered by shardgate/lab_config.py; do not edit.",
        f"host = {_toml_str(ep.bind)}",
        f"port = {ep.port}",
        f"metrics_port = {ep.metrics_port}",
        f"maxmemory = {_toml_str(topology.maxmemory)}",
    ]
    if topology.maxmemory_policy:
        lines.append(f"maxmemory_policy = {_toml_str(topology.maxmemory_policy)}")
    if ep.bind != ep.host:
        lines.append(f"announce = {_toml_str(ep.address)}  # how replicas and sentinels see it")
    if primary is not None:
        lines.append(f"replicaof = {_toml_str(primary.address)}")
    if topology.sentinels:
        lines.append("managed = true  # no writes until a sentinel assigns the role (SG.ROLE)")
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
    """One sentinel's config (``sentinel/config.py``): itself, its peers, every shard. A relative
    ``state_file`` is relative to the config file, so the local lab keeps it in its directory."""
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
    lines += _shard_tables(rows)
    return "\n".join(lines) + "\n"


def prometheus_targets(eps: Sequence[Endpoint]) -> str:
    """Prometheus ``file_sd_configs`` JSON: one group per process, labelled with what it is.

    ``role`` is not a label here: a node's role changes with failovers and is its own metric;
    ``job`` groups processes by kind so alerts can say ``up{job="shardgate-node"} == 0``."""
    groups = []
    for ep in eps:
        kind = "node" if ep.role in ("primary", "replica") else ep.role
        labels = {"job": f"shardgate-{kind}", "process": ep.name}
        if ep.shard is not None:
            labels["shard"] = ep.shard
        groups.append({"targets": [f"{ep.host}:{ep.metrics_port}"], "labels": labels})
    return json.dumps(groups, indent=2) + "\n"


def render(
    topology: LabTopology,
    *,
    target: Target = "local",
    host: str = "127.0.0.1",
    ports: Sequence[int] = (),
) -> dict[str, str]:
    """Every config file of the topology: file name -> content."""
    return render_endpoints(
        topology, endpoints(topology, target=target, host=host, ports=ports), target=target
    )


def render_endpoints(
    topology: LabTopology, eps: Sequence[Endpoint], *, target: Target
) -> dict[str, str]:
    """``render`` for a layout already computed (the local lab plans with the same one)."""
    rows = shard_rows(eps)
    sentinels = [e for e in eps if e.role == "sentinel"]
    files: dict[str, str] = {
        CLUSTER_FILE: cluster_toml(rows, sentinels=[s.address for s in sentinels])
    }
    primaries = {e.shard: e for e in eps if e.role == "primary"}
    for ep in eps:
        if ep.role in ("primary", "replica"):
            primary = primaries[ep.shard] if ep.role == "replica" else None
            files[f"{ep.name}.toml"] = node_toml(
                ep, topology=topology, primary=primary, target=target
            )
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


# --- `shardgate lab config` (also `python -m shardgate.lab_config`) ------------------------------

DEFAULT_TOPOLOGY = LabTopology()


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="directory to write the files into")
    parser.add_argument(
        "--target",
        choices=TARGETS,
        default="local",
        help="local: every process on 127.0.0.1 (what `lab up` writes); compose: service names "
        "(what compose/config holds) (default local)",
    )
    d = DEFAULT_TOPOLOGY
    for flag, default, what in (
        ("--shards", d.shards, "number of shards"),
        ("--replicas", d.replicas, "replicas per shard"),
        ("--sentinels", d.sentinels, "sentinels; 0 = static slot map, nodes not managed"),
        ("--proxies", d.proxies, "proxies"),
        ("--base-port", d.base_port, "proxies on base.., sentinels base+50.., nodes base+100.."),
    ):
        parser.add_argument(flag, type=int, default=default, help=f"{what} (default {default})")


def run_config(args: argparse.Namespace, *, prog: str) -> int:
    """Render and write; errors go to stderr with exit status 2."""
    try:
        if args.base_port == 0:
            raise LabError("--base-port must be a fixed port for config files")
        topology = LabTopology(
            shards=args.shards,
            replicas=args.replicas,
            sentinels=args.sentinels,
            proxies=args.proxies,
            base_port=args.base_port,
        )
        files = render(topology, target=args.target)
    except LabError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    for path in write(files, Path(args.out)):
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shardgate.lab_config",
        description="Render the lab's config files (the ones compose/config holds).",
    )
    add_config_arguments(parser)
    return run_config(parser.parse_args(argv), prog="lab_config")


if __name__ == "__main__":
    sys.exit(main())
