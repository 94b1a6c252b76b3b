"""Latency and counts of a load run: HDR histograms (``hdrhistogram`` from PyPI), merged across
load processes, a per-second timeline, and the final table and JSON (pure: no I/O, no clock).

Latencies are recorded in microseconds, from the request's *intended* send time to the moment
its reply was parsed. In a closed-loop run the intended time is the send time; in an open-loop
(``--rate``) run it is the slot in the fixed schedule, so a stall that delays sending is charged
to every request it delayed (coordinated omission, as in wrk2 and HdrHistogram's docs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour: anything longer is recorded as an hour
SIGNIFICANT_FIGURES = 3  # 0.1% value resolution, HdrHistogram's usual setting
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)


def clamp_us(value: float) -> int:
    return min(max(int(value), LOWEST_US), HIGHEST_US)


class Recorder:
    """Counts and latencies of one load process; one histogram overall, one per second."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.intervals: dict[int, HdrHistogram] = {}
        self.interval_errors: dict[int, int] = {}
        self.ops = 0
        self.errors = 0
        self.reads = 0
        self.read_keys = 0
        self.hits = 0

    def record(self, latency_s: float, now: float, count: int = 1) -> None:
        value = clamp_us(latency_s * 1_000_000)
        second = int(now - self.start)
        hist = self.intervals.get(second)
        if hist is None:
            hist = self.intervals[second] = new_histogram()
        hist.record_value(value, count)
        self.ops += count

    def error(self, now: float, count: int = 1) -> None:
        self.errors += count
        second = int(now - self.start)
        self.interval_errors[second] = self.interval_errors.get(second, 0) + count

    @property
    def histogram(self) -> HdrHistogram:
        """Every latency recorded (the per-second histograms merged: one record per reply)."""
        return merge(self.intervals.values())

    def encode(self) -> dict[str, Any]:
        """Plain data for a pipe between processes."""
        return {
            "histogram": self.histogram.encode(),
            "intervals": {s: h.encode() for s, h in self.intervals.items()},
            "interval_errors": dict(self.interval_errors),
            "ops": self.ops,
            "errors": self.errors,
            "reads": self.reads,
            "read_keys": self.read_keys,
            "hits": self.hits,
        }


def decode(encoded: bytes) -> HdrHistogram:
    return HdrHistogram.decode(encoded)


def merge(histograms: Iterable[HdrHistogram]) -> HdrHistogram:
    total = new_histogram()
    for h in histograms:
        total.add(h)
    return total


@attrs.frozen(slots=True)
class Latency:
    """Percentiles in microseconds."""

    p50: int
    p90: int
    p99: int
    p999: int
    max: int
    mean: float
    count: int

    @classmethod
    def of(cls, h: HdrHistogram) -> Latency:
        if h.get_total_count() == 0:
            return cls(0, 0, 0, 0, 0, 0.0, 0)
        p = [int(h.get_value_at_percentile(q)) for q in PERCENTILES]
        return cls(
            p[0], p[1], p[2], p[3], int(h.get_max_value()), h.get_mean_value(), h.get_total_count()
        )


@attrs.frozen(slots=True)
class Second:
    """One second of the measured run, all processes merged."""

    second: int
    ops: int
    errors: int
    p50_us: int
    p99_us: int
    p999_us: int


@attrs.frozen(slots=True)
class Result:
    ops: int
    errors: int
    elapsed_s: float
    latency: Latency
    reads: int
    read_keys: int
    hits: int
    timeline: tuple[Second, ...]
    loadgen_cpu_s: float
    procs: int
    server_cpu_us_per_req: float | None = None
    server_pids: tuple[int, ...] = ()

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.read_keys if self.read_keys else None

    @property
    def loadgen_cores(self) -> float:
        """How many cores the load generator kept busy on average."""
        return self.loadgen_cpu_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def loadgen_us_per_req(self) -> float | None:
        return self.loadgen_cpu_s * 1e6 / self.ops if self.ops else None


def combine(
    parts: Sequence[Mapping[str, Any]],
    *,
    elapsed_s: float,
    loadgen_cpu_s: float,
    server_cpu_us_per_req: float | None = None,
    server_pids: Sequence[int] = (),
) -> Result:
    """One result from the encoded recorders of every load process."""
    histogram = merge(decode(p["histogram"]) for p in parts)
    seconds: dict[int, list[HdrHistogram]] = {}
    errors: dict[int, int] = {}
    for p in parts:
        for s, enc in p["intervals"].items():
            seconds.setdefault(int(s), []).append(decode(enc))
        for s, n in p["interval_errors"].items():
            errors[int(s)] = errors.get(int(s), 0) + n
    timeline = []
    for s in sorted(set(seconds) | set(errors)):
        merged = merge(seconds.get(s, []))
        lat = Latency.of(merged)
        timeline.append(Second(s, lat.count, errors.get(s, 0), lat.p50, lat.p99, lat.p999))
    return Result(
        ops=sum(p["ops"] for p in parts),
        errors=sum(p["errors"] for p in parts),
        elapsed_s=elapsed_s,
        latency=Latency.of(histogram),
        reads=sum(p["reads"] for p in parts),
        read_keys=sum(p["read_keys"] for p in parts),
        hits=sum(p["hits"] for p in parts),
        timeline=tuple(timeline),
        loadgen_cpu_s=loadgen_cpu_s,
        procs=len(parts),
        server_cpu_us_per_req=server_cpu_us_per_req,
        server_pids=tuple(server_pids),
    )


def ms(us: float) -> str:
    return f"{us / 1000:.3f}"


def format_table(result: Result) -> str:
    """The end-of-run table, fixed-width, one row."""
    lat = result.latency
    hit = "-" if result.hit_rate is None else f"{result.hit_rate * 100:.1f}%"
    header = ("ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "errors", "hit rate")
    row = (
        f"{result.ops_per_s:,.0f}",
        ms(lat.p50),
        ms(lat.p90),
        ms(lat.p99),
        ms(lat.p999),
        ms(lat.max),
        f"{result.errors:,}",
        hit,
    )
    widths = [max(len(h), len(v)) for h, v in zip(header, row)]
    lines = [
        "  ".join(h.rjust(w) for h, w in zip(header, widths)),
        "  ".join(v.rjust(w) for v, w in zip(row, widths)),
    ]
    return "\n".join(lines)


def format_cpu(result: Result) -> str:
    per_req = result.loadgen_us_per_req
    lines = [
        f"load generator: {result.procs} process(es), {result.loadgen_cpu_s:.1f} s CPU "
        f"= {result.loadgen_cores:.2f} cores busy"
        + (f", {per_req:.1f} µs CPU/req" if per_req is not None else "")
    ]
    if result.loadgen_cores > 0.9 * result.procs:
        lines.append(
            "  warning: the load generator ran near 100% of its processes; it may be the "
            "bottleneck — try more --procs (if cores are free) or a deeper --pipeline"
        )
    if result.server_cpu_us_per_req is not None:
        pids = ",".join(str(p) for p in result.server_pids)
        lines.append(f"server (pid {pids}): {result.server_cpu_us_per_req:.2f} µs CPU/req")
    return "\n".join(lines)


def to_json(result: Result, spec: Mapping[str, Any], command: str) -> dict[str, Any]:
    lat = result.latency
    return {
        "command": command,
        "spec": dict(spec),
        "ops": result.ops,
        "errors": result.errors,
        "elapsed_s": result.elapsed_s,
        "ops_per_s": result.ops_per_s,
        "hit_rate": result.hit_rate,
        "latency_us": {
            "p50": lat.p50,
            "p90": lat.p90,
            "p99": lat.p99,
            "p99.9": lat.p999,
            "max": lat.max,
            "mean": lat.mean,
        },
        "loadgen": {
            "procs": result.procs,
            "cpu_s": result.loadgen_cpu_s,
            "cores_busy": result.loadgen_cores,
            "cpu_us_per_req": result.loadgen_us_per_req,
        },
        "server": {
            "pids": list(result.server_pids),
            "cpu_us_per_req": result.server_cpu_us_per_req,
        },
        "timeline": [attrs.asdict(s) for s in result.timeline],
    }
