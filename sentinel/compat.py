"""Redis Sentinel's reply shapes for ``SENTINEL masters | master | replicas | sentinels``
(sans-I/O: values from a ``SentinelStatus`` in, field lists out).

Each instance is a flat list ``[field, value, field, value, ...]`` of strings, the way Redis
Sentinel answers (a RESP array of bulk strings; RESP3 maps are built from the same pairs).
redis-py's ``Sentinel`` reads ``name``, ``ip``, ``port``, ``flags`` (``master``/``slave``,
``s_down``, ``o_down``, ``disconnected``), ``num-other-sentinels`` and ``quorum``; the other
fields are there for ``redis-cli`` users who know Sentinel's output.
"""

from __future__ import annotations

from sentinel.detector import Health
from sentinel.status import NodeView, SentinelStatus, ShardView


def _flags(base: str, health: Health, *, extra: tuple[str, ...] = ()) -> str:
    flags = [base]
    if health is not Health.UP:
        flags.append("s_down")
    if health is Health.ODOWN:
        flags.append("o_down")
    return ",".join((*flags, *extra))


def _pairs(**fields: object) -> list[str]:
    out: list[str] = []
    for key, value in fields.items():
        out += [key.replace("_", "-"), str(value)]
    return out


def master_fields(
    st: SentinelStatus,
    shard: ShardView,
    *,
    quorum: int,
    down_after_ms: int,
    failover_timeout_ms: int,
) -> list[str]:
    p = shard.primary
    extra = ("failover_in_progress",) if shard.failover else ()
    return _pairs(
        name=shard.name,
        ip=p.address.host,
        port=p.address.port,
        runid="",
        flags=_flags("master", p.health, extra=extra),
        role_reported="master",
        config_epoch=st.topology_epoch,
        num_slaves=len(shard.replicas),
        num_other_sentinels=len(st.sentinels),
        quorum=quorum,
        down_after_milliseconds=down_after_ms,
        failover_timeout=failover_timeout_ms,
        parallel_syncs=len(shard.replicas),
    )


def replica_fields(replica: NodeView, primary: NodeView) -> list[str]:
    connected = replica.reported_role == "replica"
    return _pairs(
        name=str(replica.address),
        ip=replica.address.host,
        port=replica.address.port,
        runid="",
        flags=_flags("slave", replica.health, extra=() if connected else ("disconnected",)),
        role_reported="slave",
        master_link_status="ok" if connected else "err",
        master_host=primary.address.host,
        master_port=primary.address.port,
        slave_priority=replica.priority if replica.priority is not None else 100,
        slave_repl_offset=replica.offset if replica.offset is not None else 0,
    )


def sentinel_fields(st: SentinelStatus) -> list[list[str]]:
    out = []
    for sid, address, health in st.sentinels:
        host, _, port = address.rpartition(":")
        out.append(
            _pairs(
                name=sid,
                ip=host.strip("[]"),
                port=port,
                runid=sid,
                flags=_flags("sentinel", health),
            )
        )
    return out


def find_shard(st: SentinelStatus, name: str) -> ShardView | None:
    return next((s for s in st.shards if s.name == name), None)


def master_addr(st: SentinelStatus, name: str) -> list[str] | None:
    """``SENTINEL get-master-addr-by-name``: ``[ip, port]`` or None (a nil reply)."""
    shard = find_shard(st, name)
    if shard is None:
        return None
    return [shard.primary.address.host, str(shard.primary.address.port)]
