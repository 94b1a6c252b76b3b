"""``shardgate lab up|status|kill|pause|resume|start|down|config``: a local cluster of real
processes, and the config files it (and docker compose) runs on."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from types import FrameType

from shardgate.lab import (
    DEFAULT_READY_TIMEOUT,
    DEFAULT_STOP_GRACE,
    NODE_KINDS,
    PROXY_KINDS,
    Lab,
    LabConfig,
    LabError,
    ProcessStatus,
    up,
)
from shardgate.lab_config import add_config_arguments, run_config

DEFAULT_DIR = ".lab"


def register(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser(
        "lab",
        help="run a local cluster (nodes, sentinels, proxies) for trying things and for tests",
        description="A local cluster of real processes on this machine; see docs/lab.md.",
    )
    verbs = lab.add_subparsers(dest="verb", metavar="VERB")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir",
        default=DEFAULT_DIR,
        help=f"lab directory: state, logs, configs (default {DEFAULT_DIR})",
    )

    p = verbs.add_parser("up", parents=[common], help="start the cluster and print its endpoints")
    p.add_argument("--shards", type=int, default=3, help="number of shards (default 3)")
    p.add_argument("--replicas", type=int, default=1, help="replicas per shard (default 1)")
    p.add_argument(
        "--sentinels",
        type=int,
        default=None,
        help="sentinels watching the shards, quorum a majority; 0 = a static lab, nodes not "
        "managed (default 3 with shardgate nodes, else 0)",
    )
    p.add_argument(
        "--proxies",
        type=int,
        default=2,
        help="proxies (proxy0, proxy1, ...), following the sentinels (default 2)",
    )
    p.add_argument(
        "--base-port",
        type=int,
        default=7000,
        help="proxies on base.., sentinels on base+50.., nodes on base+100.., metrics on "
        "port+1000; 0 = OS-assigned (default 7000)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address every process binds (default 127.0.0.1)"
    )
    p.add_argument(
        "--node-command",
        choices=NODE_KINDS,
        default="shardgate",
        help="store nodes: shardgate nodes, or stock redis-server processes (default shardgate)",
    )
    p.add_argument(
        "--proxy-command",
        choices=PROXY_KINDS,
        default="shardgate",
        help="the proxies: shardgate, nutcracker (twemproxy, as a stand-in) or none "
        "(default shardgate)",
    )
    p.add_argument("--proxy-workers", type=int, default=1, help="proxy --workers (default 1)")
    p.add_argument("--maxmemory", default="256mb", help="each node's maxmemory (default 256mb)")
    p.add_argument("--maxmemory-policy", default=None, help="each node's eviction policy")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_READY_TIMEOUT,
        help="seconds each step of startup may take: PING, then roles and topologies "
        f"(default {DEFAULT_READY_TIMEOUT:g})",
    )
    p.add_argument(
        "--foreground",
        action="store_true",
        help="stay attached; Ctrl-C or SIGTERM stops everything (what `make lab` runs)",
    )
    p.set_defaults(func=run)

    p = verbs.add_parser("status", parents=[common], help="show each process, its role and state")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=run)

    for verb, text in (
        ("kill", "SIGKILL a process (and its process group)"),
        ("pause", "SIGSTOP a process: it stays connected but answers nothing"),
        ("resume", "SIGCONT a paused process"),
        ("start", "start a killed process again, same port and log"),
    ):
        p = verbs.add_parser(verb, parents=[common], help=text)
        p.add_argument("name", metavar="NAME", help="process name, as `lab status` shows it")
        p.set_defaults(func=run)

    p = verbs.add_parser(
        "config",
        help="write the config files of a lab topology (compose/config is --target compose)",
        description="Render the files `lab up` writes (--target local) or the ones the compose "
        "services mount (--target compose). tests/compose fails when compose/config drifts.",
    )
    add_config_arguments(p)
    p.set_defaults(func=run)

    p = verbs.add_parser("down", parents=[common], help="stop everything the lab started")
    p.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_STOP_GRACE,
        help=f"seconds between SIGTERM and SIGKILL (default {DEFAULT_STOP_GRACE:g})",
    )
    p.set_defaults(func=run)
    lab.set_defaults(func=run, verb=None, lab_parser=lab)


def run(args: argparse.Namespace) -> int:
    if args.verb is None:
        args.lab_parser.print_help()
        return 2
    try:
        if args.verb == "up":
            return _up(args)
        if args.verb == "config":
            return run_config(args, prog="shardgate lab config")
        lab = Lab.load(args.dir)
        if args.verb == "status":
            return _status(lab, as_json=args.json)
        if args.verb == "down":
            return _down(lab, grace=args.grace)
        if args.verb == "start":
            rec = lab.restart(args.name)
            print(f"{args.name}: started (pid {rec.pid}) on {rec.spec.address}")
            return 0
        action = {"kill": lab.kill, "pause": lab.pause, "resume": lab.resume}[args.verb]
        action(args.name)
        print(f"{args.name}: {args.verb} (pid {lab.record(args.name).pid})")
        return 0
    except LabError as exc:
        print(f"shardgate lab {args.verb}: {exc}", file=sys.stderr)
        return 1


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def _up(args: argparse.Namespace) -> int:
    sentinels = args.sentinels
    if sentinels is None:
        sentinels = 3 if args.node_command == "shardgate" else 0
    config = LabConfig(
        directory=args.dir,
        shards=args.shards,
        replicas=args.replicas,
        sentinels=sentinels,
        proxies=args.proxies,
        base_port=args.base_port,
        host=args.host,
        node_kind=args.node_command,
        proxy_kind=args.proxy_command,
        proxy_workers=args.proxy_workers,
        maxmemory=args.maxmemory,
        maxmemory_policy=args.maxmemory_policy,
    )
    if args.foreground:
        # Installed before anything starts, so a SIGTERM during startup also cleans up.
        signal.signal(signal.SIGTERM, _raise_stop)
        signal.signal(signal.SIGINT, _raise_stop)
    started = time.monotonic()
    try:
        lab = up(config, timeout=args.timeout, die_with_parent=args.foreground)
    except _Stop:
        return 130
    elapsed = time.monotonic() - started
    rows = lab.status(probe_roles=False)
    _print_table(rows)
    print(f"up in {elapsed:.1f} s; logs, configs and state in {lab.directory}")
    _print_endpoints(rows, args.dir)
    if not args.foreground:
        print(f"stop it with: shardgate lab down --dir {args.dir}")
        return 0
    print("running in the foreground; Ctrl-C stops everything", flush=True)
    reported: set[str] = set()
    try:
        while True:
            if not lab.state_path.exists():
                # `lab down` from another shell removed the lab's state: nothing left to watch.
                print("the lab was stopped elsewhere (lab down)", flush=True)
                break
            for row in lab.status(probe_roles=False):
                if not row.alive and row.name not in reported:
                    reported.add(row.name)
                    print(
                        f"{row.name} (pid {row.pid}) is gone; see {lab.directory / (row.name + '.log')}",
                        flush=True,
                    )
                elif row.alive:
                    reported.discard(row.name)
            time.sleep(0.5)
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("\nstopping the lab ...", flush=True)
        killed = lab.down()
        print("stopped" + (f" (SIGKILL needed for {', '.join(killed)})" if killed else ""))
    return 0


def _redis_cli(host: str, port: int) -> str:
    return f"redis-cli -p {port}" if host == "127.0.0.1" else f"redis-cli -h {host} -p {port}"


def _print_endpoints(rows: list[ProcessStatus], directory: str) -> None:
    """Proxies first (where clients go), then sentinels (where operators look)."""
    proxies = [r for r in rows if r.role == "proxy"]
    sentinels = [r for r in rows if r.role == "sentinel"]
    for r in proxies:
        print(f"{r.name}: {_redis_cli(r.host, r.port)}")
    if not proxies:
        first = rows[0]
        print(f"no proxy; a node: {_redis_cli(first.host, first.port)}")
    for r in sentinels:
        print(f"{r.name}: {_redis_cli(r.host, r.port)}")
    if sentinels:
        s = sentinels[0]
        host = "" if s.host == "127.0.0.1" else f" --host {s.host}"
        print(f"failover state: shardgate sentinel status{host} --port {s.port}")
        dir_opt = "" if directory == DEFAULT_DIR else f" --dir {directory}"
        primary = next((r.name for r in rows if r.role == "primary"), None)
        if primary:
            print(f"failover drill: shardgate lab kill {primary}{dir_opt}")


def _status(lab: Lab, *, as_json: bool) -> int:
    rows = lab.status()
    if as_json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
        return 0
    if not rows:
        print(f"no lab in {lab.directory}")
        return 0
    _print_table(rows)
    return 0


def _print_table(rows: list[ProcessStatus]) -> None:
    header = ("NAME", "ROLE", "SHARD", "ADDRESS", "METRICS", "PID", "STATE")
    table = [
        (
            r.name,
            r.role,
            r.shard or "-",
            f"{r.host}:{r.port}",
            str(r.metrics_port) if r.metrics_port else "-",
            str(r.pid),
            r.state,
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in (header, *table)) for i in range(len(header))]
    for row in (header, *table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _down(lab: Lab, *, grace: float) -> int:
    if not lab.records:
        print(f"nothing to stop in {lab.directory}")
        return 0
    names = list(lab.records)
    killed = lab.down(grace=grace)
    print(
        f"stopped {', '.join(names)}"
        + (f" (SIGKILL needed for {', '.join(killed)})" if killed else "")
    )
    return 0
