"""Run ``redis-benchmark`` and read its ``--csv`` output.

redis-benchmark 7 prints one CSV row per test::

    "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    "SET","78125.00","0.342","0.096","0.311","0.495","0.911","1.511"

Older versions print only ``"test","rps"``; the latency fields are then ``None``.
"""

from __future__ import annotations

import csv
import io
import subprocess

import attrs

# The workload every comparison in docs/performance.md uses (issues 2 and 3).
CLIENTS = 50
VALUE_SIZE = 100  # bytes
KEYSPACE = 10_000  # -r: keys spread over every shard; small enough that GETs hit after warmup
MGET_KEYS = 10  # issue 7: "MGET of 10 keys"
# redis-benchmark has no MGET test; a custom command does it. Every ``__rand_int__`` is replaced
# by its own random number in 0..-r, padded as ``-t set`` writes the keys (key:000000001234).
RANDOM_KEY = "key:__rand_int__"


class BenchmarkError(Exception):
    """redis-benchmark failed, timed out or printed something we cannot read."""


@attrs.frozen(slots=True)
class BenchRow:
    test: str  # SET, GET, ... as redis-benchmark names it
    rps: float
    avg_ms: float | None = None
    min_ms: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None


_FIELDS = {
    "avg_latency_ms": "avg_ms",
    "min_latency_ms": "min_ms",
    "p50_latency_ms": "p50_ms",
    "p95_latency_ms": "p95_ms",
    "p99_latency_ms": "p99_ms",
    "max_latency_ms": "max_ms",
}


def parse_csv(text: str) -> list[BenchRow]:
    """Rows of redis-benchmark ``--csv`` output; progress noise and blank lines are ignored."""
    lines = [ln for ln in text.splitlines() if ln.startswith('"')]
    if not lines or not lines[0].startswith('"test"'):
        raise BenchmarkError(f"no CSV header in redis-benchmark output: {text[:200]!r}")
    rows = []
    for record in csv.DictReader(io.StringIO("\n".join(lines))):
        try:
            extra = {
                ours: float(record[theirs])
                for theirs, ours in _FIELDS.items()
                if record.get(theirs) not in (None, "")
            }
            rows.append(BenchRow(test=record["test"], rps=float(record["rps"]), **extra))
        except (KeyError, TypeError, ValueError) as exc:
            raise BenchmarkError(f"unreadable redis-benchmark row {record!r}: {exc}") from None
    return rows


def command(
    *,
    host: str,
    port: int,
    test: str,
    requests: int,
    clients: int = CLIENTS,
    pipeline: int = 1,
    value_size: int = VALUE_SIZE,
    keyspace: int = KEYSPACE,
    mget_keys: int = MGET_KEYS,
) -> list[str]:
    """The argv of one run; ``test`` is a redis-benchmark ``-t`` test, or ``mget`` for an MGET
    of ``mget_keys`` random keys of the keyspace."""
    if test == "mget":  # options first: what follows --csv is the command
        what = ["--csv", "MGET", *[RANDOM_KEY] * mget_keys]
    else:
        what = ["-t", test, "--csv"]
    return [
        "redis-benchmark",
        "-h",
        host,
        "-p",
        str(port),
        "-c",
        str(clients),
        "-n",
        str(requests),
        "-d",
        str(value_size),
        "-r",
        str(keyspace),
        "-P",
        str(pipeline),
        *what,
    ]


def run(argv: list[str], *, timeout: float) -> BenchRow:
    """Run one redis-benchmark test and return its row."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"redis-benchmark took longer than {timeout:g} s") from None
    # redis-benchmark reports server errors on stderr and keeps going; a reply error in a
    # benchmark means the number is meaningless, so it fails the run.
    errors = [ln for ln in done.stderr.splitlines() if "Error" in ln or "ERR" in ln]
    if done.returncode != 0 or errors:
        detail = (errors or done.stderr.strip().splitlines() or ["(no output)"])[0]
        raise BenchmarkError(f"redis-benchmark failed (exit {done.returncode}): {detail}")
    rows = parse_csv(done.stdout)
    if len(rows) != 1:
        raise BenchmarkError(f"expected one CSV row, got {len(rows)}")
    return rows[0]
