"""Metrics plumbing shared by every role.

Hot paths count in plain ints and lists (a prometheus_client label lookup costs about a
microsecond, more than a GET); each role declares its metric families once, in its own
``metrics`` module, as a collector that reads those counters at scrape time.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable

from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# Latency buckets in seconds: 10 µs to 1 s, dense below 1 ms where the SLO lives.
LATENCY_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip


class FastHistogram:
    """A histogram with no locks: observe() is one bisect and two additions."""

    __slots__ = ("bounds", "bounds_ns", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.bounds_ns = tuple(round(b * 1e9) for b in bounds)  # for callers timing in ns
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative buckets as prometheus_client wants them, ending with +Inf."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts):
            running += count
            out.append((repr(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out

    def add_to(self, family: HistogramMetricFamily, labels: list[str]) -> None:
        family.add_metric(labels, self.buckets(), self.total)


class CallbackCollector(Collector):
    """Adapts a function returning metric families into a prometheus_client collector."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


def serve_metrics(port: int, host: str, collect: Callable[[], Iterable[Metric]]) -> int:
    """Serve /metrics on a background HTTP thread; returns the bound port."""
    registry = CollectorRegistry()
    registry.register(CallbackCollector(collect))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)
