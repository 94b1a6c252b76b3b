"""One record per key: the value, its recency, its TTL, and what it costs in memory.

A key without a TTL is an ``Entry`` (value, recency stamp, index in the keyspace's all-keys
array); a key with one is a ``VolatileEntry``, which adds the absolute expiry in unix ms and its
index in the volatile-keys array. Splitting the two saves keys without a TTL 16 bytes and two
int objects each. The cost functions give ``Keyspace.used_memory`` its O(1)-per-write numbers.
"""

from __future__ import annotations

import sys

# CPython 3.11, 64-bit: what one record costs beyond its key and value bytes. An Entry (3 slots)
# is 56 bytes with its GC header, a VolatileEntry (4 slots) 64; a position or expiry above 256
# is its own int object, 28-32 bytes in pymalloc's 8-byte classes. The container slots
# (dict entry, list slots) are counted by used_memory from the containers' allocated sizes.
# The *_SLACK terms are calibrated with bench/memory_per_key.py (1M keys, 100-byte values):
# RSS grows by that much more per record than the objects' sizes add up to (pymalloc pool
# headers and partly filled pools).
_INT_COST = 32
_ENTRY_SLACK = 16
_VOLATILE_SLACK = 24
ENTRY_COST = 56 + _INT_COST + _ENTRY_SLACK  # record + its pos
VOLATILE_EXTRA_COST = (64 - 56) + _INT_COST + _VOLATILE_SLACK  # bigger record + expire_at
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


# ``pos`` packs a record's index in the keyspace's all-keys array (low 32 bits) with, for a
# VolatileEntry, its index in the volatile-keys array (the bits above): one int object per record
# instead of two saves a key with a TTL 40 bytes (an int and a slot).
POS_BITS = 32
POS_MASK = (1 << POS_BITS) - 1


class Entry:
    """One key's record: value, recency and its position in the keyspace's key arrays."""

    __slots__ = ("lru", "pos", "value")
    expire_at = 0  # no TTL; VolatileEntry overrides this with a slot

    value: bytes | bytearray

    def __init__(self, value: bytes | bytearray, lru: int, pos: int) -> None:
        self.value = value
        self.lru = lru
        self.pos = pos

    @property
    def idx(self) -> int:
        """Index in the all-keys array."""
        return self.pos & POS_MASK


class VolatileEntry(Entry):
    """A record with a TTL: adds the absolute expiry (unix ms); ``pos`` also holds ``vidx``."""

    __slots__ = ("expire_at",)

    def __init__(self, value: bytes | bytearray, lru: int, pos: int, expire_at: int) -> None:
        self.value = value
        self.lru = lru
        self.pos = pos
        self.expire_at = expire_at

    @property
    def vidx(self) -> int:
        """Index in the volatile-keys array."""
        return self.pos >> POS_BITS
