"""``shardgate bench``: load against any RESP endpoint; ``bench compare``; ``bench failover``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

import attrs

from bench import loadstats, plot
from bench.loadspec import (
    LoadSpec,
    SpecError,
    parse_distribution,
    parse_ratio,
    parse_value_size,
)

DESCRIPTION = """\
Load any Redis-compatible endpoint (redis-server, nutcracker, a shardgate proxy or node) and
report throughput and latency.

Closed loop by default: each client sends --pipeline requests, waits for all their replies,
sends the next batch (like redis-benchmark -P). With --rate R the run is open loop: requests
leave on a fixed schedule of R per second in total, and latency is measured from the moment a
request *should* have left, so a stalled server is charged for every request it delayed
(coordinated omission corrected). Latencies go into HDR histograms (1 µs .. 1 h, 3 significant
digits); the warm-up is thrown away.

Defaults (50 clients, GET:SET 9:1 over 10,000 keys, 100-byte values, 5 s warm-up + 20 s) finish
in about 30 s, against `make lab`'s proxy at 127.0.0.1:7000 for instance:

  shardgate bench --port 7000 --plot run.png
  shardgate bench --port 6379 --pipeline 16 --procs 2 --ratio 1:1
  shardgate bench --port 7000 --rate 20000 --distribution zipf:0.99 --value-size 64-512
  shardgate bench --port 7000 --mget 10 --ratio 1:0 --json mget.json

Sub-commands: `shardgate bench compare` (redis vs nutcracker vs shardgate, writes
docs/performance.md) and `shardgate bench failover` (write blackout when a primary dies).
"""


def add_load_options(p: argparse.ArgumentParser) -> None:
    conn = p.add_argument_group("endpoint")
    conn.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    conn.add_argument("--port", type=int, default=7000, help="default 7000 (the lab's proxy)")
    conn.add_argument("--password", default=None, help="sent with AUTH on every connection")
    load = p.add_argument_group("workload")
    load.add_argument("--clients", type=int, default=50, help="connections in total (50)")
    load.add_argument(
        "--pipeline", type=int, default=1, help="requests in flight per connection (1)"
    )
    load.add_argument(
        "--ratio",
        default="9:1",
        help="GET:SET weights, e.g. 9:1 (default), 1:1, 0:1 writes only, 1:0 reads only",
    )
    load.add_argument("--keys", type=int, default=10_000, help="keyspace size (10000)")
    load.add_argument(
        "--distribution",
        default="uniform",
        help="key popularity: uniform (default) or zipf:S, e.g. zipf:0.99 (hot keys)",
    )
    load.add_argument(
        "--value-size", default="100", help="SET value bytes: fixed (100) or a range LOW-HIGH"
    )
    load.add_argument("--ttl", type=int, default=None, help="SET ... EX TTL seconds (none)")
    load.add_argument(
        "--mget", type=int, default=1, help="keys per read: 1 = GET, K > 1 = MGET of K keys"
    )
    load.add_argument(
        "--no-prefill",
        dest="prefill",
        action="store_false",
        help="skip SETting every key once before the warm-up (default: prefill, so GETs hit)",
    )
    length = p.add_argument_group("how long and how fast")
    length.add_argument(
        "--duration", type=float, default=None, help="measured seconds (20 unless --requests)"
    )
    length.add_argument("--requests", type=int, default=None, help="measured requests instead")
    length.add_argument(
        "--warmup", type=float, default=5.0, help="seconds of load thrown away first (5)"
    )
    length.add_argument(
        "--rate",
        type=float,
        default=None,
        help="open loop: R requests/s in total on a fixed schedule (default: closed loop); "
        "--pipeline then caps the requests in flight per client, and a request held back by "
        "the cap is still timed from its scheduled moment",
    )
    length.add_argument(
        "--procs",
        type=int,
        default=1,
        help="load-generator processes sharing the clients; histograms are merged (1)",
    )
    length.add_argument("--seed", type=int, default=1, help="random seed (1)")
    out = p.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="write the result (and timeline) as JSON")
    out.add_argument(
        "--plot", metavar="FILE.png", help="latency percentiles and ops/s over time (matplotlib)"
    )
    out.add_argument(
        "--server-pid",
        type=int,
        action="append",
        default=None,
        help="process(es) whose CPU µs per request to report (default: whoever listens on "
        "--port on this machine, found via /proc)",
    )
    out.add_argument("--quiet", action="store_true", help="no progress line")


def spec_from_args(args: argparse.Namespace) -> LoadSpec:
    get_w, set_w = parse_ratio(args.ratio)
    low, high = parse_value_size(args.value_size)
    duration = args.duration
    if duration is None and args.requests is None:
        duration = 20.0
    return LoadSpec(
        host=args.host,
        port=args.port,
        password=args.password,
        clients=args.clients,
        pipeline=args.pipeline,
        get_weight=get_w,
        set_weight=set_w,
        keys=args.keys,
        zipf_s=parse_distribution(args.distribution),
        value_min=low,
        value_max=high,
        ttl=args.ttl,
        duration=duration,
        requests=args.requests,
        warmup=args.warmup,
        mget=args.mget,
        rate=args.rate,
        procs=args.procs,
        prefill=args.prefill,
        seed=args.seed,
    )


def describe(spec: LoadSpec) -> str:
    loop = "closed loop" if spec.rate is None else f"open loop at {spec.rate:,.0f} req/s"
    length = f"{spec.duration:g} s" if spec.duration is not None else f"{spec.requests:,} requests"
    reads = "GET" if spec.mget == 1 else f"MGET {spec.mget}"
    return (
        f"{spec.host}:{spec.port}, {spec.clients} clients x pipeline {spec.pipeline}, {loop}, "
        f"{reads}:SET {spec.get_weight}:{spec.set_weight}, {spec.keys:,} keys {spec.distribution}, "
        f"values {spec.value_size} B"
        + (f", TTL {spec.ttl} s" if spec.ttl else "")
        + f", warm-up {spec.warmup:g} s + {length}, {spec.procs} load process(es)"
    )


def run_load(args: argparse.Namespace) -> int:
    from bench import load
    from bench.serverpid import pids_listening_on

    try:
        spec = spec_from_args(args)
    except SpecError as exc:
        print(f"shardgate bench: {exc}", file=sys.stderr)
        return 2
    if args.plot and not plot.available():
        print(f"shardgate bench: {plot.INSTALL_HINT}", file=sys.stderr)
        return 2
    command = shlex.join(["shardgate", "bench", *args.argv])
    pids = args.server_pid or pids_listening_on(spec.port)
    print(f"bench: {describe(spec)}", file=sys.stderr)
    try:
        result = load.run(
            spec, server_pids=pids, progress=None if args.quiet else load.stderr_progress
        )
    except load.LoadError as exc:
        print(f"\nshardgate bench: {exc}", file=sys.stderr)
        return 1
    print(loadstats.format_table(result))
    print(loadstats.format_cpu(result))
    if args.json:
        doc = loadstats.to_json(result, _spec_dict(spec), command)
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"bench: wrote {args.json}", file=sys.stderr)
    if args.plot:
        plot.plot(result, args.plot, title=f"{command}\n{describe(spec)}")
        print(f"bench: wrote {args.plot}", file=sys.stderr)
    return 0


def _spec_dict(spec: LoadSpec) -> dict[str, Any]:
    d = attrs.asdict(spec)
    d["password"] = "***" if spec.password else None
    return d


def run_compare(args: argparse.Namespace) -> int:
    from bench import compare_cli

    return compare_cli.main(args)


def run_failover(args: argparse.Namespace) -> int:
    from bench import failover_cli

    return failover_cli.main(args)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench",
        help="load an endpoint; compare with redis/nutcracker; measure failover",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_load_options(p)
    p.set_defaults(func=_with_argv(run_load))
    sub = p.add_subparsers(dest="bench_command", metavar="[compare|failover]")
    from bench import compare_cli, failover_cli

    compare_cli.register(sub, func=_with_argv(run_compare))
    failover_cli.register(sub, func=_with_argv(run_failover))


def _with_argv(func: Any) -> Any:
    """Keep the command line as typed for the report (``shardgate bench ...``)."""

    def call(args: argparse.Namespace) -> int:
        argv = sys.argv[1:]
        args.argv = argv[1:] if argv and argv[0] == "bench" else argv
        return int(func(args))

    return call
