"""The store node's Prometheus metrics, declared in this one place.

Counters live as plain ints on the node (see shardgate/metrics.py for why); this collector
turns them into metric families when Prometheus scrapes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from storenode.info import rss_bytes
from storenode.roles import Role

if TYPE_CHECKING:
    from storenode.node import Node

# (name, help) of every metric the node exports; docs/metrics.md lists the same.
NODE_METRICS = {
    "shardgate_node_commands_total": "Commands processed, by command.",
    "shardgate_node_command_errors_total": "Commands answered with an error, by command.",
    "shardgate_node_command_duration_seconds": "Time to execute one command (excluding I/O).",
    "shardgate_node_keys": "Keys in the dataset.",
    "shardgate_node_expiring_keys": "Keys with a TTL.",
    "shardgate_node_used_memory_bytes": "Dataset memory as accounted by the keyspace.",
    "shardgate_node_maxmemory_bytes": "Configured maxmemory (0 = unlimited).",
    "shardgate_node_rss_bytes": "Resident set size of the node process.",
    "shardgate_node_evicted_keys_total": "Keys evicted by the maxmemory policy.",
    "shardgate_node_expired_keys_total": "Keys deleted because their TTL passed.",
    "shardgate_node_keyspace_hits_total": "Reads that found their key.",
    "shardgate_node_keyspace_misses_total": "Reads that did not find their key.",
    "shardgate_node_connected_clients": "Open client connections.",
    "shardgate_node_connections_total": "Client connections accepted.",
    "shardgate_node_rejected_connections_total": "Connections refused at maxclients.",
    "shardgate_node_protocol_errors_total": "Connections closed for a protocol error.",
    "shardgate_node_net_input_bytes_total": "Bytes read from clients.",
    "shardgate_node_net_output_bytes_total": "Bytes written to clients.",
    "shardgate_node_role": "1 for the node's current role (label role: primary, replica, unassigned).",
    "shardgate_node_epoch": "Newest topology epoch the node has seen.",
    "shardgate_node_fenced": "1 when a primary was superseded by a newer epoch and takes no writes.",
    "shardgate_node_repl_offset_bytes": "Replication offset: written (primary) or applied (replica).",
    "shardgate_node_connected_replicas": "Replicas connected to this primary.",
    "shardgate_node_replica_ack_lag_seconds": "Seconds since each replica last acked (label replica).",
    "shardgate_node_replica_offset_lag_bytes": "Stream bytes each replica has not acked (label replica).",
    "shardgate_node_primary_link_up": "Replica: 1 while the link to the primary streams.",
    "shardgate_node_full_syncs_total": "Full snapshots served to replicas.",
    "shardgate_node_partial_syncs_total": "Partial resyncs served from the backlog.",
}


def collect_node(node: Node, labels: dict[str, str]) -> Iterable[Metric]:
    names = list(labels)
    values = list(labels.values())
    h = NODE_METRICS

    def gauge(name: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, h[name], labels=names)
        g.add_metric(values, value)
        return g

    def counter(name: str, value: float) -> CounterMetricFamily:
        c = CounterMetricFamily(name.removesuffix("_total"), h[name], labels=names)
        c.add_metric(values, value)
        return c

    calls = CounterMetricFamily(
        "shardgate_node_commands", h["shardgate_node_commands_total"], labels=[*names, "command"]
    )
    errors = CounterMetricFamily(
        "shardgate_node_command_errors",
        h["shardgate_node_command_errors_total"],
        labels=[*names, "command"],
    )
    for command, (count, _usec, failed) in list(node.stats.command_calls.items()):
        if not count:
            continue
        calls.add_metric([*values, command], count)
        errors.add_metric([*values, command], failed)
    latency = HistogramMetricFamily(
        "shardgate_node_command_duration_seconds",
        h["shardgate_node_command_duration_seconds"],
        labels=names,
    )
    node.stats.latency.add_to(latency, values)
    ks = node.keyspace
    s = node.stats
    repl = node.repl
    role = GaugeMetricFamily(
        "shardgate_node_role", h["shardgate_node_role"], labels=[*names, "role"]
    )
    for r in Role:
        role.add_metric([*values, r.value], 1 if node.roles.role is r else 0)
    now = time.monotonic()
    ack_lag = GaugeMetricFamily(
        "shardgate_node_replica_ack_lag_seconds",
        h["shardgate_node_replica_ack_lag_seconds"],
        labels=[*names, "replica"],
    )
    offset_lag = GaugeMetricFamily(
        "shardgate_node_replica_offset_lag_bytes",
        h["shardgate_node_replica_offset_lag_bytes"],
        labels=[*names, "replica"],
    )
    for rec in list(repl.replicas.replicas.values()):
        ack_lag.add_metric(
            [*values, rec.addr], max(0.0, now - rec.last_ack) if rec.last_ack else 0.0
        )
        offset_lag.add_metric([*values, rec.addr], max(0, repl.offset - rec.ack_offset))
    replication = [
        role,
        gauge("shardgate_node_epoch", node.roles.epoch),
        gauge("shardgate_node_fenced", int(node.roles.fenced)),
        gauge("shardgate_node_repl_offset_bytes", repl.offset),
        gauge("shardgate_node_connected_replicas", len(repl.replicas.replicas)),
        ack_lag,
        offset_lag,
        gauge("shardgate_node_primary_link_up", int(repl.link_up)),
        counter("shardgate_node_full_syncs_total", repl.full_syncs),
        counter("shardgate_node_partial_syncs_total", repl.partial_syncs),
    ]
    return [
        *replication,
        calls,
        errors,
        latency,
        gauge("shardgate_node_keys", len(ks)),
        gauge("shardgate_node_expiring_keys", ks.expires_count),
        gauge("shardgate_node_used_memory_bytes", ks.used_memory),
        gauge("shardgate_node_maxmemory_bytes", ks.maxmemory),
        gauge("shardgate_node_rss_bytes", rss_bytes()),
        counter("shardgate_node_evicted_keys_total", ks.stats.evicted_keys),
        counter("shardgate_node_expired_keys_total", ks.stats.expired_keys),
        counter("shardgate_node_keyspace_hits_total", ks.stats.keyspace_hits),
        counter("shardgate_node_keyspace_misses_total", ks.stats.keyspace_misses),
        gauge("shardgate_node_connected_clients", len(node.sessions)),
        counter("shardgate_node_connections_total", s.connections_received),
        counter("shardgate_node_rejected_connections_total", s.rejected_connections),
        counter("shardgate_node_protocol_errors_total", s.protocol_errors),
        counter("shardgate_node_net_input_bytes_total", s.net_input_bytes),
        counter("shardgate_node_net_output_bytes_total", s.net_output_bytes),
    ]
