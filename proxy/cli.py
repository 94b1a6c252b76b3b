"""``shardgate proxy``: run the sharding gateway (and, with --workers N, N processes on one port)."""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys

import trio

from proxy.config import ProxyConfig
from proxy.replicas import ReadFrom
from shardgate.config import ConfigError
from shardgate.logs import configure, log_event
from shardgate.topology import NodeAddress, TopologyError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("proxy", help="run the sharding proxy clients talk to")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7000, help="port to listen on (default 7000)")
    p.add_argument("--config", metavar="FILE", help="cluster TOML: shards and slot ranges")
    p.add_argument(
        "--backends", metavar="HOST:PORT,...", help="primaries; the 16384 slots are split evenly"
    )
    p.add_argument(
        "--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)"
    )
    p.add_argument("--requirepass", metavar="PW", help="password clients must AUTH with")
    p.add_argument("--backend-password", metavar="PW", help="password sent to every backend")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    p.add_argument("--metrics-host", default="127.0.0.1")
    p.add_argument("--timeout-ms", type=int, default=1000, help="per-request timeout (1000)")
    p.add_argument("--backend-connections", type=int, default=1, help="connections per node (1)")
    p.add_argument("--maxclients", type=int, default=10000, help="client limit (10000)")
    p.add_argument(
        "--sentinels",
        metavar="HOST:PORT,...",
        help="follow these sentinels' topology (SG.TOPOLOGY + subscription)",
    )
    p.add_argument("--sentinel-password", metavar="PW", help="password for the sentinels")
    p.add_argument("--name", help="name reported to the sentinels (default host:port)")
    p.add_argument(
        "--read-from",
        choices=[m.value for m in ReadFrom],
        help="where read-only commands go (default: the cluster file's, else primary)",
    )
    p.add_argument(
        "--max-replica-lag-ms",
        type=int,
        help="skip replicas further behind than this (default 1000; 0 = no limit)",
    )
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> ProxyConfig:
    backends: tuple[NodeAddress, ...] = ()
    if args.backends:
        backends = tuple(NodeAddress.parse(b) for b in args.backends.split(",") if b.strip())
    sentinels: tuple[NodeAddress, ...] = ()
    if args.sentinels:
        sentinels = tuple(NodeAddress.parse(b) for b in args.sentinels.split(",") if b.strip())
    return ProxyConfig(
        host=args.host,
        port=args.port,
        config_path=args.config,
        backends=backends,
        workers=args.workers,
        requirepass=args.requirepass,
        backend_password=args.backend_password,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        timeout=args.timeout_ms / 1000,
        connections_per_backend=args.backend_connections,
        max_clients=args.maxclients,
        reuse_port=args.reuse_port or args.workers > 1,
        worker=args.worker,
        sentinels=sentinels,
        sentinel_password=args.sentinel_password,
        name=args.name,
        read_from=ReadFrom(args.read_from) if args.read_from else None,
        max_replica_lag_ms=args.max_replica_lag_ms,
    )


def run(args: argparse.Namespace) -> int:
    configure(role="proxy", fmt=args.log_format)
    try:
        config = build_config(args)
        config.load_settings()  # fail early with a clear message
    except (ConfigError, TopologyError) as exc:
        print(f"shardgate proxy: {exc}", file=sys.stderr)
        return 2
    if config.workers > 1:
        return _run_workers(args, config.workers)
    return trio.run(_main, config)


async def _main(config: ProxyConfig) -> int:
    from proxy.server import serve

    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(serve, config)
        print(f"shardgate proxy listening on {host}:{port}", flush=True)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log_event("shutdown", signal=signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    return 0


def _worker_argv(args: argparse.Namespace, index: int) -> list[str]:
    """The command line of worker ``index``: the same options, one process, SO_REUSEPORT."""
    argv = [sys.executable, "-m", "proxy", "--host", args.host, "--port", str(args.port)]
    for flag, value in (
        ("--config", args.config),
        ("--backends", args.backends),
        ("--requirepass", args.requirepass),
        ("--backend-password", args.backend_password),
        ("--metrics-host", args.metrics_host),
        ("--timeout-ms", args.timeout_ms),
        ("--backend-connections", args.backend_connections),
        ("--maxclients", args.maxclients),
        ("--log-format", args.log_format),
        ("--sentinels", args.sentinels),
        ("--sentinel-password", args.sentinel_password),
        ("--read-from", args.read_from),
        ("--max-replica-lag-ms", args.max_replica_lag_ms),
    ):
        if value is not None:
            argv += [flag, str(value)]
    if args.metrics_port is not None:
        argv += ["--metrics-port", str(args.metrics_port + index)]  # one port per worker
    # Each worker reports to the sentinels under its own name: they route independently.
    argv += ["--name", f"{args.name or f'{args.host}:{args.port}'}#{index}"]
    return [*argv, "--workers", "1", "--reuse-port", "--worker"]


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM when the parent dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _run_workers(args: argparse.Namespace, workers: int) -> int:
    """Start N single-worker processes on one port and forward SIGHUP/SIGTERM/SIGINT to them.
    When one worker exits, the others are stopped too: a supervisor then restarts the whole
    proxy instead of it running silently at reduced capacity."""
    procs: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(s, forward)
    for i in range(workers):
        procs.append(
            subprocess.Popen(
                _worker_argv(args, i),
                stdout=subprocess.DEVNULL if i else None,
                preexec_fn=_die_with_parent,
            )
        )
    log_event("workers_started", workers=workers, pids=",".join(str(p.pid) for p in procs))
    pid, status = os.wait()
    code = os.waitstatus_to_exitcode(status)
    log_event("worker_exited", pid=pid, code=code)
    for p in procs:
        if p.pid != pid and p.poll() is None:
            p.terminate()
    for p in procs:
        if p.pid != pid:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return 0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else 1
