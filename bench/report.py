"""The comparison's results as values, their medians, and the markdown written from them (pure)."""

from __future__ import annotations

import shlex
import statistics
from collections.abc import Callable, Mapping, Sequence

import attrs

from bench import redis_benchmark
from bench.idle_clients import IDLE_CLIENTS, IdleMemory, render_idle
from bench.keymem import KeyMemory
from bench.markdown import table
from bench.redis_benchmark import BenchRow
from bench.targets import Endpoint

TESTS = ("set", "get")


@attrs.frozen(slots=True)
class Mode:
    key: str
    title: str
    clients: int
    pipeline: int
    requests: int  # per run, at full size
    tests: tuple[str, ...] = TESTS  # redis-benchmark -t tests, or "mget" (bench.redis_benchmark)


# Run sizes: each run lasts ~1-6 s on a 2-core VM for every endpoint, so CPU ticks (10 ms)
# stay well resolved and a full run stays around a quarter of an hour.
MODES = (
    Mode("P1", "50 clients, -P 1", 50, 1, 100_000),
    Mode("P16", "50 clients, -P 16", 50, 16, 500_000),
    Mode(
        "mget10",
        f"MGET of {redis_benchmark.MGET_KEYS} keys (one request reads {redis_benchmark.MGET_KEYS}), "
        "50 clients, -P 1",
        50,
        1,
        50_000,
        ("mget",),
    ),
    Mode("c500", "500 clients, -P 1", 500, 1, 100_000),
    Mode("c1", "1 client, -P 1 (hop latency)", 1, 1, 10_000),
)
MODE_BY_KEY = {m.key: m for m in MODES}


def mode_tests(mode: str) -> tuple[str, ...]:
    """The tests a mode runs (SET and GET unless it is the MGET mode)."""
    known = MODE_BY_KEY.get(mode)
    return known.tests if known else TESTS


def run_size(mode: Mode, scale: float) -> int:
    return max(1000, int(mode.requests * scale))


@attrs.frozen(slots=True)
class Sample:
    """One redis-benchmark run: its row, the CPU µs per request, or why it failed."""

    endpoint: str
    mode: str
    test: str
    row: BenchRow | None
    cpu_us: float | None
    error: str | None = None


@attrs.frozen(slots=True)
class Summary:
    """Medians over the rounds of one (endpoint, mode, test)."""

    rps: float | None
    p50_ms: float | None
    p99_ms: float | None
    cpu_us: float | None
    runs: int
    error: str | None = None


Summaries = dict[tuple[str, str, str], Summary]


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(samples: Sequence[Sample]) -> Summaries:
    groups: dict[tuple[str, str, str], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.endpoint, s.mode, s.test), []).append(s)
    out = {}
    for key, group in groups.items():
        rows = [s.row for s in group if s.row is not None]
        errors = [s.error for s in group if s.error]
        out[key] = Summary(
            rps=_median([r.rps for r in rows]),
            p50_ms=_median([r.p50_ms for r in rows]),
            p99_ms=_median([r.p99_ms for r in rows]),
            cpu_us=_median([s.cpu_us for s in group if s.row is not None]),
            runs=len(rows),
            error=errors[0] if errors else None,
        )
    return out


def ratio(summ: Summaries, top: str, bottom: str, mode: str) -> float | None:
    """Mean over the mode's tests (SET and GET, or MGET) of ops/s(top) ÷ ops/s(bottom)."""
    parts = []
    for t in mode_tests(mode):
        a, b = summ.get((top, mode, t)), summ.get((bottom, mode, t))
        if not a or not b or not a.rps or not b.rps:
            return None
        parts.append(a.rps / b.rps)
    return sum(parts) / len(parts)


def cpu_ratio(summ: Summaries, top: str, bottom: str, mode: str) -> float | None:
    """Mean over the mode's tests of CPU µs/request(top) ÷ CPU µs/request(bottom)."""
    parts = []
    for t in mode_tests(mode):
        a, b = summ.get((top, mode, t)), summ.get((bottom, mode, t))
        if not a or not b or a.cpu_us is None or not b.cpu_us:
            return None
        parts.append(a.cpu_us / b.cpu_us)
    return sum(parts) / len(parts)


def added_p50_us(summ: Summaries, via: str, direct: str, mode: str = "c1") -> float | None:
    """The worse (SET or GET) added p50 latency, in µs, of going through ``via``."""
    added = []
    for t in TESTS:
        a, b = summ.get((via, mode, t)), summ.get((direct, mode, t))
        if not a or not b or a.p50_ms is None or b.p50_ms is None:
            return None
        added.append((a.p50_ms - b.p50_ms) * 1000)
    return max(added)


# The endpoint each one is compared with in the tables.
BASELINE = {"b": "a", "c": "b", "d": "b", "e": "b", "l": "b", "n": "a"}


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_mode(mode: Mode, endpoints: Sequence[Endpoint], summ: Summaries, requests: int) -> str:
    names = [t.upper() for t in mode.tests]
    header = [
        "endpoint",
        *[f"{n} ops/s" for n in names],
        *[f"{n} p50 / p99 ms" for n in names],
        "CPU µs/req " + " / ".join(names),
        "ops/s ratio",
    ]
    blanks = [""] * (len(header) - 3)
    rows = []
    for e in endpoints:
        name = f"({e.key}) {e.label}"
        if not e.available:
            rows.append([name, "not available", *blanks, e.unavailable or ""])
            continue
        found = [summ.get((e.key, mode.key, t)) for t in mode.tests]
        got = [s for s in found if s is not None and s.rps is not None]
        if len(got) != len(found):
            err = next((s.error for s in found if s and s.error), None) or "no result"
            rows.append([name, "failed", *blanks, err])
            continue
        base = BASELINE.get(e.key)
        r = ratio(summ, e.key, base, mode.key) if base else None
        shown = f"{r:.2f}x ({base})" if r is not None else "-"
        if base and base != "a" and r is not None:  # proxies: against redis-server too
            to_a = ratio(summ, e.key, "a", mode.key)
            shown += f", {to_a:.2f}x (a)" if to_a is not None else ""
        rows.append(
            [
                name,
                *[_fmt(s.rps, ",.0f") for s in got],
                *[f"{_fmt(s.p50_ms, '.3f')} / {_fmt(s.p99_ms, '.3f')}" for s in got],
                " / ".join(_fmt(s.cpu_us, ".1f") for s in got),
                shown,
            ]
        )
    return f"#### {mode.title} — {requests:,} requests per run\n\n" + table(header, rows)


def missed_by(measured: float, goal: float) -> str:
    """How far a missed target is, relative to the target: ``40% short``, ``20% over``."""
    gap = abs(measured - goal) / goal
    return f"{gap:.0%} {'short' if measured < goal else 'over'}"


def _check(
    what: str,
    measured: float | None,
    target: str,
    ok: Callable[[float], bool] | None,
    spec: str,
    goal: float | None = None,
) -> list[str]:
    if measured is None:
        return [what, "not measured", target, "n/a"]
    if ok is None:
        met = "-"
    elif ok(measured):
        met = "yes"
    else:
        met = "**no**" + (f": {missed_by(measured, goal)}" if goal else "")
    return [what, format(measured, spec), target, met]


def idle_ratio(idle: Sequence[IdleMemory], top: str, bottom: str) -> float | None:
    """RSS growth per idle client of ``top`` ÷ that of ``bottom``."""
    by_key = {m.endpoint: m for m in idle}
    a, b = by_key.get(top), by_key.get(bottom)
    if a is None or b is None or b.kib_per_connection <= 0:
        return None
    return a.kib_per_connection / b.kib_per_connection


def render_targets(
    summ: Summaries, mem: Sequence[KeyMemory], idle: Sequence[IdleMemory] = ()
) -> str:
    by_label = {m.label: m for m in mem}
    rs, node = by_label.get("redis-server"), by_label.get("shardgate node")
    mem_ratio = node.used_per_key / rs.used_per_key if rs and node and rs.used_per_key else None
    rss_gap = (
        abs(node.used_memory_delta - node.rss_delta) / node.rss_delta
        if node and node.rss_delta > 0
        else None
    )
    rows = [
        _check(
            "(c) ÷ (b) ops/s at -P 16 (issue 3)",
            ratio(summ, "c", "b", "P16"),
            "≥ 1.0x",
            lambda v: v >= 1.0,
            ".2f",
            goal=1.0,
        ),
        _check(
            "(c) ÷ (b) CPU µs per request at -P 16 (steadier than ops/s on a shared machine)",
            cpu_ratio(summ, "c", "b", "P16"),
            "(context)",
            None,
            ".2f",
        ),
        _check(
            "(c) ÷ (b) ops/s at -P 1 (issue 3)",
            ratio(summ, "c", "b", "P1"),
            "≥ 0.7x",
            lambda v: v >= 0.7,
            ".2f",
            goal=0.7,
        ),
        _check(
            "(c) ÷ (b) CPU µs per request at -P 1",
            cpu_ratio(summ, "c", "b", "P1"),
            "(context)",
            None,
            ".2f",
        ),
        _check(
            f"(c) ÷ (b) ops/s, MGET of {redis_benchmark.MGET_KEYS} keys",
            ratio(summ, "c", "b", "mget10"),
            "(context)",
            None,
            ".2f",
        ),
        _check(
            "(c) ÷ (b) ops/s at 500 clients, -P 1",
            ratio(summ, "c", "b", "c500"),
            "(context)",
            None,
            ".2f",
        ),
        _check(
            "(c) ÷ (b) RSS growth per idle client",
            idle_ratio(idle, "c", "b"),
            "(context)",
            None,
            ".2f",
        ),
        _check(
            "added p50 of the proxy hop, (c) - (a) at -c 1 -P 1, µs (issue 3)",
            added_p50_us(summ, "c", "a"),
            "< 150",
            lambda v: v < 150,
            ".0f",
            goal=150,
        ),
        _check(
            "added p50 of nutcracker's hop, (b) - (a) at -c 1 -P 1, µs",
            added_p50_us(summ, "b", "a"),
            "(reference)",
            None,
            ".0f",
        ),
        _check(
            "(n) ÷ (a) ops/s at -P 16 (issue 2)",
            ratio(summ, "n", "a", "P16"),
            "≥ 0.5x",
            lambda v: v >= 0.5,
            ".2f",
            goal=0.5,
        ),
        _check(
            "(n) ÷ (a) CPU µs per request at -P 16",
            cpu_ratio(summ, "n", "a", "P16"),
            "(context)",
            None,
            ".2f",
        ),
        _check(
            "node bytes/key ÷ redis-server's, used_memory (issue 2)",
            mem_ratio,
            "≤ 2x",
            lambda v: v <= 2.0,
            ".2f",
            goal=2.0,
        ),
        _check(
            "node used_memory growth vs its RSS growth, difference ÷ RSS growth (issue 2)",
            rss_gap,
            "≤ 10%",
            lambda v: v <= 0.10,
            ".1%",
            goal=0.10,
        ),
    ]
    return table(["check", "measured", "target", "met"], rows)


def render_memory(mem: Sequence[KeyMemory], unavailable: dict[str, str]) -> str:
    rows = [
        [
            m.label,
            f"{m.keys:,}",
            f"{m.used_memory_delta / 2**20:,.1f} MiB",
            f"{m.used_per_key:.0f}",
            f"{m.rss_delta / 2**20:,.1f} MiB",
            f"{m.rss_per_key:.0f}",
        ]
        for m in mem
    ]
    rows += [[label, "not available", "", "", "", why] for label, why in unavailable.items()]
    header = ["server", "keys", "used_memory growth", "bytes/key", "RSS growth", "RSS bytes/key"]
    return table(header, rows)


def render(
    *,
    command: str,
    rounds: int,
    scale: float,
    endpoints: Sequence[Endpoint],
    samples: Sequence[Sample],
    mem: Sequence[KeyMemory],
    mem_unavailable: dict[str, str],
    machine: Sequence[str],
    profile: str | None = None,
    idle: Sequence[IdleMemory] = (),
    idle_unavailable: Mapping[str, str] | None = None,
    idle_clients: int = IDLE_CLIENTS,
) -> str:
    summ = summarize(samples)

    def example(test: str, requests: int) -> str:
        argv = redis_benchmark.command(host="127.0.0.1", port=0, test=test, requests=requests)
        return shlex.join(argv).replace("-p 0", "-p PORT")

    mget = MODE_BY_KEY["mget10"]
    parts = [
        "### Side by side: redis-server, nutcracker, shardgate",
        "",
        *machine,
        f"- Command: `{command}` — {rounds} round(s) per mode, run sizes x {scale:g}; "
        "every figure is the median over the rounds.",
        f"- Each run: `{example('set', MODES[0].requests)}`, then `-t get`; the same at "
        "`-P 16`, with `-c 500` and with `-c 1`; MGET: "
        f"`{example('mget', mget.requests)}` (every `__rand_int__` a random key of the "
        f"{redis_benchmark.KEYSPACE:,}). Endpoints alternate a b c … then … c b a, after a "
        "warm-up that writes every key.",
        "- CPU µs/req: utime+stime of the process under test (its whole process group, so proxy "
        "workers count) from /proc, before and after each run, divided by its requests: the "
        "server for (a) and (n), the proxy alone for (b)-(e) and (l).",
        "",
    ]
    for mode in MODES:
        parts += [render_mode(mode, endpoints, summ, run_size(mode, scale)), ""]
    if idle or idle_unavailable:
        parts += [
            f"#### RSS with {idle_clients:,} idle clients — fresh processes, before any load",
            "",
            f"{idle_clients:,} connections opened one after another, each sent PING and got "
            "+PONG, then stayed open and idle; VmRSS of the process group (proxy workers count) "
            "before the first and 1 s after the last.",
            "",
            render_idle(idle, dict(idle_unavailable or {})),
            "",
        ]
    parts += [
        "#### Bytes per key — `key:%010d` keys, 100-byte values, fresh processes",
        "",
        render_memory(mem, mem_unavailable),
        "",
        "#### Targets from the issues (benchmarks, not timed tests)",
        "",
        render_targets(summ, mem, idle),
    ]
    if profile:
        parts += ["", "#### Profile headline", "", profile]
    return "\n".join(parts) + "\n"
