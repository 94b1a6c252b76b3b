"""Redis-Sentinel-shaped replies, read back the way redis-py's Sentinel parses them."""

from __future__ import annotations

from redis._parsers.helpers import parse_sentinel_state

from sentinel.actions import NodeReport, PeerMessage, PingReply, Role
from sentinel.compat import find_shard, master_addr, master_fields, replica_fields, sentinel_fields
from sentinel.messages import DownReport, Hello
from sentinel.status import build_status
from tests.sentinel.sim import addr
from tests.sentinel.test_core import R1, R2, P, core


def parsed(fields: list[str]) -> dict[str, object]:
    return dict(parse_sentinel_state(fields))


def test_masters_replicas_and_sentinels_as_redis_py_reads_them() -> None:
    c = core()
    c.handle(PeerMessage(Hello("s2", addr(26380), 1, 1)), 10)
    c.handle(PingReply(P), 10)
    c.handle(NodeReport(R1, Role.REPLICA, 1, P, 42), 10)
    st = build_status(c, 20)
    shard = find_shard(st, "s0")
    assert shard is not None
    m = parsed(master_fields(st, shard, quorum=2, down_after_ms=1000, failover_timeout_ms=3000))
    assert (m["name"], m["ip"], m["port"], m["is_master"], m["is_sdown"]) == (
        "s0",
        "127.0.0.1",
        7001,
        True,
        False,
    )
    assert (m["num-other-sentinels"], m["quorum"], m["config-epoch"]) == (2, 2, 1)
    r1, r2 = (parsed(replica_fields(r, shard.primary)) for r in shard.replicas)
    assert (r1["ip"], r1["port"], r1["is_slave"], r1["is_disconnected"]) == (
        "127.0.0.1",
        7101,
        True,
        False,
    )
    assert r1["slave-repl-offset"] == 42 and r1["master-port"] == 7001
    assert r2["is_disconnected"] is True  # never reported: redis-py skips it
    sentinels = [parsed(s) for s in sentinel_fields(st)]
    assert [(s["name"], s["port"], s["is_sentinel"]) for s in sentinels] == [
        ("s2", 26380, True),
        ("s3", 26381, True),
    ]
    assert master_addr(st, "s0") == ["127.0.0.1", "7001"] and master_addr(st, "x") is None


def test_a_down_primary_is_flagged() -> None:
    c = core()
    c.handle(PingReply(R1), 1000)
    c.handle(PingReply(R2), 1000)
    c.tick(1001)
    c.handle(PeerMessage(DownReport("s2", "s0", P, 1, True)), 1001)
    st = build_status(c, 1001)
    shard = find_shard(st, "s0")
    assert shard is not None
    m = parsed(master_fields(st, shard, quorum=2, down_after_ms=1000, failover_timeout_ms=3000))
    assert (m["is_sdown"], m["is_odown"]) == (True, True)
    assert m["flags"] == "master,s_down,o_down"
