"""Replica lag and the follow timing rules (pure cores), and the topology's wire form."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ProxyConfig
from proxy.follow import Backoff, RefreshLimiter
from proxy.replicas import ReadFrom, Replication, ShardLag, parse_replication
from proxy.router import NO_TOPOLOGY, Local, Reject, Unrouted, is_readonly
from shardgate.config import ConfigError
from shardgate.topology import (
    NodeAddress,
    Topology,
    TopologyError,
    topology_from_wire,
    topology_to_wire,
)

P = NodeAddress("127.0.0.1", 7001)
R1 = NodeAddress("127.0.0.1", 7101)
R2 = NodeAddress("127.0.0.1", 7102)


def primary(offset: int) -> Replication:
    return Replication("primary", offset, False, None)


def replica(offset: int, *, link: bool = True, of: NodeAddress = P) -> Replication:
    return Replication("replica", offset, link, of)


def test_lag_is_the_time_since_the_replica_last_held_what_the_primary_had() -> None:
    lag = ShardLag(P, (R1, R2))
    assert lag.lag(R1, 0.0) is None  # never seen caught up: unknown
    lag.observe(P, primary(100), 1.0)
    lag.observe(P, primary(250), 1.1)
    lag.observe(P, primary(400), 1.2)
    lag.observe(R1, replica(250), 1.25)  # holds what the primary had at 1.1
    lag.observe(R2, replica(400), 1.25)  # holds what the primary had at 1.2
    assert lag.lag(R1, 1.3) == pytest.approx(0.2)
    assert lag.lag(R2, 1.3) == pytest.approx(0.1)
    assert lag.eligible(0.15, 1.3) == (R2,)
    assert lag.eligible(0, 1.3) == (R1, R2)  # 0: no limit
    # R1 stops answering (SIGSTOP): its bound keeps growing by itself
    for i in range(3, 20):
        lag.observe(P, primary(400 + i), 1.0 + i / 10)
        lag.observe(R2, replica(400 + i), 1.0 + i / 10)
    assert lag.lag(R1, 2.9) == pytest.approx(1.8)
    assert lag.eligible(1.0, 2.9) == (R2,)
    # a failed poll, a broken link, or following someone else: unknown at once
    lag.observe(R2, None, 3.0)
    assert lag.lag(R2, 3.0) is None
    lag.observe(R2, replica(500, link=False), 3.1)
    assert lag.lag(R2, 3.1) is None
    lag.observe(R2, replica(500, of=R1), 3.2)
    assert lag.lag(R2, 3.2) is None
    # an idle primary: a caught-up replica has lag ~0 at every poll
    lag.observe(R2, replica(419), 3.3)
    assert lag.lag(R2, 3.3) == pytest.approx(3.3 - 2.9)


def test_parse_replication_reads_shardgate_and_redis_fields() -> None:
    text = (
        "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:7001\r\n"
        "master_link_status:up\r\nslave_repl_offset:42\r\nshardgate_role:replica\r\n"
    )
    assert parse_replication(text) == Replication("replica", 42, True, P)
    assert parse_replication("role:master\r\nmaster_repl_offset:9\r\n") == primary(9)
    assert parse_replication("role:slave\r\n") is None


def test_backoff_and_refresh_limit() -> None:
    b = Backoff()
    assert [b.failed() for _ in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    b.succeeded()
    assert b.failed() == 0.1
    limiter = RefreshLimiter(interval=0.1)
    assert not limiter.take(0.0)  # nothing asked
    assert limiter.request(0.0) == 0.0 and limiter.take(0.0)
    assert limiter.request(0.05) == pytest.approx(0.1)  # inside the interval: deferred
    assert not limiter.take(0.05)
    assert limiter.take(0.1)
    assert not limiter.take(0.3)


def test_topology_wire_form_round_trips_and_rejects_garbage() -> None:
    t = Topology.even([P, R1], epoch=7)
    assert topology_from_wire(topology_to_wire(t)) == t
    for junk in (b"", b"\xc1", b"\x01", topology_to_wire(t)[:-3]):
        with pytest.raises(TopologyError):
            topology_from_wire(junk)


def test_unrouted_answers_local_commands_and_refuses_the_rest() -> None:
    r = Unrouted()
    assert isinstance(r.route([b"PING"]), Local)
    decision = r.route([b"GET", b"k"])
    assert isinstance(decision, Reject) and decision.reply == NO_TOPOLOGY
    assert is_readonly(b"get") and is_readonly(b"MGET") and not is_readonly(b"SET")
    assert not is_readonly(b"scan")  # a cursor must come back to the same node


def test_cluster_file_proxy_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'sentinels = ["127.0.0.1:26379", "127.0.0.1:26380"]\nread_from = "prefer_replica"\n'
        "max_replica_lag_ms = 250\n"
    )
    s = ProxyConfig(config_path=str(path)).load_settings()
    assert s.topology is None and len(s.sentinels) == 2
    assert s.read_from is ReadFrom.PREFER_REPLICA and s.max_replica_lag_ms == 250
    path.write_text(
        Topology.even([P, R1])
        .to_toml()
        .replace('name = "shard1"', 'name = "shard1"\nread_from = "replica"')
    )
    s = ProxyConfig(config_path=str(path), read_from=ReadFrom.PREFER_REPLICA).load_settings()
    assert s.topology is not None and not s.sentinels
    assert s.read_mode("shard0") is ReadFrom.PREFER_REPLICA
    assert s.read_mode("shard1") is ReadFrom.REPLICA
    path.write_text('read_from = "nearest"\n' + Topology.even([P]).to_toml())
    with pytest.raises(ConfigError, match="read_from"):
        ProxyConfig(config_path=str(path)).load_settings()
    path.write_text('sentinel_password = "x"\n')
    with pytest.raises(ConfigError, match="shards"):
        ProxyConfig(config_path=str(path)).load_settings()
    with pytest.raises(ConfigError):
        ProxyConfig()
