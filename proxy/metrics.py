"""Every metric the proxy exports, declared here once.

The hot path only bumps plain ints (``ProxyStats``, ``BackendConn`` counters) and one
``FastHistogram``; ``collect`` turns them into Prometheus families when /metrics is scraped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from proxy.router import lookup
from shardgate.metrics import FastHistogram

if TYPE_CHECKING:
    from proxy.server import Proxy


class ProxyStats:
    """Plain counters, bumped without locks or label lookups."""

    __slots__ = (
        "clients_connected",
        "clients_rejected",
        "clients_total",
        "commands",
        "latency",
        "noauth",
        "protocol_errors",
        "refused",
        "rejected",
        "reloads_failed",
        "reloads_ok",
    )

    def __init__(self) -> None:
        self.commands: dict[bytes, int] = {}  # wire spelling → count (names folded at scrape)
        self.latency = FastHistogram()  # backend round trip as seen by the proxy
        self.clients_connected = 0
        self.clients_total = 0
        self.clients_rejected = 0  # over maxclients
        self.protocol_errors = 0
        self.noauth = 0
        self.refused = 0  # backend down or busy: answered at once
        self.rejected = 0  # CROSSSLOT, unsupported, arity
        self.reloads_ok = 0
        self.reloads_failed = 0

    def commands_by_name(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for raw, count in dict(self.commands).items():
            spec = lookup(raw)
            name = spec.name if spec is not None else "unknown"
            out[name] = out.get(name, 0) + count
        return out


def collect(proxy: Proxy) -> Iterable[Metric]:
    stats = proxy.stats
    p = "shardgate_proxy_"
    cmds = CounterMetricFamily(p + "commands", "Commands received, by name", labels=["command"])
    for name, count in sorted(stats.commands_by_name().items()):
        cmds.add_metric([name], count)
    yield cmds
    lat = HistogramMetricFamily(
        p + "backend_latency_seconds", "Backend round trip of forwarded requests", labels=[]
    )
    stats.latency.add_to(lat, [])
    yield lat
    yield GaugeMetricFamily(p + "clients", "Connected clients", value=stats.clients_connected)
    yield CounterMetricFamily(
        p + "clients_accepted", "Client connections accepted", value=stats.clients_total
    )
    yield CounterMetricFamily(
        p + "clients_rejected", "Connections refused over maxclients", value=stats.clients_rejected
    )
    errs = CounterMetricFamily(
        p + "errors", "Requests answered with a proxy error", labels=["kind"]
    )
    errs.add_metric(["protocol"], stats.protocol_errors)
    errs.add_metric(["noauth"], stats.noauth)
    errs.add_metric(["backend_unavailable"], stats.refused)
    errs.add_metric(["rejected"], stats.rejected)
    yield errs
    reloads = CounterMetricFamily(p + "reloads", "Config reloads", labels=["result"])
    reloads.add_metric(["ok"], stats.reloads_ok)
    reloads.add_metric(["failed"], stats.reloads_failed)
    yield reloads
    yield GaugeMetricFamily(
        p + "topology_epoch", "Epoch of the topology in force", value=proxy.router.epoch
    )
    labels = ["backend", "shard"]
    inflight = GaugeMetricFamily(
        p + "backend_inflight", "Requests in flight per backend", labels=labels
    )
    up = GaugeMetricFamily(p + "backend_up", "1 when the backend connection is up", labels=labels)
    reqs = CounterMetricFamily(p + "backend_requests", "Requests sent per backend", labels=labels)
    berr = CounterMetricFamily(p + "backend_errors", "Requests failed per backend", labels=labels)
    bto = CounterMetricFamily(
        p + "backend_timeouts", "Requests timed out per backend", labels=labels
    )
    for conn, shard in proxy.backend_list():
        lv = [conn.label, shard]
        inflight.add_metric(lv, conn.inflight)
        up.add_metric(lv, 1 if conn.up else 0)
        reqs.add_metric(lv, conn.requests)
        berr.add_metric(lv, conn.errors)
        bto.add_metric(lv, conn.timeouts)
    yield from (inflight, up, reqs, berr, bto)
