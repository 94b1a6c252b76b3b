"""Shared helpers for the keyspace tests: a fixed clock, a filler and the structural invariants."""

from __future__ import annotations

from storenode.keyspace import Keyspace, VolatileEntry

NOW = 1_700_000_000_000


def check_invariants(ks: Keyspace) -> None:
    """The arrays index the records exactly, and _mem is the sum of the records' costs."""
    m = ks._map
    assert len(ks._keys) == len(m)
    assert set(ks._keys) == set(m)
    for i, key in enumerate(ks._keys):
        assert m[key].idx == i
    volatile = {k for k, e in m.items() if isinstance(e, VolatileEntry)}
    assert set(ks._vkeys) == volatile
    assert len(ks._vkeys) == len(volatile)
    for i, key in enumerate(ks._vkeys):
        e = m[key]
        assert isinstance(e, VolatileEntry)
        assert e.vidx == i
        assert e.expire_at > 0
    for e in m.values():
        if not isinstance(e, VolatileEntry):
            assert e.expire_at == 0
    assert ks._mem == sum(ks.record_size(k, e) for k, e in m.items())
    assert ks.expires_count == len(volatile)


def fill(ks: Keyspace, n: int, *, ttl_every: int = 0, now: int = NOW) -> None:
    for i in range(n):
        expire = now + 100_000 + i if ttl_every and i % ttl_every == 0 else 0
        ks.set(b"key:%d" % i, b"v" * 50, now + i, expire)
