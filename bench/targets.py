"""The endpoints the comparison measures, started together as one lab of processes.

Everything runs at once so runs can alternate between endpoints (A B A B) on the same machine
state; idle processes cost nothing measurable. Each endpoint names the process whose CPU counts
(for a proxy, its process group, so ``--workers`` children count too).

    a  redis-server alone
    b  nutcracker (twemproxy) → 2 redis-servers (r1, r2)
    c  shardgate proxy → the same 2 redis-servers
    d  shardgate proxy → 2 shardgate nodes
    e  shardgate proxy --workers 2 → the same 2 redis-servers as (b) and (c)
    n  a shardgate node alone (compare with a)
    c0 with ``--base-tree DIR`` only: (c) run from another checkout's source (an A/B of two
       commits: ``git archive REV | tar -x -C DIR``), on the same 2 redis-servers
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable

import attrs

from shardgate.lab import (
    METRICS_PORT_OFFSET,
    Lab,
    LabError,
    ProcessSpec,
    free_ports,
    node_argv,
    nutcracker_argv,
    nutcracker_yaml,
    proxy_argv,
)

HOST = "127.0.0.1"
MAXMEMORY = "4gb"  # far above what the benchmark stores: no eviction during a run
READY_TIMEOUT = 60.0  # seconds


@attrs.frozen(slots=True)
class Endpoint:
    key: str  # a, b, c, ... as the issues name them
    label: str
    process: str  # the lab process whose CPU is measured
    host: str | None = None
    port: int | None = None
    pgid: int | None = None
    unavailable: str | None = None  # why it cannot run here

    @property
    def available(self) -> bool:
        return self.unavailable is None


ENDPOINTS = (
    ("a", "redis-server", "r0"),
    ("b", "nutcracker → 2 redis-server", "nutcracker"),
    ("c", "shardgate proxy → 2 redis-server", "proxy-redis"),
    ("d", "shardgate proxy → 2 shardgate nodes", "proxy-nodes"),
    ("e", "shardgate proxy --workers 2 → 2 redis-server", "proxy-workers"),
    ("n", "shardgate node", "n0"),
    ("c0", "shardgate proxy from --base-tree → 2 redis-server", "proxy-base"),
)


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def missing_pieces() -> dict[str, str]:
    """Process name → why it cannot start on this machine."""
    why: dict[str, str] = {}
    proxy = None if _has_module("proxy.cli") else "shardgate proxy not available (no proxy/cli.py)"
    node = None if _has_module("storenode.cli") else "shardgate node not available"
    for name in ("r0", "r1", "r2"):
        if shutil.which("redis-server") is None:
            why[name] = "redis-server not installed"
    if shutil.which("nutcracker") is None:
        why["nutcracker"] = "nutcracker not installed"
    for name in ("proxy-redis", "proxy-workers", "proxy-nodes"):
        if proxy:
            why[name] = proxy
    for name in ("n0", "n1", "n2"):
        if node:
            why[name] = node
    return why


def _specs(
    directory: str, ports: list[int], base_tree: str | None
) -> list[tuple[ProcessSpec, tuple[str, ...]]]:
    """(spec, names it depends on) for every process, in start order."""
    it = iter(ports)
    specs: list[tuple[ProcessSpec, tuple[str, ...]]] = []
    addr: dict[str, str] = {}

    def add(
        name: str,
        role: str,
        make: Callable[[int, int], tuple[str, ...]],
        deps: tuple[str, ...] = (),
    ) -> None:
        port = next(it)
        metrics = port + METRICS_PORT_OFFSET if role != "redis" else None
        spec = ProcessSpec(
            name=name,
            role="proxy" if role == "proxy" else "primary",
            shard=None,
            host=HOST,
            port=port,
            metrics_port=metrics,
            argv=make(port, metrics or 0),
            log=f"{name}.log",
        )
        addr[name] = spec.address
        specs.append((spec, deps))

    def redis(port: int, _m: int) -> tuple[str, ...]:
        return node_argv(
            "redis",
            host=HOST,
            port=port,
            metrics_port=None,
            maxmemory=MAXMEMORY,
            directory=directory,
        )

    def node(port: int, metrics: int) -> tuple[str, ...]:
        return node_argv(
            "shardgate", host=HOST, port=port, metrics_port=metrics, maxmemory=MAXMEMORY
        )

    for name in ("r0", "r1", "r2"):
        add(name, "redis", redis)
    for name in ("n0", "n1", "n2"):
        add(name, "node", node)
    redis_pair = (addr["r1"], addr["r2"])
    node_pair = (addr["n1"], addr["n2"])
    add(
        "nutcracker",
        "proxy",
        lambda port, m: nutcracker_argv(
            config=f"{directory}/nutcracker.yml", host=HOST, stats_port=m
        ),
        ("r1", "r2"),
    )
    add(
        "proxy-redis",
        "proxy",
        lambda port, m: proxy_argv(host=HOST, port=port, metrics_port=m, backends=redis_pair),
        ("r1", "r2"),
    )
    add(
        "proxy-nodes",
        "proxy",
        lambda port, m: proxy_argv(host=HOST, port=port, metrics_port=m, backends=node_pair),
        ("n1", "n2"),
    )
    add(
        "proxy-workers",
        "proxy",
        lambda port, m: proxy_argv(
            host=HOST, port=port, metrics_port=m, backends=redis_pair, workers=2
        ),
        ("r1", "r2"),
    )
    if base_tree is not None:
        # The other checkout's modules come first on the path: its proxy, our interpreter.
        add(
            "proxy-base",
            "proxy",
            lambda port, m: (
                "env",
                f"PYTHONPATH={base_tree}",
                *proxy_argv(host=HOST, port=port, metrics_port=m, backends=redis_pair),
            ),
            ("r1", "r2"),
        )
    return specs


def start_all(
    lab: Lab, *, echo: Callable[[str], None] = print, base_tree: str | None = None
) -> dict[str, Endpoint]:
    """Start every process that can run here; return the endpoints, unavailable ones marked."""
    directory = str(lab.directory)
    lab.directory.mkdir(parents=True, exist_ok=True)
    # Ports from the OS, each well below 64535 so port+1000 (metrics) is valid too.
    ports = [p for p in free_ports(40, HOST) if p + METRICS_PORT_OFFSET < 65535][:11]
    specs = _specs(directory, ports, base_tree)
    by_name = {spec.name: spec for spec, _ in specs}
    (lab.directory / "nutcracker.yml").write_text(
        nutcracker_yaml(
            listen=by_name["nutcracker"].address,
            servers=[by_name["r1"].address, by_name["r2"].address],
        )
    )
    why = missing_pieces()
    if base_tree is None:
        why["proxy-base"] = "no --base-tree given"
    for spec, deps in specs:
        blocked = next((why[d] for d in deps if d in why), None)
        if spec.name in why or blocked:
            why.setdefault(spec.name, blocked or "")
            continue
        try:
            lab.start(spec, die_with_parent=True)
            lab.wait_ready([spec.name], timeout=READY_TIMEOUT)
        except LabError as exc:
            first = str(exc).splitlines()[0]
            why[spec.name] = f"failed to start: {first}"
            echo(f"bench: {spec.name} did not start:\n{exc}")
            if spec.name in lab.records:
                lab.stop([spec.name], grace=1.0)
    endpoints = {}
    for key, label, process in ENDPOINTS:
        if process in why:
            endpoints[key] = Endpoint(
                key, label, process, unavailable=why[process] or "not available"
            )
        else:
            rec = lab.record(process)
            endpoints[key] = Endpoint(key, label, process, rec.spec.host, rec.spec.port, rec.pid)
    return endpoints
