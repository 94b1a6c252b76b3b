"""Eviction policies and Redis's approximated LRU (evict.c's eviction pool).

How it works: each time a victim is needed, ``maxmemory_samples`` random keys are drawn from the
policy's candidates (all keys, or only keys with a TTL, both dense arrays so a draw is O(1)),
scored (idle time, or for volatile-ttl the nearness of the expiry), and merged into a pool of the
16 best candidates seen so far, kept across calls. The best pool entry that still exists (and
still has a TTL, for volatile policies) is evicted. Random policies skip the pool. With Redis's
default of 5 samples this stays within a fraction of a point of exact LRU's hit rate
(``bench/lru_sim.py``), at a fixed cost per eviction whatever the number of keys.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Callable, Mapping

from storenode.records import Entry


class EvictionPolicy(enum.Enum):
    NOEVICTION = "noeviction"
    ALLKEYS_LRU = "allkeys-lru"
    VOLATILE_LRU = "volatile-lru"
    ALLKEYS_RANDOM = "allkeys-random"
    VOLATILE_RANDOM = "volatile-random"
    VOLATILE_TTL = "volatile-ttl"


VOLATILE_POLICIES = frozenset(
    {EvictionPolicy.VOLATILE_LRU, EvictionPolicy.VOLATILE_RANDOM, EvictionPolicy.VOLATILE_TTL}
)

# Redis defaults: maxmemory-samples and EVPOOL_SIZE.
DEFAULT_SAMPLES = 5
POOL_SIZE = 16


def choose_victim(
    policy: EvictionPolicy,
    keys: list[bytes],
    mapping: Mapping[bytes, Entry],
    pool: list[tuple[int, bytes]],
    samples: int,
    rand: Callable[[], float],
    now: int,
) -> bytes | None:
    """The key to evict next among ``keys`` (the policy's candidates), or None if none."""
    if not keys:
        return None
    if policy is EvictionPolicy.ALLKEYS_RANDOM or policy is EvictionPolicy.VOLATILE_RANDOM:
        return keys[int(rand() * len(keys))]
    volatile = policy is not EvictionPolicy.ALLKEYS_LRU
    by_ttl = policy is EvictionPolicy.VOLATILE_TTL
    while True:
        _populate(pool, keys, mapping, samples, rand, now, by_ttl)
        while pool:
            _, key = pool.pop()
            e = mapping.get(key)
            # The pool outlives deletions and PERSIST: check the candidate still fits.
            if e is not None and (not volatile or e.expire_at):
                return key


def _populate(
    pool: list[tuple[int, bytes]],
    keys: list[bytes],
    mapping: Mapping[bytes, Entry],
    samples: int,
    rand: Callable[[], float],
    now: int,
    by_ttl: bool,
) -> None:
    for _ in range(min(samples, len(keys))):
        key = keys[int(rand() * len(keys))]
        e = mapping[key]
        # Higher score = better victim: longest idle, or soonest expiry.
        score = -e.expire_at if by_ttl else now - e.lru
        if len(pool) >= POOL_SIZE and score <= pool[0][0]:
            continue
        # A key may sit in the pool twice (Redis checks; scanning 16 entries per sample costs
        # more than it saves): the second copy is skipped once the first has been evicted.
        bisect.insort(pool, (score, key))
        if len(pool) > POOL_SIZE:
            del pool[0]
