"""``shardgate lab up|status|kill|pause|resume|start|down``: a local cluster of real processes."""

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

DEFAULT_DIR = ".lab"


def register(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser(
        "lab",
        help="run a local cluster (store nodes + proxy) for trying things and for tests",
        description="A local cluster of real processes on this machine; see docs/lab.md.",
    )
    verbs = lab.add_subparsers(dest="verb", metavar="VERB")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir",
        default=DEFAULT_DIR,
        help=f"lab directory: state, logs, configs (default {DEFAULT_DIR})",
    )

    p = verbs.add_parser("up", parents=[common], help="start the cluster and print its endpoint")
    p.add_argument("--shards", type=int, default=3, help="number of shards (default 3)")
    p.add_argument("--replicas", type=int, default=0, help="replicas per shard (default 0)")
    p.add_argument(
        "--base-port",
        type=int,
        default=7000,
        help="proxy port; nodes on base+100.., metrics on port+1000; 0 = OS-assigned (default 7000)",
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
        help="the proxy: shardgate, nutcracker (twemproxy, as a stand-in) or none (default shardgate)",
    )
    p.add_argument("--proxy-workers", type=int, default=1, help="proxy --workers (default 1)")
    p.add_argument(
        "--sentinels",
        type=int,
        default=0,
        help="sentinels watching the shards, quorum a majority (default 0; needs shardgate nodes)",
    )
    p.add_argument("--maxmemory", default="256mb", help="each node's maxmemory (default 256mb)")
    p.add_argument("--maxmemory-policy", default=None, help="each node's eviction policy")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_READY_TIMEOUT,
        help=f"seconds each process gets to answer PING (default {DEFAULT_READY_TIMEOUT:g})",
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
    config = LabConfig(
        directory=args.dir,
        shards=args.shards,
        replicas=args.replicas,
        base_port=args.base_port,
        host=args.host,
        node_kind=args.node_command,
        proxy_kind=args.proxy_command,
        proxy_workers=args.proxy_workers,
        maxmemory=args.maxmemory,
        maxmemory_policy=args.maxmemory_policy,
        sentinels=args.sentinels,
    )
    if args.foreground:
        # Installed before anything starts, so a SIGTERM during startup also cleans up.
        signal.signal(signal.SIGTERM, _raise_stop)
        signal.signal(signal.SIGINT, _raise_stop)
    try:
        lab = up(config, timeout=args.timeout, die_with_parent=args.foreground)
    except _Stop:
        return 130
    _print_table(lab.status(probe_roles=False))
    print(f"logs and state: {lab.directory}")
    for row in lab.status(probe_roles=False):
        if row.role in ("proxy", "sentinel"):
            print(f"{row.name}: redis-cli -h {row.host} -p {row.port}")
    if not any(r.role == "proxy" for r in lab.status(probe_roles=False)):
        first = next(iter(lab.records.values())).spec
        print(f"no proxy; a node: redis-cli -h {first.host} -p {first.port}")
    if not args.foreground:
        print(f"stop it with: shardgate lab down --dir {args.dir}")
        return 0
    print("running in the foreground; Ctrl-C stops everything", flush=True)
    reported: set[str] = set()
    try:
        while True:
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
