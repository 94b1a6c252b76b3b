"""Plain GET and SET answered straight from the received bytes, for the reactor.

Why it exists: at ``-P 16`` the general path (``RequestParser`` → ``Node.execute`` → handler →
encoder) cost ~2.8 µs of Python per command, and redis-benchmark's GET/SET mix is what most
traffic looks like. Here one function walks the frames of a received batch with bytes
operations, looks each key up in the keyspace's dict and appends the reply: no argument list,
no dispatch, no encoder (docs/performance.md, "Store node vs redis-server, after the reactor").

What it takes: exactly ``*2\\r\\n$3\\r\\nGET\\r\\n$N\\r\\n<key>\\r\\n`` and
``*3\\r\\n$3\\r\\nSET\\r\\n$N\\r\\n<key>\\r\\n$M\\r\\n<value>\\r\\n`` (GET/SET or get/set, canonical
lengths below 1024). It stops at the first frame that is anything else, or that any rule below
would treat differently, and hands the rest of the bytes to the general path, which starts at
that very frame: order is kept and nothing is answered twice.

What it must never skip (each case is left to the general path, which knows what to do):
- the connection: authentication, RESP3 (another null), bytes already held by the parser (they
  come first), the query-buffer limit (``eligible``);
- keys: an expired key (lazy expiry deletes it and replicates the delete), a value that is not
  ``bytes`` (APPEND's bytearrays are frozen on read);
- writes: the write gate (replica / fenced READONLY, min-replicas, CLIENT PAUSE), propagation to
  replicas, and eviction before each write (``evict_if_needed``; OOM under noeviction).
  Semi-synchronous clients never reach the reactor;
- bookkeeping: keyspace hits/misses and recency, ``commands_processed``, INFO commandstats
  (``calls``, ``usec``; snapshots count writes from these), ``last_cmd``, the latency histogram.
  The one difference: a run's time is shared equally among its commands (each is well below the
  histogram's lowest bucket, 10 µs), instead of a clock read around every command.

``tests/storenode/test_fastpath.py`` checks that replies and state are byte-identical to the
general path's over a large random mix of commands. Anything added to ``Node.execute`` or to
``Keyspace.lookup``/``set`` for every command (a new gate, a counter, a notification) must be
mirrored here or closed off in ``eligible``/the gates above, and added to that test's state.
"""

from __future__ import annotations

from bisect import bisect_left
from time import perf_counter_ns, time_ns
from typing import TYPE_CHECKING

from shardgate.resp import NULL_BULK, OK_BYTES

if TYPE_CHECKING:
    from storenode.node import Node
    from storenode.session import Session

_GET = 1
_SET = 2
_MAX_LEN = 1023  # longer keys and values take the general path


def _frame_heads(name: bytes, count: int, kind: int) -> dict[bytes, tuple[int, int, int]]:
    """``{b"*2\r\n$3\r\nGET\r\n$16\r\n": (kind, 16, 18), ...}``: every frame start up to the
    key's bytes, with the key's length and where it starts; canonical lengths only ("05" or "+5"
    are for the careful parser to judge)."""
    heads = {}
    for n in range(_MAX_LEN + 1):
        head = b"*%d\r\n$%d\r\n%b\r\n$%d\r\n" % (count, len(name), name, n)
        heads[head] = (kind, n, len(head))
    return heads


_HEADS = {
    **_frame_heads(b"GET", 2, _GET),
    **_frame_heads(b"get", 2, _GET),
    **_frame_heads(b"SET", 3, _SET),
    **_frame_heads(b"set", 3, _SET),
}
# A value's header, "$100\r\n" -> 100.
_BULK_HEADS = {b"$%d\r\n" % n: n for n in range(_MAX_LEN + 1)}
# The reply's header for a value of each length.
_REPLY_HEADS = [b"$%d\r\n" % n for n in range(_MAX_LEN + 1)]
CRLF = b"\r\n"
_SHAPES = (b"*2\r\n$3\r\n", b"*3\r\n$3\r\n")


def eligible(session: Session, data: bytes) -> bool:
    """Whether ``data``, just received, may start on the fast path."""
    parser = session.parser
    return (
        data.startswith(_SHAPES)  # a command of three letters with one or two arguments
        and session.authenticated
        and not session.resp3
        and parser.idle
        and len(data) <= parser.limits.max_querybuf
    )


def serve(
    node: Node, session: Session, data: bytes, pos: int, out: list[bytes], flush_at: int
) -> tuple[int, int]:
    """Answer the GETs and SETs at ``data[pos:]`` into ``out``.

    Stops at the first frame it does not take, at the end of the complete frames, or once the
    replies reach ``flush_at`` bytes. Returns (where it stopped, bytes of replies appended).
    """
    ks = node.keyspace
    get = ks.records.get
    set_ = ks.set
    evict = ks.evict_if_needed
    limited = node.memory_limited
    # Writes evict first (evict_if_needed) when a maxmemory is set; once it said yes, it says
    # yes again until some write changes the memory used.
    within_limit = not limited
    writable = node.write_gate_open and not node.propagating
    heads = _HEADS.get
    bulk_heads = _BULK_HEADS.get
    reply_heads = _REPLY_HEADS
    append = out.append
    now_ms = time_ns() // 1_000_000
    stamp = None  # the keyspace's recency stamp for now_ms, taken on the first hit as lookup does
    started = perf_counter_ns()
    size = 0
    gets = 0
    sets = 0
    misses = 0
    last = ""
    end = len(data)
    while pos < end and size < flush_at:
        # Keys of 10-99 bytes are the common case: one slice and one lookup find the frame.
        frame = heads(data[pos : pos + 18]) or heads(data[pos : pos + 17])
        if frame is None:
            frame = heads(data[pos : pos + 19]) or heads(data[pos : pos + 20])
            if frame is None:
                break
        kind, klen, hlen = frame
        k0 = pos + hlen
        k1 = k0 + klen
        if data[k1 : k1 + 2] != CRLF:
            break
        key = data[k0:k1]
        if kind == _GET:
            e = get(key)
            if e is None:
                misses += 1
                append(NULL_BULK)
                size += 5
            else:
                exp = e.expire_at
                if exp and now_ms > exp:
                    break
                v = e.value
                if v.__class__ is not bytes or len(v) > _MAX_LEN:
                    break
                if stamp is None:
                    stamp = ks.stamp(now_ms)
                e.lru = stamp
                append(reply_heads[len(v)])
                append(v)
                append(CRLF)
                size += len(v) + 8
            gets += 1
            last = "get"
            pos = k1 + 2
        else:
            if not writable:
                break
            p = k1 + 2
            vlen = bulk_heads(data[p : p + 6])  # 100-999 bytes, then shorter, then 1000+
            if vlen is not None:
                v0 = p + 6
            elif (vlen := bulk_heads(data[p : p + 5])) is not None:
                v0 = p + 5
            elif (vlen := bulk_heads(data[p : p + 4])) is not None:
                v0 = p + 4
            elif (vlen := bulk_heads(data[p : p + 7])) is not None:
                v0 = p + 7
            else:
                break
            v1 = v0 + vlen
            if data[v1 : v1 + 2] != CRLF:
                break
            if not within_limit:
                if not evict():
                    break  # the general path answers OOM
                within_limit = True
            e = get(key)
            if e is not None and not e.expire_at and (old := e.value).__class__ is bytes:
                if len(old) == vlen:
                    # What Keyspace.set does for a same-size overwrite of a record without a
                    # TTL: no memory to account, so no eviction check needed before the next.
                    e.value = data[v0:v1]
                    if stamp is None:
                        stamp = ks.stamp(now_ms)
                    e.lru = stamp
                else:
                    set_(key, data[v0:v1], now_ms)
                    within_limit = not limited
            else:
                set_(key, data[v0:v1], now_ms)
                within_limit = not limited
            append(OK_BYTES)
            size += 5
            sets += 1
            last = "set"
            pos = v1 + 2
    n = gets + sets
    if n:
        _account(node, gets, sets, misses, perf_counter_ns() - started)
        session.last_cmd = last
    return pos, size


def _account(node: Node, gets: int, sets: int, misses: int, elapsed: int) -> None:
    """What ``Node.execute`` and ``Keyspace.lookup`` count per command, for a whole run."""
    n = gets + sets
    ks_stats = node.keyspace.stats
    ks_stats.keyspace_hits += gets - misses
    ks_stats.keyspace_misses += misses
    stats = node.stats
    stats.commands_processed += n
    calls = stats.command_calls
    usec = elapsed / 1000 / n
    if gets:
        c = calls["get"]
        c.calls += gets
        c.usec += usec * gets
    if sets:
        c = calls["set"]
        c.calls += sets
        c.usec += usec * sets
    latency = stats.latency
    latency.counts[bisect_left(latency.bounds_ns, elapsed // n)] += n
    latency.total += elapsed / 1e9
