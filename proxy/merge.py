"""Merging per-shard replies (raw RESP bytes) into the one reply a client sees (sans-I/O).

Every merge starts the same way: if any part is an error reply, the whole command's reply is the
first such error (a backend's own error, or the proxy's timeout / down / busy error). Nothing
here decodes values: elements are sliced out with ``reply_ends`` and reassembled byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.replies import reply_ends
from shardgate.resp import CRLF, ReplyError, encode_bulk

OK = b"+OK\r\n"


class MergeError(Exception):
    """A backend reply did not have the shape the command promises."""


def first_error(parts: list[bytes]) -> bytes | None:
    for part in parts:
        if part[:1] == b"-":
            return part
    return None


def _array_items(reply: bytes) -> list[bytes]:
    """The raw elements of an array reply (``*N`` or RESP3 set ``~N``), cut by the backend
    reader's framing (``reply_ends``: MGET's run of bulk strings in a few C-level passes)."""
    if reply[:1] not in (b"*", b"~"):
        raise MergeError(f"expected an array, got {reply[:20]!r}")
    nl = reply.find(CRLF)
    count = max(int(reply[1:nl]), 0)
    body = reply[nl + 2 :]
    try:
        ends, _ = reply_ends(body) if body else ([], 0)
    except ReplyError as exc:
        raise MergeError(str(exc)) from None
    if len(ends) < count:
        raise MergeError("truncated array")
    return list(map(body.__getitem__, map(slice, [0, *ends[: count - 1]], ends[:count])))


def _guard(fn: Callable[..., bytes]) -> Callable[..., bytes]:
    """Errors first; a malformed part becomes an error reply instead of an exception."""

    def merged(parts: list[bytes], **kw: object) -> bytes:
        err = first_error(parts)
        if err is not None:
            return err
        try:
            return fn(parts, **kw)
        except (MergeError, ValueError) as exc:
            return b"-ERR proxy could not merge shard replies: " + str(exc).encode() + CRLF

    merged.__name__ = fn.__name__
    merged.__doc__ = fn.__doc__
    return merged


@_guard
def mget(parts: list[bytes], *, positions: list[list[int]]) -> bytes:
    """MGET: each part answers its keys in order; put every value back in the client's order."""
    n = sum(len(p) for p in positions)
    out: list[bytes] = [b""] * n
    for reply, where in zip(parts, positions):
        items = _array_items(reply)
        if len(items) != len(where):
            raise MergeError(f"expected {len(where)} values, got {len(items)}")
        for pos, item in zip(where, items):
            out[pos] = item
    return b"*%d\r\n" % n + b"".join(out)


@_guard
def total(parts: list[bytes], *, positions: object = None) -> bytes:
    """DEL, UNLINK, EXISTS, TOUCH, DBSIZE: integer replies summed."""
    result = 0
    for reply in parts:
        if reply[:1] != b":":
            raise MergeError(f"expected an integer, got {reply[:20]!r}")
        result += int(reply[1:-2])
    return b":%d\r\n" % result


@_guard
def all_ok(parts: list[bytes], *, positions: object = None) -> bytes:
    """MSET, FLUSHDB, FLUSHALL: +OK when every shard said OK."""
    for reply in parts:
        if reply != OK:
            raise MergeError(f"expected OK, got {reply[:20]!r}")
    return OK


@_guard
def concat(parts: list[bytes]) -> bytes:
    """KEYS: the shards' arrays, one after another."""
    items: list[bytes] = []
    for reply in parts:
        items.extend(_array_items(reply))
    return b"*%d\r\n" % len(items) + b"".join(items)


@_guard
def first_non_null(parts: list[bytes], *, start: int = 0) -> bytes:
    """RANDOMKEY: the first shard from ``start`` (chosen at random by the caller) with a key."""
    n = len(parts)
    for i in range(n):
        reply = parts[(start + i) % n]
        if reply[:1] == b"$" and reply[:3] != b"$-1":
            return reply
    return b"$-1\r\n"


@_guard
def scan_page(parts: list[bytes], *, shard: int, nshards: int) -> bytes:
    """SCAN: rewrite the node's cursor into the proxy cursor (see ``proxy.router``)."""
    items = _array_items(parts[0])
    if len(items) != 2 or items[0][:1] != b"$":
        raise MergeError("SCAN reply is not [cursor, keys]")
    nl = items[0].find(CRLF)
    node_cursor = int(items[0][nl + 2 : -2])
    if node_cursor != 0:
        cursor = node_cursor * nshards + shard
    elif shard + 1 < nshards:
        cursor = shard + 1  # next shard, node cursor 0
    else:
        cursor = 0  # every shard done
    return b"*2\r\n" + encode_bulk(b"%d" % cursor) + items[1]
