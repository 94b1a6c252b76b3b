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
        "read_retries",
        "read_retries_failed",
        "read_totals",
        "refused",
        "rejected",
        "reloads_failed",
        "reloads_ok",
        "stale_replies",
        "topologies_adopted",
        "topologies_ignored",
        "write_retries",
        "write_retries_failed",
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
        self.topologies_adopted = 0
        self.topologies_ignored = 0  # not a higher epoch (replays, the same one from each sentinel)
        self.stale_replies = 0  # -STALE from a node: it has seen a newer epoch than ours
        self.write_retries = 0  # -READONLY writes sent again to a newer primary
        self.write_retries_failed = 0  # ... answered with the error instead
        self.read_retries = 0  # reads lost with a failed node, sent again to its successor
        self.read_retries_failed = 0  # ... answered with the connection error instead
        # shard name → [replica reads, primary fallbacks, refused], from replaced read plans
        self.read_totals: dict[str, list[int]] = {}

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
    topo = CounterMetricFamily(
        p + "topologies", "Topologies offered (sentinels, file)", labels=["result"]
    )
    topo.add_metric(["adopted"], stats.topologies_adopted)
    topo.add_metric(["ignored"], stats.topologies_ignored)
    yield topo
    yield CounterMetricFamily(
        p + "stale_replies", "-STALE answers from nodes (each asks for a refresh)",
        value=stats.stale_replies,
    )  # fmt: skip
    retries = CounterMetricFamily(
        p + "write_retries", "Writes refused with -READONLY by a superseded primary",
        labels=["result"],
    )  # fmt: skip
    retries.add_metric(["retried"], stats.write_retries)
    retries.add_metric(["failed"], stats.write_retries_failed)
    yield retries
    read_retries = CounterMetricFamily(
        p + "read_retries", "Read-only requests lost with a failed backend connection",
        labels=["result"],
    )  # fmt: skip
    read_retries.add_metric(["retried"], stats.read_retries)
    read_retries.add_metric(["failed"], stats.read_retries_failed)
    yield read_retries
    follower = proxy.follower
    if follower is not None:
        sup = GaugeMetricFamily(
            p + "sentinel_up", "1 while subscribed to the sentinel", labels=["sentinel"]
        )
        sep = GaugeMetricFamily(
            p + "sentinel_epoch", "Topology epoch the sentinel last showed", labels=["sentinel"]
        )
        for link in follower.links:
            sup.add_metric([str(link.address)], 1 if link.subscribed else 0)
            sep.add_metric([str(link.address)], link.epoch)
        yield sup
        yield sep
        ref = CounterMetricFamily(
            p + "topology_refreshes", "Immediate topology fetches asked for", labels=["reason"]
        )
        for reason, count in sorted(follower.refreshes.items()):
            ref.add_metric([reason], count)
        yield ref
    reads = CounterMetricFamily(
        p + "replica_reads", "Read-only commands by where they went (replica reads)",
        labels=["shard", "result"],
    )  # fmt: skip
    for name, (served, fallback, refused) in sorted(proxy.read_counters().items()):
        reads.add_metric([name, "replica"], served)
        reads.add_metric([name, "primary_fallback"], fallback)
        reads.add_metric([name, "refused"], refused)
    yield reads
    lag = GaugeMetricFamily(
        p + "replica_lag_seconds", "Replica staleness bound measured by the proxy",
        labels=["shard", "replica"],
    )  # fmt: skip
    eligible = GaugeMetricFamily(
        p + "replica_eligible", "1 when reads may go to the replica (0: skipped)",
        labels=["shard", "replica"],
    )  # fmt: skip
    now = proxy.now()
    for plan in proxy.reads or ():
        if plan is None:
            continue
        for addr in plan.lag.replicas:
            value = plan.lag.lag(addr, now)
            lv = [plan.name, str(addr)]
            lag.add_metric(lv, float("inf") if value is None else value)
            ok = any(c is plan.replica_conns[addr] for c in plan.candidates)
            eligible.add_metric(lv, 1 if ok else 0)
    yield lag
    yield eligible
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
