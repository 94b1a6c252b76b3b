"""Side-by-side comparison: redis-server, nutcracker and shardgate, in one run on one machine.

    python -m bench.compare [--quick] [--rounds 3] [--only a,b,c] [--profile] [--write docs/performance.md]

Run from an exported snapshot of a commit (``git archive``) with ``BENCH_COMMIT=<sha>`` so the
report names the code it measured.

How it works
- Every endpoint (see ``bench.targets``) is started at once in a lab directory.
- Before any load, each endpoint's RSS is read with no client and with 1,000 idle clients that
  each did a PING (``bench.idle_clients``).
- Then each is warmed up (SETs over the whole keyspace, so GETs hit) and measured with
  redis-benchmark: 50 clients, 100-byte values, SET and GET as separate runs, at ``-P 1`` and
  ``-P 16``; MGET of 10 keys at 50 clients; SET and GET at 500 clients and at ``-c 1 -P 1``
  (``bench.report.MODES``).
- Runs alternate between endpoints (a b c … then … c b a), ``--rounds`` times per mode; every
  figure reported is the median over the rounds (shared/performance-notes.md, "How to measure").
- Around every run the CPU time (utime+stime) of the process under test is read from /proc, so
  each figure comes with CPU µs per request.
- Then bytes per key: 1M keys with 100-byte values loaded into a fresh redis-server and a fresh
  shardgate node (``bench.keymem``).
- The markdown goes to stdout; ``--write FILE`` also replaces the ``compare`` section of FILE,
  leaving every other section as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from types import FrameType

from bench import fulllab, idle_clients, keymem, redis_benchmark
from bench.idle_clients import IdleError, IdleMemory
from bench.markdown import replace_section
from bench.procstats import cpu_us_per_request, group_cpu_ticks
from bench.redis_benchmark import BenchmarkError
from bench.report import MODES, Mode, Sample, render, run_size
from bench.targets import ENDPOINTS, Endpoint, missing_pieces, start_all
from shardgate.lab import Lab, group_members

SECTION = "compare"
WARMUP_REQUESTS = 100_000  # SETs at -P 16 over the 10k-key keyspace: every key gets written
KEYMEM_KEYS = 1_000_000


def measure_run(endpoint: Endpoint, mode: Mode, test: str, *, requests: int) -> Sample:
    assert endpoint.host and endpoint.port and endpoint.pgid
    if not group_members(endpoint.pgid):
        # redis-benchmark waits forever on a refused connection: never start it against a corpse.
        return Sample(endpoint.key, mode.key, test, None, None, f"{endpoint.process} exited")
    argv = redis_benchmark.command(
        host=endpoint.host,
        port=endpoint.port,
        test=test,
        requests=requests,
        clients=mode.clients,
        pipeline=mode.pipeline,
    )
    before = group_cpu_ticks(endpoint.pgid)
    try:
        row = redis_benchmark.run(argv, timeout=30 + requests / 2000)
    except BenchmarkError as exc:
        return Sample(endpoint.key, mode.key, test, None, None, str(exc))
    after = group_cpu_ticks(endpoint.pgid)
    cpu = cpu_us_per_request(before, after, requests) if after >= before else None
    return Sample(endpoint.key, mode.key, test, row, cpu)


def warm_up(endpoint: Endpoint) -> str | None:
    assert endpoint.host and endpoint.port
    argv = redis_benchmark.command(
        host=endpoint.host, port=endpoint.port, test="set", requests=WARMUP_REQUESTS, pipeline=16
    )
    try:
        redis_benchmark.run(argv, timeout=120)
    except BenchmarkError as exc:
        return str(exc)
    return None


def run_comparison(
    endpoints: Sequence[Endpoint], *, rounds: int, scale: float, echo: Callable[[str], None]
) -> list[Sample]:
    samples: list[Sample] = []
    live = [e for e in endpoints if e.available]
    for e in list(live):
        error = warm_up(e)
        if error:
            echo(f"bench: warm-up of ({e.key}) failed: {error}")
            samples += [Sample(e.key, m.key, t, None, None, error) for m in MODES for t in m.tests]
            live.remove(e)
    failed: dict[str, str] = {}  # an endpoint that failed once is not run again
    for mode in MODES:
        requests = run_size(mode, scale)
        for r in range(rounds):
            order = live if r % 2 == 0 else live[::-1]  # a b c … then … c b a
            for e in order:
                for test in mode.tests:
                    if e.key in failed:
                        samples.append(Sample(e.key, mode.key, test, None, None, failed[e.key]))
                        continue
                    s = measure_run(e, mode, test, requests=requests)
                    samples.append(s)
                    if s.error:
                        failed[e.key] = s.error
                    shown = f"{s.row.rps:,.0f} ops/s" if s.row else f"FAILED: {s.error}"
                    cpu = f", {s.cpu_us:.1f} µs CPU/req" if s.cpu_us is not None else ""
                    echo(f"[{mode.key} {r + 1}/{rounds}] ({e.key}) {test}: {shown}{cpu}")
    return samples


def measure_idle(
    endpoints: Sequence[Endpoint], *, count: int, echo: Callable[[str], None]
) -> tuple[list[IdleMemory], dict[str, str]]:
    """RSS of every available endpoint without clients and with ``count`` idle ones."""
    results: list[IdleMemory] = []
    unavailable: dict[str, str] = {}
    for e in endpoints:
        name = f"({e.key}) {e.label}"
        if not e.available:
            unavailable[name] = e.unavailable or "not available"
            continue
        assert e.host and e.port and e.pgid
        try:
            m = idle_clients.measure(
                e.key, e.label, host=e.host, port=e.port, pgid=e.pgid, count=count
            )
        except (IdleError, OSError) as exc:
            unavailable[name] = f"failed: {exc}"
            echo(f"bench: ({e.key}) {count:,} idle clients: FAILED: {exc}")
            continue
        results.append(m)
        echo(
            f"bench: ({e.key}) RSS {m.rss_before / 2**20:.1f} MiB -> {m.rss_after / 2**20:.1f} MiB "
            f"with {count:,} idle clients, {m.kib_per_connection:.1f} KiB each"
        )
    return results, unavailable


def _lines(argv: list[str]) -> list[str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return (done.stdout or done.stderr).strip().splitlines()


def load_average() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def load_line(before: float, after: float) -> str:
    cores = os.cpu_count() or 1
    verdict = (
        "other work competed for the cores; ops/s are noisier than CPU µs/req"
        if max(before, after) > cores
        else "the machine was otherwise quiet"
    )
    return (
        f"- 1-minute load average {before:.1f} when the runs started, {after:.1f} when they "
        f"ended ({cores} cores): {verdict}."
    )


def tool_version(tool: str) -> str:
    """``redis-server 7.0.15`` from the first line of ``TOOL --version``, whatever its shape."""
    line = (_lines([tool, "--version"]) or [""])[0]
    match = re.search(r"(?:v=|-|\s)(\d+\.\d+\.\d+)", line)
    return f"{tool} {match.group(1)}" if match else f"{tool}: not installed"


def machine_info() -> list[str]:
    model = next(
        (ln.split(":", 1)[1].strip() for ln in _lines(["lscpu"]) if ln.startswith("Model name:")),
        "unknown CPU",
    )
    versions = []
    for dist in ("trio", "hiredis"):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    tools = [tool_version(t) for t in ("redis-server", "redis-benchmark", "nutcracker")]
    root = str(Path(__file__).resolve().parent.parent)
    commit = os.environ.get("BENCH_COMMIT")  # set when running from an exported snapshot
    if not commit:
        commit = (_lines(["git", "-C", root, "rev-parse", "--short", "HEAD"]) or ["unknown"])[0]
        dirty = _lines(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"])
        commit += " plus uncommitted changes" if dirty else ""
    return [
        f"- Machine: {model}, {os.cpu_count()} cores, Linux {platform.release()}; the load "
        "generator, proxies and backends all share these cores.",
        f"- Software: Python {platform.python_version()}, {', '.join(versions)}; "
        + "; ".join(tools)
        + ".",
        f"- shardgate at commit {commit}, measured "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
    ]


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description="redis-server vs nutcracker vs shardgate, side by side (docs/performance.md).",
    )
    parser.add_argument("--quick", action="store_true", help="1 round, runs ÷ 10, 100k keys")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per mode (default 3)")
    parser.add_argument("--only", default="", help="endpoints to run, e.g. a,b,c (default all)")
    parser.add_argument("--no-memory", action="store_true", help="skip the bytes-per-key part")
    parser.add_argument("--profile", action="store_true", help="py-spy the proxy (c) at -P 16")
    parser.add_argument(
        "--idle-clients",
        type=int,
        default=idle_clients.IDLE_CLIENTS,
        help="idle connections for the RSS part (default 1000; 0 skips it)",
    )
    parser.add_argument(
        "--base-tree",
        metavar="DIR",
        help="also run (c0): the proxy from another checkout's source in DIR, for an A/B",
    )
    parser.add_argument("--write", metavar="FILE", help="replace the compare section of FILE")
    parser.add_argument("--dir", default=None, help="directory for logs (default: a temp dir)")
    args = parser.parse_args(argv)
    known = [key for key, _, _ in ENDPOINTS] + [fulllab.KEY]
    wanted = set(args.only.split(",")) if args.only else set(known) - {"c0"}
    if args.base_tree is not None:
        if not (Path(args.base_tree) / "proxy" / "server.py").is_file():
            parser.error(f"--base-tree: {args.base_tree} holds no proxy source (proxy/server.py)")
        args.base_tree = str(Path(args.base_tree).resolve())
        if not args.only:
            wanted.add("c0")
    if wanted - set(known):
        parser.error(
            f"--only: unknown endpoint(s) {','.join(sorted(wanted - set(known)))}; known: {','.join(known)}"
        )
    if args.idle_clients < 0:
        parser.error("--idle-clients: must be 0 or more")
    rounds = args.rounds or (1 if args.quick else 3)
    scale = 0.1 if args.quick else 1.0
    keys = KEYMEM_KEYS // 10 if args.quick else KEYMEM_KEYS
    shown_argv = list(argv) if argv is not None else sys.argv[1:]
    command = shlex.join(["python", "-m", "bench.compare", *shown_argv])

    def echo(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the lab below stops its processes.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # Before anything starts: the servers inherit it (redis-server caps maxclients by it).
    soft, need = idle_clients.raise_open_files_limit(max(args.idle_clients, 500))
    if soft < need:
        echo(f"bench: open-files limit {soft} < {need}: idle-client and 500-client runs may fail")
    directory = args.dir or tempfile.mkdtemp(prefix="shardgate-bench-")
    echo(f"bench: processes and logs in {directory}")
    started = time.monotonic()
    mem: list[keymem.KeyMemory] = []
    mem_unavailable: dict[str, str] = {}
    profile = None
    idle: list[IdleMemory] = []
    idle_unavailable: dict[str, str] = {}
    # Both stop every process they started on the way out, whatever happens.
    with Lab(directory) as lab, contextlib.ExitStack() as full:
        endpoints = list(start_all(lab, echo=echo, base_tree=args.base_tree).values())
        if fulllab.KEY in wanted:
            endpoints.append(
                full.enter_context(fulllab.full_lab(Path(directory) / "full-lab", echo=echo))
            )
        endpoints = [e for e in endpoints if e.key in wanted]
        for e in endpoints:
            where = f"{e.host}:{e.port}" if e.available else f"not available — {e.unavailable}"
            echo(f"bench: ({e.key}) {e.label}: {where}")
        if args.idle_clients:
            idle, idle_unavailable = measure_idle(endpoints, count=args.idle_clients, echo=echo)
        load_before = load_average()
        samples = run_comparison(endpoints, rounds=rounds, scale=scale, echo=echo)
        load_after = load_average()
        if args.profile:
            from bench.profile import profile_endpoint

            target = next((e for e in endpoints if e.key == "c" and e.available), None)
            if target:
                profile = profile_endpoint(target, lab.directory, echo=echo)
        lab.down(grace=3.0)
        full.close()
        if not args.no_memory:
            why = missing_pieces()
            for kind, label, piece in (
                ("redis", "redis-server", "r0"),
                ("shardgate", "shardgate node", "n0"),
            ):
                if piece in why:
                    mem_unavailable[label] = why[piece]
                    continue
                echo(f"bench: loading {keys:,} keys into a fresh {label} ...")
                try:
                    mem.append(keymem.measure(lab, kind=kind, keys=keys, label=label))
                except Exception as exc:  # reported in the table, not fatal
                    mem_unavailable[label] = f"failed: {exc}"
    markdown = render(
        command=command,
        rounds=rounds,
        scale=scale,
        endpoints=endpoints,
        samples=samples,
        mem=mem,
        mem_unavailable=mem_unavailable,
        machine=[*machine_info(), load_line(load_before, load_after)],
        profile=profile,
        idle=idle,
        idle_unavailable=idle_unavailable,
        idle_clients=args.idle_clients,
    )
    print(markdown)
    echo(f"bench: done in {time.monotonic() - started:.0f} s")
    if args.write:
        path = Path(args.write)
        document = path.read_text() if path.exists() else ""
        path.write_text(replace_section(document, SECTION, markdown))
        echo(f"bench: wrote the {SECTION} section of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
