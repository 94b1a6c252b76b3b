"""The store node's keyspace: one record per key, lazy + active expiry, sampled LRU eviction.

How it works
- Records. ``_map`` maps each key to one ``Entry`` that owns the value, the recency stamp
  (``lru``: the ``now_ms`` of the last access) and the key's index in ``_keys``. A key with a TTL
  is a ``VolatileEntry``, which also owns its absolute expiry (unix ms) and its index in
  ``_vkeys``. Keys without a TTL do not pay for those fields (16 bytes and two int objects).
- Dense key arrays. ``_keys`` holds every key, ``_vkeys`` every key with a TTL; a record knows
  its own index, so removal is an O(1) swap with the last element and a uniformly random key is
  one ``list[i]``. RANDOMKEY, the active expire cycle and eviction sampling therefore cost O(1)
  per sample however many keys expire at once, and volatile-* policies never scan all keys.
- Expiry. A key is expired when ``now_ms > expire_at`` (Redis's keyIsExpired) and is deleted
  by whatever touches it next (lazy). ``active_expire_step`` samples 20 random keys with a TTL,
  deletes the expired ones and returns True when more than 25% of them had expired, so the
  shell repeats it within its ~1 ms budget (Redis's activeExpireCycle, adaptive sampling).
- Eviction (``storenode/eviction.py``): Redis's approximated LRU with a 16-candidate pool fed
  by ``maxmemory_samples`` random draws from ``_keys`` or ``_vkeys``; volatile-ttl scores by the
  soonest expiry. ``bench/lru_sim.py`` measures the hit rate against exact LRU.
- Memory. ``used_memory`` is the sum of per-record costs (CPython allocator sizes of the key
  and value bytes, the record, its int fields), kept current in O(1) per write, plus the
  allocated size of the dict and the two arrays (``__sizeof__`` is O(1)).
  ``bench/memory_per_key.py`` checks it against RSS growth.
- The recency stamp is the ``now_ms`` int object itself, shared by every key touched in the
  same millisecond, so it costs no memory per key.
- Nothing here is O(number of keys) in one call except KEYS, a synchronous FLUSHALL and an
  eviction asked to free a lot at once: SCAN walks ``_keys`` downwards (see ``scan``),
  RANDOMKEY gives up deleting expired samples after 100, and FLUSHALL ASYNC leaves the old
  containers to be freed a chunk per active cycle step.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from storenode.eviction import DEFAULT_SAMPLES, VOLATILE_POLICIES, EvictionPolicy, choose_victim
from storenode.records import (
    ENTRY_COST,
    POS_BITS,
    POS_MASK,
    VOLATILE_EXTRA_COST,
    Entry,
    VolatileEntry,
    bytes_cost,
    value_cost,
)

__all__ = [
    "ENTRY_COST",
    "VOLATILE_EXTRA_COST",
    "Entry",
    "EvictionPolicy",
    "Keyspace",
    "KeyspaceStats",
    "VolatileEntry",
    "bytes_cost",
    "value_cost",
]


# Redis default: ACTIVE_EXPIRE_CYCLE_KEYS_PER_LOOP (with the 25% "stale" threshold below).
EXPIRE_SAMPLE = 20
# RANDOMKEY: random samples before giving up on deleting expired keys one by one (Redis's
# replica guard in dbRandomKey also stops at 100), then positions probed for a live key.
RANDOM_KEY_TRIES = 100
RANDOM_KEY_PROBE = 1000
# FLUSHALL ASYNC: dropped items freed per active cycle step (~50 us of deallocation).
LAZYFREE_CHUNK = 1000


class KeyspaceStats:
    __slots__ = (
        "avg_ttl_ms",
        "evicted_keys",
        "expired_keys",
        "expired_stale_perc",
        "keyspace_hits",
        "keyspace_misses",
    )

    def __init__(self) -> None:
        self.keyspace_hits = 0
        self.keyspace_misses = 0
        self.expired_keys = 0
        self.evicted_keys = 0
        self.avg_ttl_ms = 0  # running estimate from the active cycle, like Redis's db->avg_ttl
        self.expired_stale_perc = 0.0  # INFO's expired_stale_perc: share of samples expired


class Keyspace:
    def __init__(
        self,
        *,
        maxmemory: int = 0,
        policy: EvictionPolicy = EvictionPolicy.NOEVICTION,
        seed: int | None = None,
    ) -> None:
        self._maxmemory = maxmemory
        self._policy = policy
        self.maxmemory_samples = DEFAULT_SAMPLES
        self.stats = KeyspaceStats()
        self.on_delete: Callable[[bytes, str], None] | None = None
        self._map: dict[bytes, Entry] = {}
        self._keys: list[bytes] = []
        self._vkeys: list[bytes] = []
        self._mem = 0  # per-record costs; the containers are added in used_memory
        # The containers' allocated bytes, refreshed on every insert and removal while a
        # maxmemory is set, so the check before each write is one addition.
        self._containers = 0
        # FLUSHALL ASYNC hands the old containers here; active_expire_step frees them a chunk
        # at a time instead of stalling for the whole deallocation.
        self._lazyfree: list[dict[bytes, Entry] | list[bytes]] = []
        self._lazyfree_items = 0  # items left in _lazyfree
        self._lazyfree_bytes = 0  # estimated memory they still hold
        self._now = 0  # last now_ms seen: the shared recency stamp and the eviction clock
        self._pool: list[tuple[int, bytes]] = []  # eviction candidates, ascending score
        self._rand = random.Random(seed).random

    # --- sizes ---------------------------------------------------------------------------

    @property
    def policy(self) -> EvictionPolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: EvictionPolicy) -> None:
        if policy is not self._policy:
            self._pool.clear()  # scores of another policy are not comparable
        self._policy = policy

    @property
    def maxmemory(self) -> int:
        return self._maxmemory

    @maxmemory.setter
    def maxmemory(self, value: int) -> None:
        self._maxmemory = value
        self._refresh_containers()

    def _refresh_containers(self) -> int:
        self._containers = (
            self._map.__sizeof__() + self._keys.__sizeof__() + self._vkeys.__sizeof__()
        )
        return self._containers

    def __len__(self) -> int:
        return len(self._map)

    @property
    def expires_count(self) -> int:
        return len(self._vkeys)

    @property
    def used_memory(self) -> int:
        # __sizeof__ is O(1) for dicts and lists: it reports their allocated tables. What
        # FLUSHALL ASYNC still has to free counts here but not for eviction (it is going away
        # anyway; evicting fresh keys for it would only empty the cache).
        return self._mem + self._refresh_containers() + self._lazyfree_bytes

    @property
    def records(self) -> dict[bytes, Entry]:
        """Key → record, for the node's fast path (``storenode/fastpath.py``) to read; it is
        replaced by FLUSHALL, so fetch it again rather than keep it."""
        return self._map

    def stamp(self, now_ms: int) -> int:
        """The recency stamp for ``now_ms``: one int object per millisecond, shared by every key
        touched in it, so the stamp costs no memory per key; also the eviction clock."""
        if now_ms != self._now:
            self._now = now_ms
        return self._now

    # --- lookups (each deletes the key first if it has expired) --------------------------

    def lookup(self, key: bytes, now_ms: int) -> Entry | None:
        """Read access: counts a hit or miss and refreshes recency."""
        e = self._map.get(key)
        if e is not None:
            exp = e.expire_at
            if not exp or now_ms <= exp:
                self.stats.keyspace_hits += 1
                if now_ms != self._now:  # stamp inlined: this is GET's path
                    self._now = now_ms
                e.lru = self._now
                return e
            self._expire(key, e)
        self.stats.keyspace_misses += 1
        return None

    def lookup_write(self, key: bytes, now_ms: int) -> Entry | None:
        """Write access: refreshes recency, no hit/miss statistics."""
        e = self._map.get(key)
        if e is not None:
            exp = e.expire_at
            if exp and now_ms > exp:
                self._expire(key, e)
                return None
            e.lru = self.stamp(now_ms)
        return e

    def peek(self, key: bytes, now_ms: int) -> Entry | None:
        """Inspection (TTL, TYPE, EXISTS): neither recency nor statistics change."""
        e = self._map.get(key)
        if e is not None:
            exp = e.expire_at
            if exp and now_ms > exp:
                self._expire(key, e)
                return None
        return e

    # --- writes --------------------------------------------------------------------------

    def set(self, key: bytes, value: bytes | bytearray, now_ms: int, expire_at: int = 0) -> Entry:
        """SET semantics: replace the value and the TTL (``expire_at`` 0: no TTL)."""
        e = self._map.get(key)
        if e is None:
            return self._add(key, value, now_ms, expire_at)
        if e.expire_at and now_ms > e.expire_at:
            self._expire(key, e)
            return self._add(key, value, now_ms, expire_at)
        old = e.value
        if not (len(old) == len(value) and old.__class__ is bytes and value.__class__ is bytes):
            self._mem += value_cost(value) - value_cost(old)
        e.value = value
        if now_ms != self._now:  # stamp inlined: this is SET's path
            self._now = now_ms
        e.lru = self._now
        if expire_at:
            return self.set_expire(key, e, expire_at)
        if e.expire_at:
            return self.persist(key, e)
        return e

    def set_keep_ttl(self, key: bytes, value: bytes | bytearray, now_ms: int) -> Entry:
        e = self.lookup_write(key, now_ms)
        if e is None:
            return self._add(key, value, now_ms, 0)
        self.replace_value(e, value)
        return e

    def replace_value(self, e: Entry, value: bytes | bytearray, old_cost: int = -1) -> None:
        """Give a live record a new value, keeping its TTL (APPEND, INCR...).

        When the value was grown in place, the caller passes its cost from before the change.
        """
        if old_cost < 0:
            old_cost = value_cost(e.value)
        self._mem += value_cost(value) - old_cost
        e.value = value

    def _add(self, key: bytes, value: bytes | bytearray, now_ms: int, expire_at: int) -> Entry:
        keys = self._keys
        e: Entry
        if expire_at:
            vkeys = self._vkeys
            pos = len(keys) | len(vkeys) << POS_BITS
            e = VolatileEntry(value, self.stamp(now_ms), pos, expire_at)
            vkeys.append(key)
            self._mem += VOLATILE_EXTRA_COST
        else:
            e = Entry(value, self.stamp(now_ms), len(keys))
        keys.append(key)
        self._map[key] = e
        self._mem += ENTRY_COST + bytes_cost(len(key)) + value_cost(value)
        if self._maxmemory:
            self._refresh_containers()
        return e

    def set_expire(self, key: bytes, e: Entry, expire_at: int) -> Entry:
        """Give a live record an absolute expiry; returns the (possibly new) record."""
        if isinstance(e, VolatileEntry):
            e.expire_at = expire_at
            return e
        vkeys = self._vkeys
        v = VolatileEntry(e.value, e.lru, e.pos | len(vkeys) << POS_BITS, expire_at)
        vkeys.append(key)
        self._map[key] = v
        self._mem += VOLATILE_EXTRA_COST
        if self._maxmemory:
            self._refresh_containers()
        return v

    def persist(self, key: bytes, e: Entry) -> Entry:
        """Remove the TTL of a live record; returns the (possibly new) record."""
        if not isinstance(e, VolatileEntry):
            return e
        self._vremove(e)
        p = Entry(e.value, e.lru, e.pos & POS_MASK)
        self._map[key] = p
        self._mem -= VOLATILE_EXTRA_COST
        if self._maxmemory:
            self._refresh_containers()
        return p

    def delete(self, key: bytes, now_ms: int) -> bool:
        """DEL: True when a live key was removed (an expired one counts as expiring)."""
        e = self._map.get(key)
        if e is None:
            return False
        if e.expire_at and now_ms > e.expire_at:
            self._expire(key, e)
            return False
        self._remove(key, e)
        return True

    def flush(self, *, lazy: bool = False) -> None:
        """Drop every key; ``lazy`` (FLUSHALL ASYNC) frees them over later active cycles."""
        if lazy and self._map:
            self._lazyfree_bytes = self.used_memory  # includes what is still pending
            for container in (self._map, self._keys, self._vkeys):
                self._lazyfree.append(container)
                self._lazyfree_items += len(container)
        self._map = {}
        self._keys = []
        self._vkeys = []
        self._pool.clear()
        self._mem = 0
        self._refresh_containers()

    def _remove(self, key: bytes, e: Entry) -> None:
        del self._map[key]
        keys = self._keys
        last = keys.pop()
        i = e.pos & POS_MASK
        if i < len(keys):  # not the last key: the last one fills the hole
            keys[i] = last
            moved = self._map[last]
            moved.pos = moved.pos >> POS_BITS << POS_BITS | i
        cost = ENTRY_COST + bytes_cost(len(key)) + value_cost(e.value)
        if isinstance(e, VolatileEntry):
            self._vremove(e)
            cost += VOLATILE_EXTRA_COST
        self._mem -= cost
        if self._maxmemory:
            self._refresh_containers()

    def _vremove(self, e: VolatileEntry) -> None:
        vkeys = self._vkeys
        last = vkeys.pop()
        i = e.pos >> POS_BITS
        if i < len(vkeys):
            vkeys[i] = last
            moved = self._map[last]
            moved.pos = i << POS_BITS | moved.pos & POS_MASK

    def _expire(self, key: bytes, e: Entry) -> None:
        self._remove(key, e)
        self.stats.expired_keys += 1
        if self.on_delete is not None:
            self.on_delete(key, "expired")

    # --- whole-keyspace access -----------------------------------------------------------

    def random_key(self, now_ms: int) -> bytes | None:
        """A uniformly random live key (expired samples are deleted on the way)."""
        keys = self._keys
        rand = self._rand
        for _ in range(RANDOM_KEY_TRIES):
            if not keys:
                return None
            key = keys[int(rand() * len(keys))]
            if self.peek(key, now_ms) is not None:
                return key
        # Nearly everything has expired (a million keys expiring at once): deleting them all
        # here would stall for seconds. Probe a bounded run for a live key and leave the rest
        # to the active cycle; nil means no live key was found nearby.
        n = len(keys)
        start = int(rand() * n)
        mapping = self._map
        for j in range(min(n, RANDOM_KEY_PROBE)):
            key = keys[(start + j) % n]
            exp = mapping[key].expire_at
            if not exp or now_ms <= exp:
                return key
        return None

    def scan(self, cursor: int, count: int, now_ms: int) -> tuple[int, list[bytes]]:
        """Visit ``count`` positions of ``_keys`` below ``cursor`` (0 = start); 0 = done.

        Walking from the end down is what makes the guarantee hold: a removal moves only the
        last key, into the hole, so an unvisited key never moves above the cursor.
        """
        n = len(self._keys)
        top = n if cursor == 0 or cursor > n else cursor
        low = max(top - count, 0)
        batch = self._keys[low:top]
        batch.reverse()
        live = [k for k in batch if self.peek(k, now_ms) is not None]
        return low, live

    def iter_keys(self, now_ms: int) -> Iterator[bytes]:
        """Every live key (KEYS); expired keys are skipped, not deleted, as Redis does."""
        for key, e in self._map.items():
            exp = e.expire_at
            if not exp or now_ms <= exp:
                yield key

    def record_size(self, key: bytes, e: Entry) -> int:
        """What MEMORY USAGE reports: the record's share of used_memory."""
        cost = ENTRY_COST + bytes_cost(len(key)) + value_cost(e.value)
        if isinstance(e, VolatileEntry):
            cost += VOLATILE_EXTRA_COST
        return cost

    # --- active expiry -------------------------------------------------------------------

    def active_expire_step(self, now_ms: int) -> bool:
        """Sample keys with a TTL, delete the expired; True when over 25% had expired.

        Also frees a chunk of what FLUSHALL ASYNC dropped, and returns True while some is left,
        so the shell's loop (repeat while True, within its time budget) drives that too.
        """
        pending = bool(self._lazyfree) and self._lazyfree_step()
        vkeys = self._vkeys
        if not vkeys:
            return pending
        rand = self._rand
        mapping = self._map
        sampled = min(EXPIRE_SAMPLE, len(vkeys))
        expired = 0
        ttl_sum = 0
        ttl_n = 0
        for _ in range(sampled):
            if not vkeys:
                break
            key = vkeys[int(rand() * len(vkeys))]
            e = mapping[key]
            if now_ms > e.expire_at:
                self._expire(key, e)
                expired += 1
            else:
                ttl_sum += e.expire_at - now_ms
                ttl_n += 1
        if ttl_n:
            # Redis's smoothing: the new sample weighs 2% (expire.c, activeExpireCycle).
            avg = self.stats.avg_ttl_ms
            sample_avg = ttl_sum // ttl_n
            self.stats.avg_ttl_ms = sample_avg if not avg else (avg // 50) * 49 + sample_avg // 50
        stats = self.stats
        # Redis's smoothing of expired_stale_perc (expire.c): 5% weight for the new sample.
        stats.expired_stale_perc = (
            stats.expired_stale_perc * 0.95 + 100.0 * expired / sampled * 0.05
        )
        return pending or expired * 4 > sampled

    def _lazyfree_step(self) -> bool:
        """Free up to LAZYFREE_CHUNK dropped items; True while more are left."""
        budget = LAZYFREE_CHUNK
        lazy = self._lazyfree
        while budget and lazy:
            container = lazy[-1]
            n = min(budget, len(container))
            if isinstance(container, dict):
                popitem = container.popitem
                for _ in range(n):
                    popitem()
            else:
                del container[len(container) - n :]
            budget -= n
            if not container:
                lazy.pop()
        freed = LAZYFREE_CHUNK - budget
        if lazy:
            self._lazyfree_bytes -= self._lazyfree_bytes * freed // max(self._lazyfree_items, 1)
            self._lazyfree_items -= freed
        else:
            self._lazyfree_bytes = 0
            self._lazyfree_items = 0
        self._refresh_containers()
        return bool(lazy)

    # --- eviction ------------------------------------------------------------------------

    def evict_if_needed(self) -> bool:
        """Evict per policy until used_memory <= maxmemory; False when that is impossible."""
        limit = self._maxmemory
        if not limit or self._mem + self._containers <= limit:
            return True
        if self._policy is EvictionPolicy.NOEVICTION:
            return False
        while self._mem + self._containers > limit:
            key = self._victim()
            if key is None:
                return False
            self._remove(key, self._map[key])
            self.stats.evicted_keys += 1
            if self.on_delete is not None:
                self.on_delete(key, "evicted")
        return True

    def _victim(self) -> bytes | None:
        policy = self._policy
        keys = self._vkeys if policy in VOLATILE_POLICIES else self._keys
        return choose_victim(
            policy, keys, self._map, self._pool, self.maxmemory_samples, self._rand, self._now
        )
