"""``shardgate node``: run a store node."""

from __future__ import annotations

import argparse
import signal
import sys

import trio

from shardgate import logs
from shardgate.config import ConfigError
from shardgate.metrics import serve_metrics
from storenode import persistence
from storenode.config import POLICIES, load_node_config
from storenode.metrics import collect_node
from storenode.node import Node
from storenode.server import NodeServer
from storenode.snapshot_file import SnapshotError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "node",
        help="run a store node (a single-threaded, Redis-compatible cache server)",
        description="Run a store node. Flags override the TOML file given with --config.",
    )
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", help="port to listen on, 0 = any free port (default 7100)")
    p.add_argument("--maxmemory", help="memory limit for the dataset, e.g. 256mb (0 = none)")
    p.add_argument("--maxmemory-policy", choices=POLICIES, help="what to do at maxmemory")
    p.add_argument("--requirepass", help="password clients must AUTH with")
    p.add_argument("--maxclients", help="maximum client connections (default 10000)")
    p.add_argument("--metrics-port", help="serve Prometheus metrics on this port")
    p.add_argument("--log-format", choices=("text", "json"), help="log line format")
    p.add_argument("--replicaof", metavar="HOST:PORT", help="start as a replica of this primary")
    p.add_argument(
        "--managed",
        action="store_const",
        const=True,
        help="take no writes until a sentinel assigns a role (SG.ROLE)",
    )
    p.add_argument("--masterauth", help="password for the primary (default: --requirepass)")
    p.add_argument("--announce", metavar="HOST:PORT", help="address replicas announce")
    p.add_argument("--repl-backlog-size", help="replication backlog, e.g. 1mb (Redis default)")
    p.add_argument("--min-replicas-to-write", help="refuse writes with fewer good replicas")
    p.add_argument("--min-replicas-max-lag", help="seconds since a replica's last ack")
    p.add_argument("--sync-replicas", help="semi-sync: replica acks needed before replying")
    p.add_argument("--sync-timeout-ms", help="semi-sync wait before -TIMEOUT (default 1000)")
    p.add_argument("--replica-priority", help="0 = never promote; lower is preferred")
    p.add_argument("--dir", help="snapshot directory; unset = no persistence (the default)")
    p.add_argument("--dbfilename", help="snapshot file name in --dir (default dump.sg)")
    p.add_argument(
        "--save",
        metavar='"SECONDS CHANGES ..."',
        help='save points as Redis\'s (default "3600 1 300 100 60 10000"); "" = only at shutdown',
    )
    p.add_argument("--config", metavar="node.toml", help="TOML file with the same settings")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = {
        "host": args.host,
        "port": args.port,
        "maxmemory": args.maxmemory,
        "maxmemory_policy": args.maxmemory_policy,
        "requirepass": args.requirepass,
        "maxclients": args.maxclients,
        "metrics_port": args.metrics_port,
        "log_format": args.log_format,
        "replicaof": args.replicaof,
        "managed": args.managed,
        "masterauth": args.masterauth,
        "announce": args.announce,
        "repl_backlog_size": args.repl_backlog_size,
        "min_replicas_to_write": args.min_replicas_to_write,
        "min_replicas_max_lag": args.min_replicas_max_lag,
        "sync_replicas": args.sync_replicas,
        "sync_timeout_ms": args.sync_timeout_ms,
        "replica_priority": args.replica_priority,
        "dir": args.dir,
        "dbfilename": args.dbfilename,
        "save": args.save,
    }
    try:
        config = load_node_config(args.config, overrides)
    except ConfigError as exc:
        print(f"shardgate node: {exc}", file=sys.stderr)
        return 2
    logs.configure(role="node", fmt=config.log_format)
    node = Node(config, config_file=args.config)
    try:
        snapshot = persistence.read_snapshot(config)
    except SnapshotError as exc:
        print(f"shardgate node: cannot load the snapshot: {exc}", file=sys.stderr)
        return 2
    if snapshot is not None:
        persistence.restore(node, snapshot)
        del snapshot

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = NodeServer(node)
            await nursery.start(server.serve)
            await nursery.start(persistence.run, node)
            node.persistence.on_shutdown = nursery.cancel_scope.cancel
            host, port = server.bound or (config.host, config.port)
            if config.metrics_port is not None:
                mport = serve_metrics(
                    config.metrics_port,
                    config.host,
                    lambda: collect_node(server.node, {"node": f"{host}:{port}"}),
                )
                logs.log_event("metrics_listening", port=mport)
            print(f"shardgate node listening on {host}:{port}", flush=True)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    logs.log_event("shutdown", signal=signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break

    failure: OSError | None = None
    try:
        trio.run(main)
    except* OSError as group:
        failure = group.exceptions[0]  # type: ignore[assignment]
    if failure is not None:
        where = f"{config.host}:{config.port}"
        print(
            f"shardgate node: cannot listen on {where}: {failure.strerror or failure}",
            file=sys.stderr,
        )
        return 1
    persistence.final_save(node)  # traffic has stopped: the offset and the data agree
    return 0
