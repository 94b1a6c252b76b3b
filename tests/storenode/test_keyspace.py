"""Keyspace: records, lazy and active expiry, memory bookkeeping, SCAN, lazy free."""

from __future__ import annotations

import random

import pytest

from storenode.keyspace import (
    ENTRY_COST,
    VOLATILE_EXTRA_COST,
    Entry,
    EvictionPolicy,
    Keyspace,
    VolatileEntry,
    bytes_cost,
    value_cost,
)
from tests.storenode.keyspace_helpers import NOW, check_invariants, fill

# --- records -------------------------------------------------------------------------------


def test_set_lookup_delete() -> None:
    ks = Keyspace()
    assert ks.lookup(b"a", NOW) is None
    e = ks.set(b"a", b"1", NOW)
    assert isinstance(e, Entry) and not isinstance(e, VolatileEntry)
    got = ks.lookup(b"a", NOW)
    assert got is not None and got.value == b"1"
    assert len(ks) == 1
    assert ks.delete(b"a", NOW) is True
    assert ks.delete(b"a", NOW) is False
    assert len(ks) == 0
    assert ks.stats.keyspace_hits == 1
    assert ks.stats.keyspace_misses == 1
    check_invariants(ks)


def test_set_with_expiry_makes_a_volatile_record_and_set_without_removes_it() -> None:
    ks = Keyspace()
    e = ks.set(b"a", b"1", NOW, NOW + 1000)
    assert isinstance(e, VolatileEntry) and e.expire_at == NOW + 1000
    assert ks.expires_count == 1
    e = ks.set(b"a", b"2", NOW)
    assert not isinstance(e, VolatileEntry)
    assert ks.expires_count == 0
    check_invariants(ks)


def test_set_keep_ttl_and_persist() -> None:
    ks = Keyspace()
    ks.set(b"a", b"1", NOW, NOW + 1000)
    e = ks.set_keep_ttl(b"a", b"22", NOW)
    assert e.expire_at == NOW + 1000 and e.value == b"22"
    e = ks.persist(b"a", e)
    assert e.expire_at == 0
    assert ks.persist(b"a", e) is e
    check_invariants(ks)


def test_set_expire_on_existing_record_keeps_value_and_recency() -> None:
    ks = Keyspace()
    e = ks.set(b"a", b"1", NOW)
    v = ks.set_expire(b"a", e, NOW + 5)
    assert isinstance(v, VolatileEntry)
    assert (v.value, v.lru, v.idx) == (e.value, e.lru, e.idx)
    assert ks.set_expire(b"a", v, NOW + 9) is v and v.expire_at == NOW + 9
    check_invariants(ks)


def test_recency_is_refreshed_by_reads_and_writes_but_not_by_peek() -> None:
    ks = Keyspace()
    ks.set(b"a", b"1", NOW)
    ks.lookup(b"a", NOW + 5)
    assert ks._map[b"a"].lru == NOW + 5
    ks.peek(b"a", NOW + 9)
    assert ks._map[b"a"].lru == NOW + 5
    ks.lookup_write(b"a", NOW + 10)
    assert ks._map[b"a"].lru == NOW + 10


def test_recency_stamp_is_shared_per_millisecond() -> None:
    ks = Keyspace()
    ks.set(b"a", b"1", int(str(NOW)))
    ks.set(b"b", b"1", int(str(NOW)))  # an equal but distinct int object
    assert ks._map[b"a"].lru is ks._map[b"b"].lru


def test_random_operations_keep_the_invariants() -> None:
    rng = random.Random(7)
    ks = Keyspace(seed=3)
    now = NOW
    for _ in range(5000):
        now += rng.randrange(3)
        key = b"k%d" % rng.randrange(200)
        op = rng.randrange(8)
        if op == 0:
            ks.set(key, b"x" * rng.randrange(600), now)
        elif op == 1:
            ks.set(key, b"y", now, now + rng.randrange(1, 50))
        elif op == 2:
            ks.delete(key, now)
        elif op == 3:
            e = ks.lookup_write(key, now)
            if e is not None:
                ks.set_expire(key, e, now + rng.randrange(1, 50))
        elif op == 4:
            e = ks.lookup_write(key, now)
            if e is not None:
                ks.persist(key, e)
        elif op == 5:
            ks.active_expire_step(now)
        elif op == 6:
            e = ks.lookup_write(key, now)
            if e is not None:
                ks.replace_value(e, bytearray(b"z" * rng.randrange(100)))
        else:
            ks.random_key(now)
    check_invariants(ks)


# --- memory --------------------------------------------------------------------------------


def test_bytes_cost_follows_the_allocators() -> None:
    assert bytes_cost(0) == 40  # 33 rounded up to pymalloc's 8-byte classes
    assert bytes_cost(100) == 136
    assert bytes_cost(479) == 512
    assert bytes_cost(480) % 16 == 0 and bytes_cost(480) > 513
    assert bytes_cost(1 << 20) % 4096 == 0
    assert value_cost(bytearray(10)) > value_cost(b"x" * 10)


def test_used_memory_tracks_overwrite_delete_and_growth() -> None:
    ks = Keyspace()
    empty = ks._mem
    ks.set(b"key", b"x" * 100, NOW)
    one = ks._mem
    assert one - empty == ENTRY_COST + bytes_cost(3) + bytes_cost(100)
    ks.set(b"key", b"x" * 1000, NOW)
    assert ks._mem - one == bytes_cost(1000) - bytes_cost(100)
    ks.set(b"key", b"x" * 100, NOW)
    assert ks._mem == one
    e = ks.set(b"key", b"x" * 100, NOW, NOW + 10)
    assert ks._mem == one + VOLATILE_EXTRA_COST
    ks.persist(b"key", e)
    assert ks._mem == one
    live = ks.lookup_write(b"key", NOW)
    assert live is not None
    grown = bytearray(live.value) + b"tail"
    ks.replace_value(live, grown)
    assert ks._mem == one - bytes_cost(100) + value_cost(grown)
    ks.delete(b"key", NOW)
    assert ks._mem == empty
    assert ks.used_memory >= ks._mem
    check_invariants(ks)


def test_used_memory_includes_the_containers() -> None:
    ks = Keyspace()
    fill(ks, 1000)
    assert ks.used_memory > ks._mem + 1000 * 8  # at least a dict slot and a list slot per key


def test_flush_empties_everything() -> None:
    ks = Keyspace()
    fill(ks, 100, ttl_every=2)
    ks.flush()
    assert len(ks) == 0 and ks.expires_count == 0 and ks._mem == 0
    check_invariants(ks)


# --- expiry --------------------------------------------------------------------------------


def test_lazy_expiry_happens_strictly_after_the_deadline() -> None:
    deleted: list[tuple[bytes, str]] = []
    ks = Keyspace()
    ks.on_delete = lambda key, why: deleted.append((key, why))
    ks.set(b"a", b"1", NOW, NOW + 10)
    assert ks.lookup(b"a", NOW + 10) is not None  # Redis: expired only when now > when
    assert deleted == []
    assert ks.lookup(b"a", NOW + 11) is None
    assert deleted == [(b"a", "expired")]
    assert ks.stats.expired_keys == 1
    assert len(ks) == 0
    check_invariants(ks)


@pytest.mark.parametrize("access", ["lookup", "lookup_write", "peek", "delete"])
def test_every_access_expires_lazily(access: str) -> None:
    ks = Keyspace()
    ks.set(b"a", b"1", NOW, NOW + 1)
    result = getattr(ks, access)(b"a", NOW + 2)
    assert result in (None, False)
    assert len(ks) == 0 and ks.stats.expired_keys == 1


def test_set_over_an_expired_key_starts_a_fresh_record() -> None:
    ks = Keyspace()
    ks.set(b"a", b"1", NOW, NOW + 1)
    e = ks.set_keep_ttl(b"a", b"2", NOW + 5)  # the old TTL died with the old value
    assert e.expire_at == 0
    assert ks.stats.expired_keys == 1
    ks.set(b"b", b"1", NOW, NOW + 1)
    e = ks.set(b"b", b"2", NOW + 5)
    assert e.expire_at == 0 and ks.stats.expired_keys == 2
    check_invariants(ks)


def test_active_expire_step_samples_at_most_twenty_and_reports_staleness() -> None:
    ks = Keyspace(seed=1)
    for i in range(1000):
        ks.set(b"k%d" % i, b"v", NOW, NOW + 10)
    before = len(ks)
    assert ks.active_expire_step(NOW + 11) is True  # every sampled key had expired
    assert before - len(ks) <= 20
    steps = 1
    while ks.active_expire_step(NOW + 11):
        steps += 1
        assert steps < 10_000
    # The cycle stops once a sample is mostly live: with every key expired, that is the end.
    assert len(ks) == 0
    assert ks.stats.expired_keys == 1000
    check_invariants(ks)


def test_active_expire_step_stops_when_few_keys_are_stale() -> None:
    ks = Keyspace(seed=2)
    for i in range(1000):
        expire = NOW + 10 if i % 10 == 0 else NOW + 1_000_000
        ks.set(b"k%d" % i, b"v", NOW, expire)
    results = [ks.active_expire_step(NOW + 11) for _ in range(50)]
    assert results.count(True) < 10  # ~10% stale: the shell would stop after one step
    assert ks.stats.avg_ttl_ms > 0
    assert 0.0 < ks.stats.expired_stale_perc < 25.0
    check_invariants(ks)


def test_active_expire_ignores_keys_without_ttl() -> None:
    ks = Keyspace(seed=3)
    fill(ks, 100)
    assert ks.active_expire_step(NOW + 10**9) is False
    assert len(ks) == 100


# --- whole-keyspace access -----------------------------------------------------------------


def test_random_key_skips_and_deletes_expired_keys() -> None:
    ks = Keyspace(seed=13)
    assert ks.random_key(NOW) is None
    for i in range(10):
        ks.set(b"gone%d" % i, b"v", NOW, NOW + 1)
    assert ks.random_key(NOW + 5) is None
    assert len(ks) == 0
    ks.set(b"live", b"v", NOW)
    assert ks.random_key(NOW) == b"live"


def test_scan_returns_every_stable_key_despite_concurrent_changes() -> None:
    rng = random.Random(14)
    ks = Keyspace(seed=14)
    stable = {b"stable%d" % i for i in range(300)}
    for key in stable:
        ks.set(key, b"v", NOW)
    churn = [b"churn%d" % i for i in range(300)]
    for key in churn[:150]:
        ks.set(key, b"v", NOW)
    seen: list[bytes] = []
    cursor = 0
    for _ in range(10_000):
        cursor, batch = ks.scan(cursor, rng.randrange(1, 20), NOW)
        seen.extend(batch)
        for _ in range(5):  # deletions move the last key into the hole; inserts append
            key = rng.choice(churn)
            if rng.random() < 0.5:
                ks.delete(key, NOW)
            else:
                ks.set(key, b"v", NOW)
        if cursor == 0:
            break
    assert cursor == 0
    assert stable <= set(seen)


def test_scan_skips_expired_keys_and_handles_stale_cursors() -> None:
    ks = Keyspace()
    ks.set(b"a", b"v", NOW)
    ks.set(b"b", b"v", NOW, NOW + 1)
    cursor, keys = ks.scan(0, 10, NOW + 5)
    assert (cursor, keys) == (0, [b"a"])
    assert ks.scan(12345, 10, NOW) == (0, [b"a"])  # beyond the end: from the end


def test_iter_keys_skips_expired_keys_without_deleting() -> None:
    ks = Keyspace()
    ks.set(b"a", b"v", NOW)
    ks.set(b"b", b"v", NOW, NOW + 1)
    assert list(ks.iter_keys(NOW + 5)) == [b"a"]
    assert len(ks) == 2


def test_random_key_is_bounded_when_nearly_everything_expired() -> None:
    ks = Keyspace(seed=15)
    for i in range(5000):
        ks.set(b"gone%d" % i, b"v", NOW, NOW + 1)
    ks.set(b"live", b"v", NOW)
    found = ks.random_key(NOW + 5)
    assert found in (None, b"live")
    assert len(ks) >= 5000 - 100  # at most RANDOM_KEY_TRIES expired keys deleted in one call
    check_invariants(ks)


def test_lazy_flush_frees_over_active_expire_steps() -> None:
    ks = Keyspace(policy=EvictionPolicy.ALLKEYS_LRU, seed=16)
    fill(ks, 5000, ttl_every=2)
    before = ks.used_memory
    ks.flush(lazy=True)
    assert len(ks) == 0 and ks.expires_count == 0
    assert ks.used_memory > before // 2  # still held until freed
    ks.set(b"new", b"v", NOW, NOW + 10)
    steps = 0
    while ks.active_expire_step(NOW):
        steps += 1
        assert steps < 100
    assert steps >= 5  # 5000 keys + arrays, 1000 items a step
    assert ks._lazyfree == [] and ks._lazyfree_bytes == 0
    assert ks.used_memory < before // 10
    assert ks.lookup(b"new", NOW) is not None
    check_invariants(ks)


def test_two_lazy_flushes_account_memory_once() -> None:
    ks = Keyspace(seed=17)
    fill(ks, 3000)
    first = ks.used_memory
    ks.flush(lazy=True)
    fill(ks, 3000)
    second = ks.used_memory
    ks.flush(lazy=True)
    assert ks.used_memory <= second + 1024  # the first batch is in ``second`` already
    assert ks.used_memory > first
    while ks.active_expire_step(NOW):
        pass
    assert ks.used_memory < first // 10


def test_memory_awaiting_lazy_free_does_not_cause_evictions() -> None:
    ks = Keyspace(policy=EvictionPolicy.ALLKEYS_LRU, seed=18)
    fill(ks, 3000)
    ks.maxmemory = ks.used_memory
    ks.flush(lazy=True)
    fill(ks, 100)
    assert ks.evict_if_needed() is True
    assert len(ks) == 100
