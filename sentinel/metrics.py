"""The sentinel's Prometheus metrics, declared in this one place (read at scrape time)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from sentinel.status import build_status

if TYPE_CHECKING:
    from sentinel.server import SentinelServer

SENTINEL_METRICS = {
    "shardgate_sentinel_current_epoch": "The sentinel's current (voting) epoch.",
    "shardgate_sentinel_topology_epoch": "Epoch of the topology this sentinel holds.",
    "shardgate_sentinel_tilt": "1 while the sentinel is in TILT (neither votes nor acts).",
    "shardgate_sentinel_quorum_ok": "1 when quorum and a majority of sentinels are reachable.",
    "shardgate_sentinel_reachable_sentinels": "Sentinels (self included) this one can reach.",
    "shardgate_sentinel_primary_down": "This sentinel's view of each shard's primary: 0 up, 1 sdown, 2 odown.",
    "shardgate_sentinel_failovers_total": "Failovers recorded in this sentinel's history, by outcome.",
    "shardgate_sentinel_proxy_epoch": "Topology epoch each proxy reported routing by.",
}

_DOWN = {"up": 0, "sdown": 1, "odown": 2}


def collect_sentinel(server: SentinelServer) -> Iterable[Metric]:
    """Runs on prometheus_client's HTTP thread: read the core on the trio thread, never here."""
    if server.trio_token is None:
        return []
    return trio.from_thread.run_sync(_collect, server, trio_token=server.trio_token)


def _collect(server: SentinelServer) -> list[Metric]:
    st = build_status(server.core, server.now())
    sid = ["sentinel"]
    me = [st.id]
    h = SENTINEL_METRICS

    def gauge(name: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, h[name], labels=sid)
        g.add_metric(me, value)
        return g

    down = GaugeMetricFamily(
        "shardgate_sentinel_primary_down",
        h["shardgate_sentinel_primary_down"],
        labels=[*sid, "shard", "node"],
    )
    for s in st.shards:
        down.add_metric([*me, s.name, str(s.primary.address)], _DOWN.get(s.primary.health.value, 1))
    outcomes: dict[str, int] = {"done": 0}  # always one sample, so alerts can rate() it
    for record in server.core.history:
        outcomes[record.outcome] = outcomes.get(record.outcome, 0) + 1
    failovers = CounterMetricFamily(
        "shardgate_sentinel_failovers",
        h["shardgate_sentinel_failovers_total"],
        labels=[*sid, "outcome"],
    )
    for outcome, count in sorted(outcomes.items()):
        failovers.add_metric([*me, outcome], count)
    proxies = GaugeMetricFamily(
        "shardgate_sentinel_proxy_epoch",
        h["shardgate_sentinel_proxy_epoch"],
        labels=[*sid, "proxy"],
    )
    for proxy, epoch in st.proxies:
        proxies.add_metric([*me, proxy], epoch)
    return [
        gauge("shardgate_sentinel_current_epoch", st.current_epoch),
        gauge("shardgate_sentinel_topology_epoch", st.topology_epoch),
        gauge("shardgate_sentinel_tilt", int(st.tilt)),
        gauge("shardgate_sentinel_quorum_ok", int(st.quorum.can_fail_over)),
        gauge("shardgate_sentinel_reachable_sentinels", st.quorum.reachable),
        down,
        failovers,
        proxies,
    ]
