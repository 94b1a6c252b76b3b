"""``shardgate sentinel run | status | topology | history | failover | ckquorum | watch``."""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time

import hiredis
import msgpack
import trio

from shardgate import logs
from shardgate.config import ConfigError
from shardgate.metrics import serve_metrics
from shardgate.resp import encode_command

DEFAULT_PORT = 26379  # Redis Sentinel's


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sentinel",
        help="run a sentinel, or inspect failover state",
        description="Sentinels vote on primary health and fail shards over under new epochs.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    run_p = verbs.add_parser("run", help="run a sentinel process")
    run_p.add_argument("--config", required=True, metavar="sentinel.toml")
    run_p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    run_p.add_argument("--log-format", choices=("text", "json"), default="text")
    run_p.set_defaults(func=_run)
    for verb, text in (
        ("status", "per shard: primary, replicas, offsets, each sentinel's view, epoch"),
        ("topology", "the topology this sentinel holds (TOML, or --json)"),
        ("history", "failovers with their timelines and durations"),
        ("failover", "coordinated manual failover of a shard"),
        ("ckquorum", "can this shard be failed over now?"),
        ("watch", "print sentinel events as they happen (Ctrl-C stops)"),
    ):
        q = verbs.add_parser(verb, help=text)
        q.add_argument("--host", default="127.0.0.1")
        q.add_argument(
            "--port",
            type=int,
            help=f"sentinel port (default: a sentinel of the lab in --lab-dir, else {DEFAULT_PORT})",
        )
        q.add_argument("--lab-dir", default=".lab", help="lab directory to find sentinels in")
        q.add_argument("--password")
        if verb in ("status", "topology", "history"):
            q.add_argument("--json", action="store_true", help="machine-readable output")
        if verb in ("failover", "ckquorum"):
            q.add_argument("shard", help="the shard (Redis Sentinel's 'master name')")
        q.set_defaults(func=_inspect)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


class WallAlignedClock(trio.abc.Clock):
    """trio's clock, monotonic, but aligned with the wall clock when the process starts.

    trio's default clock starts at a random offset, so two sentinels' ``now`` would not be
    comparable; failover timelines mix the leader's times with other sentinels' (a proxy's
    adoption noted elsewhere). Aligned this way, sentinels on synchronised hosts agree to within
    the clock skew, and time still never goes backwards inside one process.
    """

    def __init__(self) -> None:
        self._offset = time.time() - time.monotonic()

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return time.monotonic() + self._offset

    def deadline_to_sleep_time(self, deadline: float) -> float:
        return deadline - self.current_time()


def _run(args: argparse.Namespace) -> int:
    from sentinel.config import load_config
    from sentinel.metrics import collect_sentinel
    from sentinel.server import SentinelServer
    from sentinel.state import StateError

    logs.configure(role="sentinel", fmt=args.log_format)
    try:
        config = load_config(args.config)
        server = SentinelServer(config)
    except (ConfigError, StateError) as exc:
        print(f"shardgate sentinel: {exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve)
            if args.metrics_port is not None:
                serve_metrics(
                    args.metrics_port, config.listen.host, lambda: collect_sentinel(server)
                )
            print(
                f"shardgate sentinel {config.id} listening on {config.listen.host}:{port}",
                flush=True,
            )
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    failure: OSError | None = None
    try:
        trio.run(main, clock=WallAlignedClock())
    except* OSError as group:
        failure = group.exceptions[0]  # type: ignore[assignment]
    if failure is not None:
        print(f"shardgate sentinel: cannot listen on {config.listen}: {failure}", file=sys.stderr)
        return 1
    return 0


class _Conn:
    def __init__(self, host: str, port: int, password: str | None) -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
        self.reader = hiredis.Reader()
        if password:
            self.call("AUTH", password)

    def call(self, *args: str) -> object:
        self.sock.sendall(encode_command([a.encode() for a in args]))
        return self.read()

    def read(self) -> object:
        while True:
            reply = self.reader.gets()
            if reply is not False:
                if isinstance(reply, hiredis.ReplyError):
                    raise RuntimeError(str(reply))
                return reply
            data = self.sock.recv(65536)
            if not data:
                raise RuntimeError("the sentinel closed the connection")
            self.reader.feed(data)


def lab_sentinels(lab_dir: str) -> list[tuple[str, int]]:
    """Sentinels a running lab recorded in its state file (``shardgate lab up --dir``)."""
    try:
        with open(f"{lab_dir}/state.json", encoding="utf-8") as f:
            procs = json.load(f).get("processes", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [
        (str(p["host"]), int(p["port"]))
        for p in procs
        if isinstance(p, dict) and p.get("role") == "sentinel" and "port" in p
    ]


def _connect(args: argparse.Namespace) -> _Conn:
    """The sentinel named by --port, or the first live one of the lab, or Redis's port."""
    if args.port is not None:
        return _Conn(args.host, args.port, args.password)
    for host, port in lab_sentinels(args.lab_dir):
        try:
            return _Conn(host, port, args.password)
        except OSError:
            continue  # that sentinel is down: ask another
    return _Conn(args.host, DEFAULT_PORT, args.password)


def _inspect(args: argparse.Namespace) -> int:
    from sentinel.messages import decode_topology

    try:
        conn = _connect(args)
        verb = args.verb
        if verb in ("status", "history"):
            mode = "json" if args.json else "text"
            out = conn.call(f"SG.{verb.upper()}", mode)
            assert isinstance(out, bytes)
            print(out.decode())
        elif verb == "topology":
            blob = conn.call("SG.TOPOLOGY")
            assert isinstance(blob, bytes)
            topology = decode_topology(msgpack.unpackb(blob, raw=False))
            print(json.dumps(topology.to_dict(), indent=2) if args.json else topology.to_toml())
        elif verb == "failover":
            conn.call("SENTINEL", "FAILOVER", args.shard)
            print(f"failover of {args.shard} started; follow it with: shardgate sentinel watch")
        elif verb == "ckquorum":
            answer = conn.call("SENTINEL", "CKQUORUM", args.shard)
            print(answer.decode() if isinstance(answer, bytes) else answer)
        elif verb == "watch":
            conn.sock.settimeout(None)
            conn.call("PSUBSCRIBE", "*")
            while True:
                msg = conn.read()
                if isinstance(msg, list) and len(msg) == 4:
                    channel, payload = msg[2].decode(), msg[3]
                    if channel == "shardgate.topology":
                        topo = decode_topology(msgpack.unpackb(payload, raw=False))
                        print(f"{channel} epoch={topo.epoch}", flush=True)
                    else:
                        print(f"{channel} {payload.decode('utf-8', 'replace')}", flush=True)
    except KeyboardInterrupt:
        return 0
    except (OSError, RuntimeError) as exc:
        print(f"shardgate sentinel {args.verb}: {exc}", file=sys.stderr)
        return 1
    return 0
