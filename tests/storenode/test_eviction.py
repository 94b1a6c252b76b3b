"""Eviction policies through the Keyspace: who gets evicted, and that memory ends under the limit."""

from __future__ import annotations

import pytest

from storenode.keyspace import EvictionPolicy, Keyspace
from tests.storenode.keyspace_helpers import NOW, check_invariants, fill

# --- eviction ------------------------------------------------------------------------------


def over_limit(ks: Keyspace, fraction: float) -> None:
    ks.maxmemory = int(ks.used_memory * fraction)


def test_no_limit_never_evicts() -> None:
    ks = Keyspace(policy=EvictionPolicy.ALLKEYS_LRU)
    fill(ks, 100)
    assert ks.evict_if_needed() is True
    assert len(ks) == 100


def test_noeviction_refuses() -> None:
    ks = Keyspace()
    fill(ks, 100)
    over_limit(ks, 0.5)
    assert ks.evict_if_needed() is False
    assert len(ks) == 100


def test_allkeys_lru_evicts_the_idle_keys_until_under_the_limit() -> None:
    evicted: list[bytes] = []
    ks = Keyspace(policy=EvictionPolicy.ALLKEYS_LRU, seed=4)
    ks.on_delete = lambda key, why: evicted.append(key) if why == "evicted" else None
    fill(ks, 1000)  # key:i last touched at NOW + i
    over_limit(ks, 0.6)
    assert ks.evict_if_needed() is True
    assert ks.used_memory <= ks.maxmemory
    assert ks.stats.evicted_keys == len(evicted) > 0
    # Sampled LRU is approximate, but the most recent keys survive.
    recent = {b"key:%d" % i for i in range(900, 1000)}
    assert not recent & set(evicted)
    mean = sum(int(k.split(b":")[1]) for k in evicted) / len(evicted)
    assert mean < 400
    check_invariants(ks)


def test_volatile_lru_only_evicts_keys_with_ttl() -> None:
    ks = Keyspace(policy=EvictionPolicy.VOLATILE_LRU, seed=5)
    fill(ks, 1000, ttl_every=2)
    over_limit(ks, 0.8)
    assert ks.evict_if_needed() is True
    assert all(f"key:{i}".encode() in ks._map for i in range(1, 1000, 2))
    check_invariants(ks)


@pytest.mark.parametrize(
    "policy",
    [EvictionPolicy.VOLATILE_LRU, EvictionPolicy.VOLATILE_RANDOM, EvictionPolicy.VOLATILE_TTL],
)
def test_volatile_policies_give_up_without_candidates(policy: EvictionPolicy) -> None:
    ks = Keyspace(policy=policy, seed=6)
    fill(ks, 100)
    over_limit(ks, 0.5)
    assert ks.evict_if_needed() is False
    assert len(ks) == 100


def test_allkeys_random_evicts_until_under_the_limit() -> None:
    ks = Keyspace(policy=EvictionPolicy.ALLKEYS_RANDOM, seed=7)
    fill(ks, 1000, ttl_every=3)
    over_limit(ks, 0.5)
    assert ks.evict_if_needed() is True
    assert ks.used_memory <= ks.maxmemory
    check_invariants(ks)


def test_volatile_random_only_evicts_keys_with_ttl() -> None:
    ks = Keyspace(policy=EvictionPolicy.VOLATILE_RANDOM, seed=8)
    fill(ks, 1000, ttl_every=2)
    over_limit(ks, 0.8)
    assert ks.evict_if_needed() is True
    assert all(f"key:{i}".encode() in ks._map for i in range(1, 1000, 2))
    check_invariants(ks)


def test_volatile_ttl_evicts_the_soonest_expiry_first() -> None:
    ks = Keyspace(policy=EvictionPolicy.VOLATILE_TTL, seed=9)
    ks.maxmemory_samples = 10_000  # sample everything: the choice becomes exact
    for i in range(100):
        ks.set(b"k%d" % i, b"v", NOW, NOW + 1000 - i)  # k99 expires first
    ks.set(b"persistent", b"v", NOW)
    record = ks.record_size(b"k99", ks._map[b"k99"])  # every k* record costs the same
    ks.maxmemory = ks.used_memory - 5 * record + 1
    assert ks.evict_if_needed() is True
    gone = {b"k%d" % i for i in range(100)} - set(ks._map)
    assert gone == {b"k%d" % i for i in range(95, 100)}
    assert b"persistent" in ks._map


def test_eviction_pool_survives_deletion_of_its_candidates() -> None:
    ks = Keyspace(policy=EvictionPolicy.ALLKEYS_LRU, seed=10)
    fill(ks, 200)
    over_limit(ks, 0.9)
    ks.evict_if_needed()
    for key, _ in list(ks._map.items())[:150]:  # delete most keys, pool entries included
        ks.delete(key, NOW)
    fill(ks, 200, now=NOW + 10_000)
    assert ks.evict_if_needed() is True
    assert ks.used_memory <= ks.maxmemory
    check_invariants(ks)


def test_changing_policy_clears_the_pool() -> None:
    ks = Keyspace(policy=EvictionPolicy.ALLKEYS_LRU, seed=11)
    fill(ks, 200)
    over_limit(ks, 0.9)
    ks.evict_if_needed()
    ks.policy = EvictionPolicy.VOLATILE_TTL
    assert ks._pool == []
    assert ks.policy is EvictionPolicy.VOLATILE_TTL


def test_lowering_maxmemory_at_runtime_takes_effect_at_the_next_check() -> None:
    ks = Keyspace(policy=EvictionPolicy.ALLKEYS_RANDOM, seed=12)
    fill(ks, 100)
    assert ks.evict_if_needed() is True and len(ks) == 100
    ks.maxmemory = ks.used_memory // 2
    assert ks.evict_if_needed() is True
    assert ks.used_memory <= ks.maxmemory
