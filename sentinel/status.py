"""What ``shardgate sentinel status`` and ``history`` show: values built from a core, rendered as
tables or JSON-ready dicts (sans-I/O: pure functions of the core's state and ``now``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from sentinel.core import SentinelCore
from sentinel.detector import Health
from sentinel.membership import QuorumStatus
from sentinel.state import FailoverRecord
from shardgate.topology import NodeAddress


@attrs.frozen(slots=True)
class NodeView:
    address: NodeAddress
    role: str  # in the topology: primary | replica
    health: Health  # this sentinel's view
    reported_role: str | None  # what the node itself says, None if never heard
    reported_epoch: int | None
    offset: int | None
    lag: int | None  # primary offset minus this node's offset (replicas)
    priority: int | None  # replicas


@attrs.frozen(slots=True)
class ShardView:
    name: str
    primary: NodeView
    replicas: tuple[NodeView, ...]
    views: tuple[tuple[str, Health], ...]  # sentinel id → its view of the primary
    failover: str | None  # the step of a failover this sentinel is running
    last_failover: FailoverRecord | None


@attrs.frozen(slots=True)
class SentinelStatus:
    id: str
    current_epoch: int
    topology_epoch: int
    tilt: bool
    quorum: QuorumStatus
    sentinels: tuple[tuple[str, str, Health], ...]  # id, address, health
    shards: tuple[ShardView, ...]
    proxies: tuple[tuple[str, int], ...] = ()  # proxy → the topology epoch it reported


def build_status(core: SentinelCore, now: int) -> SentinelStatus:
    det = core.detector
    shards = []
    for s in core.topology.shards:
        primary_report = core.reports.get(s.primary)
        primary_offset = primary_report[0].offset if primary_report else None

        def view(
            node: NodeAddress, role: str, primary_offset: int | None = primary_offset
        ) -> NodeView:
            entry = core.reports.get(node)
            report = entry[0] if entry else None
            offset = report.offset if report else None
            lag = None
            if role == "replica" and offset is not None and primary_offset is not None:
                lag = max(0, primary_offset - offset)
            return NodeView(
                node,
                role,
                det.state(node),
                report.role.value if report else None,
                report.epoch if report else None,
                offset,
                lag,
                core.config.priority(node) if role == "replica" else None,
            )

        own = det.state(s.primary)
        views = ((core.id, own), *det.peer_views(s.primary, now).items())
        fo = core.failovers.get(s.name)
        last = next((r for r in reversed(core.history) if r.shard == s.name), None)
        shards.append(
            ShardView(
                s.name,
                view(s.primary, "primary"),
                tuple(view(r, "replica") for r in s.replicas),
                tuple(views),
                fo.step.value if fo else None,
                last,
            )
        )
    sentinels = tuple((sid, str(addr), det.state(sid)) for sid, addr in sorted(core.peers.items()))
    return SentinelStatus(
        core.id,
        core.elector.current_epoch,
        core.topology.epoch,
        core.tilt.tilted,
        core.quorum_status(now),
        sentinels,
        tuple(shards),
        tuple((name, epoch) for name, (epoch, _) in sorted(core.proxy_epochs.items())),
    )


# -- JSON -------------------------------------------------------------------------------------


def record_to_dict(r: FailoverRecord) -> dict[str, Any]:
    start = r.timeline[0][1] if r.timeline else 0
    return {
        "epoch": r.epoch,
        "shard": r.shard,
        "leader": r.leader,
        "manual": r.manual,
        "old_primary": r.old_primary,
        "new_primary": r.new_primary,
        "outcome": r.outcome,
        "duration_ms": r.duration_ms(),
        "timeline": [{"step": step, "after_ms": at - start} for step, at in r.timeline],
        "votes": dict(r.votes),
        "ranking": [{"replica": a, "verdict": v} for a, v in r.ranking],
    }


def _node_dict(n: NodeView) -> dict[str, Any]:
    return {
        "address": str(n.address),
        "role": n.role,
        "health": n.health.value,
        "reported_role": n.reported_role,
        "reported_epoch": n.reported_epoch,
        "offset": n.offset,
        "lag": n.lag,
        "priority": n.priority,
    }


def status_to_dict(st: SentinelStatus) -> dict[str, Any]:
    q = st.quorum
    return {
        "id": st.id,
        "current_epoch": st.current_epoch,
        "topology_epoch": st.topology_epoch,
        "tilt": st.tilt,
        "quorum": {
            "sentinels": q.sentinels,
            "reachable": q.reachable,
            "quorum": q.quorum,
            "majority": q.majority,
            "needed": q.needed,
            "can_fail_over": q.can_fail_over,
            "reason": q.reason,
        },
        "sentinels": [{"id": i, "address": a, "health": h.value} for i, a, h in st.sentinels],
        "proxies": {name: epoch for name, epoch in st.proxies},
        "shards": [
            {
                "name": s.name,
                "primary": _node_dict(s.primary),
                "replicas": [_node_dict(r) for r in s.replicas],
                "views": {sid: h.value for sid, h in s.views},
                "failover": s.failover,
                "last_failover": None
                if s.last_failover is None
                else record_to_dict(s.last_failover),
            }
            for s in st.shards
        ],
    }


# -- text -------------------------------------------------------------------------------------


def table(headers: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _opt(value: object) -> str:
    return "-" if value is None else str(value)


def render_status(st: SentinelStatus) -> str:
    q = st.quorum
    out = [
        f"sentinel {st.id}  epoch {st.current_epoch}  topology epoch {st.topology_epoch}"
        + ("  TILT" if st.tilt else ""),
        f"quorum {q.quorum}, majority {q.majority} of {q.sentinels} sentinels: {q.reason}",
        "",
        table(
            ("SENTINEL", "ADDRESS", "VIEW"),
            [(sid, a, h.value) for sid, a, h in st.sentinels],
        ),
    ]
    if st.proxies:
        out += ["", table(("PROXY", "EPOCH"), [(name, str(e)) for name, e in st.proxies])]
    for s in st.shards:
        out.append("")
        views = ", ".join(f"{sid}={h.value}" for sid, h in s.views)
        line = f"shard {s.name}: primary {s.primary.address} ({views})"
        if s.failover:
            line += f"  failover in progress: {s.failover}"
        out.append(line)
        rows = [
            (
                n.role,
                str(n.address),
                n.health.value,
                f"{_opt(n.reported_role)}@{_opt(n.reported_epoch)}",
                _opt(n.offset),
                _opt(n.lag),
                _opt(n.priority),
            )
            for n in (s.primary, *s.replicas)
        ]
        out.append(table(("ROLE", "NODE", "VIEW", "REPORTS", "OFFSET", "LAG", "PRIORITY"), rows))
        if s.last_failover is not None:
            r = s.last_failover
            out.append(
                f"last failover: epoch {r.epoch} {r.old_primary} -> {_opt(r.new_primary)} "
                f"{r.outcome} in {_opt(r.duration_ms())} ms (leader {r.leader})"
            )
    return "\n".join(out)


def render_history(records: tuple[FailoverRecord, ...] | list[FailoverRecord]) -> str:
    if not records:
        return "no failovers"
    out = []
    for r in records:
        kind = "manual" if r.manual else "automatic"
        out.append(
            f"epoch {r.epoch}  shard {r.shard}  {kind}  {r.old_primary} -> {_opt(r.new_primary)}"
            f"  {r.outcome}  leader {r.leader}  {_opt(r.duration_ms())} ms"
        )
        start = r.timeline[0][1] if r.timeline else 0
        prev = start
        steps = []
        for step, at in r.timeline:
            steps.append(f"{step} +{at - start} ms (+{at - prev})")
            prev = at
        out.append("  steps: " + ", ".join(steps))
        if r.votes:
            out.append("  votes: " + ", ".join(f"{v}->{c or 'refused'}" for v, c in r.votes))
        for replica, verdict in r.ranking:
            out.append(f"  {replica}: {verdict}")
    return "\n".join(out)
