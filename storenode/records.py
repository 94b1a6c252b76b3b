"""One record per key: the value, its recency, its TTL, and what it costs in memory.

A key without a TTL is an ``Entry`` (value, recency stamp, index in the keyspace's all-keys
array); a key with one is a ``VolatileEntry``, which adds the absolute expiry in unix ms and its
index in the volatile-keys array. Splitting the two saves keys without a TTL 16 bytes and two
int objects each. The cost functions give ``Keyspace.used_memory`` its O(1)-per-write numbers.
"""

from __future__ import annotations

import sys

# CPython 3.11, 64-bit: what one record costs beyond its key and value bytes. An Entry (3 slots)
# is 56 bytes with its GC header, a VolatileEntry (5 slots) 72; an index or expiry above 256 is
# its own int object, 28 bytes rounded up to pymalloc's 8-byte classes. The container slots
# (dict entry, list slots) are counted by used_memory from the containers' allocated sizes.
# The *_SLACK terms are calibrated with bench/memory_per_key.py (1M keys, 100-byte values):
# RSS grows by that much more per record than the objects' sizes add up to (pymalloc pool
# headers and partly filled pools).
_INT_COST = 32
_ENTRY_SLACK = 16
_VOLATILE_SLACK = 24
ENTRY_COST = 56 + _INT_COST + _ENTRY_SLACK  # record + its idx
VOLATILE_EXTRA_COST = (72 - 56) + 2 * _INT_COST + _VOLATILE_SLACK  # bigger record, expiry, vidx
_PYMALLOC_MAX = 512  # larger objects come from malloc
_MMAP_THRESHOLD = 128 * 1024  # glibc's default: larger blocks are whole pages


def bytes_cost(n: int) -> int:
    """Allocated size of a ``bytes`` object of length ``n`` (header 33 incl. the NUL)."""
    size = 33 + n
    if size <= _PYMALLOC_MAX:
        return (size + 7) & ~7
    if size < _MMAP_THRESHOLD:
        return (size + 8 + 15) & ~15  # malloc chunk header, 16-byte alignment
    return (size + 16 + 4095) & ~4095


def value_cost(v: bytes | bytearray) -> int:
    """Allocated size of a value; APPEND and SETRANGE leave bytearrays, which grow in place."""
    if v.__class__ is bytes:
        return bytes_cost(len(v))
    return sys.getsizeof(v) + 16  # object + separately malloc'd buffer (getsizeof counts both)


class Entry:
    """One key's record: value, recency and its index in the all-keys array."""

    __slots__ = ("idx", "lru", "value")
    expire_at = 0  # no TTL; VolatileEntry overrides this with a slot

    value: bytes | bytearray

    def __init__(self, value: bytes | bytearray, lru: int, idx: int) -> None:
        self.value = value
        self.lru = lru
        self.idx = idx


class VolatileEntry(Entry):
    """A record with a TTL: adds the absolute expiry (unix ms) and its index in ``_vkeys``."""

    __slots__ = ("expire_at", "vidx")

    def __init__(
        self, value: bytes | bytearray, lru: int, idx: int, expire_at: int, vidx: int
    ) -> None:
        self.value = value
        self.lru = lru
        self.idx = idx
        self.expire_at = expire_at
        self.vidx = vidx
