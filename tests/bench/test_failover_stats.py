"""``bench failover``'s arithmetic on known inputs."""

from __future__ import annotations

import pytest

from bench.failover import replica_synced
from bench.failover_lab import shard_tags
from bench.failover_stats import Kill, Write, blackout, lost_keys, percentile, render, summarize
from shardgate.slots import SLOTS, slot_for_key


def test_blackout_counts_only_writes_sent_after_the_kill() -> None:
    writes = [
        Write(b"a", 9.9, 10.2),  # in flight at the kill: its ack proves nothing
        Write(b"b", 10.0, None),
        Write(b"c", 10.5, None),
        Write(b"d", 11.0, 11.25),
        Write(b"e", 11.3, 11.31),
    ]
    assert blackout(writes, 10.0) == pytest.approx(1.25)
    assert blackout(writes[:3], 10.0) is None


def test_lost_keys() -> None:
    assert lost_keys([b"a", b"b", b"c"], {b"a", b"c", b"z"}) == [b"b"]


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 11)]
    assert percentile(values, 50) == 5.0
    assert percentile(values, 99) == 10.0
    assert percentile([3.0], 50) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_and_table() -> None:
    kills = [
        Kill("node0", {"proxy0": 1.2, "proxy1": None}, acked=100, lost=2),
        Kill("node1", {"proxy0": 1.4, "proxy1": 2.0}, acked=50, lost=0),
    ]
    s = {x.path: x for x in summarize(kills)}
    assert (s["proxy0"].recovered, s["proxy0"].p50_ms, s["proxy0"].max_ms) == (2, 1200.0, 1400.0)
    assert (s["proxy1"].recovered, s["proxy1"].p99_ms) == (1, 2000.0)
    text = render("shardgate", "async", kills)
    assert "| shardgate, async, proxy0 | 2/2 | 1,200 | 1,400 | 1,400 | 2 of 150 |" in text
    assert "| shardgate, async, proxy1 | 1/2 | 2,000 | 2,000 | 2,000 | 2 of 150 |" in text


def test_shard_tags_land_in_their_shard() -> None:
    tags = shard_tags(3)
    assert sorted(tags) == ["shard0", "shard1", "shard2"]
    for shard, tag in tags.items():
        assert slot_for_key(b"{%s}:x" % tag) * 3 // SLOTS == int(shard[-1])


def test_replica_synced_reads_role(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.failover as fo

    replies = {
        "empty": [b"master", 0, [[b"h", b"1", b"0"]]],
        "syncing": [b"master", 5000, [[b"h", b"1", b"0"]]],
        "synced": [b"master", 5000, [[b"h", b"1", b"4990"], [b"h", b"2", b"0"]]],
        "replica": [b"slave", b"h", 1, b"connected", 10],
    }
    monkeypatch.setattr(fo, "ask", lambda addr, *args, **kw: replies[addr[0]])
    assert replica_synced(("empty", 0))
    assert not replica_synced(("syncing", 0))
    assert replica_synced(("synced", 0))
    assert not replica_synced(("synced", 0), want=2)
    assert not replica_synced(("replica", 0))
