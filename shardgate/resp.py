"""RESP codec: a sans-I/O request parser, reply encoders and a reply boundary scanner.

How it works
- ``RequestParser`` takes bytes with ``feed`` and hands back complete commands (lists of bytes)
  from ``next_command``; it returns ``None`` for "need more data" and raises ``ProtocolError``
  for a stream that cannot be resynchronised. It never half-consumes: an incomplete command stays
  buffered whole. Declared lengths are checked against the limits before anything is allocated,
  and a large bulk is gathered in a list of chunks, joined once, so a 512 MB value costs one copy.
- Replies are encoded by ``encode_reply`` from plain Python values (see the type table there),
  in RESP2 or RESP3.
- ``reply_end`` finds where one complete reply ends in a buffer without decoding it, which is what
  the proxy needs to forward backend replies byte for byte.
"""

from __future__ import annotations

import attrs

CRLF = b"\r\n"

# Redis defaults (src/server.h): proto-max-bulk-len 512 MB, PROTO_INLINE_MAX_SIZE 64 KB,
# client-query-buffer-limit 1 GB; unauthenticated clients may send at most 10 arguments of at
# most 16 KB each (Redis 7 networking.c).
DEFAULT_MAX_BULK = 512 * 1024 * 1024
DEFAULT_MAX_MULTIBULK = 2**31 - 1
DEFAULT_MAX_INLINE = 64 * 1024
DEFAULT_MAX_QUERYBUF = 1024 * 1024 * 1024
UNAUTH_MAX_MULTIBULK = 10
UNAUTH_MAX_BULK = 16 * 1024

# What one parsed argument costs in Python beyond its bytes (object header + list slot); the
# query-buffer limit counts parsed-but-incomplete arguments at this price so a flood of tiny
# arguments cannot grow memory 5x past the limit.
ARG_OVERHEAD = 41

_HTTP_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ")


class ProtocolError(Exception):
    """The stream is broken; reply with the message (unless silent) and close the connection."""

    def __init__(self, message: str, *, silent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.silent = silent

    @property
    def reply(self) -> bytes:
        return b"-ERR Protocol error: " + self.message.encode() + CRLF


@attrs.frozen(slots=True)
class RequestLimits:
    max_bulk: int = DEFAULT_MAX_BULK
    max_multibulk: int = DEFAULT_MAX_MULTIBULK
    max_inline: int = DEFAULT_MAX_INLINE
    max_querybuf: int = DEFAULT_MAX_QUERYBUF


class RequestParser:
    """Incremental parser for client requests (multibulk or inline)."""

    __slots__ = (
        "_args",
        "_buf",
        "_chunks",
        "_chunks_len",
        "_first",
        "_pending_cost",
        "_pos",
        "_remaining",
        "_want",
        "authenticated",
        "limits",
    )

    def __init__(self, limits: RequestLimits | None = None, *, authenticated: bool = True) -> None:
        self.limits = limits or RequestLimits()
        self.authenticated = authenticated
        self._buf = b""
        self._pos = 0
        self._chunks: list[bytes] = []
        self._chunks_len = 0
        self._want = 0  # buffered bytes needed before parsing can progress
        self._args: list[bytes] = []
        self._remaining = 0  # bulks still expected in the current multibulk
        self._pending_cost = 0
        self._first = True  # nothing parsed yet on this connection (HTTP detection)

    @property
    def buffered(self) -> int:
        """Bytes held for commands not yet complete (query buffer)."""
        return len(self._buf) - self._pos + self._chunks_len + self._pending_cost

    def feed(self, data: bytes) -> None:
        if self._chunks or self._want > len(self._buf) - self._pos + len(data):
            # Waiting for a large body: collect chunks and join once when enough arrived.
            self._chunks.append(data)
            self._chunks_len += len(data)
            if self.buffered > self.limits.max_querybuf:
                raise ProtocolError("query buffer limit exceeded", silent=True)
            if len(self._buf) - self._pos + self._chunks_len < self._want:
                return
            self._chunks.insert(0, self._buf[self._pos :])
            self._buf = b"".join(self._chunks)
            self._chunks.clear()
            self._chunks_len = 0
            self._pos = 0
            return
        if self._pos >= len(self._buf):
            self._buf = data
        else:
            self._buf = self._buf[self._pos :] + data
        self._pos = 0
        if self.buffered > self.limits.max_querybuf:
            raise ProtocolError("query buffer limit exceeded", silent=True)

    def next_command(self) -> list[bytes] | None:
        """Return the next complete command, or None when more data is needed."""
        while True:
            buf = self._buf
            pos = self._pos
            if self._chunks or pos >= len(buf):
                return None
            if self._remaining == 0:
                if buf[pos] != 42:  # not '*': inline command
                    cmd = self._inline(buf, pos)
                    if cmd is None:
                        return None
                    if not cmd:
                        continue
                    return cmd
                nl = buf.find(CRLF, pos)
                if nl < 0:
                    if len(buf) - pos > self.limits.max_inline:
                        raise ProtocolError("too big mbulk count string")
                    return None
                try:
                    count = int(buf[pos + 1 : nl])
                except ValueError:
                    raise ProtocolError("invalid multibulk length") from None
                if count > self.limits.max_multibulk or count > 2**31 - 1:
                    raise ProtocolError("invalid multibulk length")
                if not self.authenticated and count > UNAUTH_MAX_MULTIBULK:
                    raise ProtocolError("unauthenticated multibulk length")
                self._first = False
                self._pos = nl + 2
                if count <= 0:
                    continue  # Redis ignores empty multibulks
                self._remaining = count
            cmd = self._bulks()
            if cmd is not None:
                return cmd
            return None

    def _bulks(self) -> list[bytes] | None:
        buf = self._buf
        pos = self._pos
        end_buf = len(buf)
        args = self._args
        limits = self.limits
        while self._remaining:
            if pos >= end_buf:
                break
            if buf[pos] != 36:  # '$'
                raise ProtocolError(f"expected '$', got '{chr(buf[pos])}'")
            nl = buf.find(CRLF, pos)
            if nl < 0:
                if end_buf - pos > limits.max_inline:
                    raise ProtocolError("too big bulk count string")
                break
            try:
                size = int(buf[pos + 1 : nl])
            except ValueError:
                raise ProtocolError("invalid bulk length") from None
            if size < 0 or size > limits.max_bulk:
                raise ProtocolError("invalid bulk length")
            if not self.authenticated and size > UNAUTH_MAX_BULK:
                raise ProtocolError("unauthenticated bulk length")
            start = nl + 2
            stop = start + size
            if stop + 2 > end_buf:
                self._want = stop + 2 - pos
                break
            if buf[stop : stop + 2] != CRLF:
                # Redis 7.0 silently skips two bytes here; a desynchronised stream is an error.
                raise ProtocolError("expected CRLF after bulk")
            args.append(buf[start:stop])
            self._pending_cost += size + ARG_OVERHEAD
            self._remaining -= 1
            pos = stop + 2
        self._pos = pos
        if self._remaining:
            if self._pending_cost > limits.max_querybuf:
                raise ProtocolError("query buffer limit exceeded", silent=True)
            return None
        self._want = 0
        self._args = []
        self._pending_cost = 0
        return args

    def _inline(self, buf: bytes, pos: int) -> list[bytes] | None:
        nl = buf.find(b"\n", pos)
        if nl < 0:
            if len(buf) - pos > self.limits.max_inline:
                raise ProtocolError("too big inline request")
            return None
        if nl - pos > self.limits.max_inline:
            raise ProtocolError("too big inline request")
        line = buf[pos:nl]
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._first and (line.startswith(_HTTP_METHODS) or b" HTTP/1." in line):
            raise ProtocolError("HTTP request on a RESP port", silent=True)
        self._pos = nl + 1
        self._first = False
        args = split_inline(line)
        if args and args[0].lower() in (b"host:", b"post"):
            # Redis closes silently on these: a browser or HTTP client is talking to us.
            raise ProtocolError("HTTP request on a RESP port", silent=True)
        if not self.authenticated and len(args) > UNAUTH_MAX_MULTIBULK:
            raise ProtocolError("unauthenticated multibulk length")
        return args


_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}


def split_inline(line: bytes) -> list[bytes]:
    """Split an inline command like Redis's sdssplitargs (quotes and escapes)."""
    args: list[bytes] = []
    i = 0
    n = len(line)
    while True:
        while i < n and line[i] in b" \t\r\n\x0b\x0c":
            i += 1
        if i >= n:
            return args
        cur = bytearray()
        quote = 0
        while True:
            if i >= n:
                if quote:
                    raise ProtocolError("unbalanced quotes in request")
                break
            c = line[i]
            if quote == 34:  # inside "..."
                if c == 92 and i + 3 < n and line[i + 1] == 120 and _is_hex(line[i + 2 : i + 4]):
                    cur.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 92 and i + 1 < n:
                    i += 1
                    cur.append(_ESCAPES.get(line[i], line[i]))
                elif c == 34:
                    if i + 1 < n and line[i + 1] not in b" \t\r\n\x0b\x0c":
                        raise ProtocolError("unbalanced quotes in request")
                    i += 1
                    break
                else:
                    cur.append(c)
            elif quote == 39:  # inside '...'
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    i += 1
                    cur.append(39)
                elif c == 39:
                    if i + 1 < n and line[i + 1] not in b" \t\r\n\x0b\x0c":
                        raise ProtocolError("unbalanced quotes in request")
                    i += 1
                    break
                else:
                    cur.append(c)
            elif c in b" \t\r\n\x0b\x0c":
                break
            elif c in (34, 39):
                quote = c
            else:
                cur.append(c)
            i += 1
        args.append(bytes(cur))


def _is_hex(two: bytes) -> bool:
    return len(two) == 2 and all(ch in b"0123456789abcdefABCDEF" for ch in two)


# --- replies ---------------------------------------------------------------------------------


class SimpleString(str):
    """A status reply such as ``+OK``."""

    __slots__ = ()


class ErrorReply(str):
    """An error reply; the text includes its prefix, e.g. ``ERR syntax error``."""

    __slots__ = ()


class Verbatim(str):
    """RESP3 verbatim text (``=``); a bulk string in RESP2 (INFO, CLIENT INFO)."""

    __slots__ = ()


class Push(list):
    """RESP3 push (``>``); an array in RESP2 (pub/sub messages)."""

    __slots__ = ()


class RespSet(list):
    """RESP3 set (``~``); an array in RESP2."""

    __slots__ = ()


OK = SimpleString("OK")
OK_BYTES = b"+OK\r\n"
NULL_BULK = b"$-1\r\n"
NULL_ARRAY = b"*-1\r\n"


def encode_bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def encode_error(message: str) -> bytes:
    # Error lines must stay one line; newlines would desynchronise the client.
    return b"-" + message.replace("\r", " ").replace("\n", " ").encode() + CRLF


def format_double(value: float) -> bytes:
    """Redis's textual form of a double (INCRBYFLOAT, RESP3 doubles)."""
    if value != value:
        return b"nan"
    if value in (float("inf"), float("-inf")):
        return b"inf" if value > 0 else b"-inf"
    if value == int(value) and abs(value) < 1e17:
        return b"%d" % int(value)
    text = f"{value:.17g}"
    # Redis uses %.17Lg then trims; prefer the shortest repr that round-trips.
    short = repr(value)
    if "e" not in short and "inf" not in short:
        return short.encode()
    return text.encode()


def encode_reply(value: object, resp3: bool = False) -> bytes:
    """Encode a reply value.

    bytes → bulk, None → null, bool → RESP3 boolean (integer in RESP2), int → integer,
    float → RESP3 double (bulk in RESP2), SimpleString → status, ErrorReply → error,
    Verbatim → RESP3 verbatim (bulk in RESP2), list/tuple → array, Push → push, RespSet → set,
    dict → RESP3 map (flat array in RESP2).
    """
    out: list[bytes] = []
    _encode_into(out, value, resp3)
    return b"".join(out)


def _encode_into(out: list[bytes], value: object, resp3: bool) -> None:
    if isinstance(value, bytes):
        out.append(b"$%d\r\n%b\r\n" % (len(value), value))
    elif value is None:
        out.append(b"_\r\n" if resp3 else NULL_BULK)
    elif isinstance(value, bool):
        if resp3:
            out.append(b"#t\r\n" if value else b"#f\r\n")
        else:
            out.append(b":1\r\n" if value else b":0\r\n")
    elif isinstance(value, int):
        out.append(b":%d\r\n" % value)
    elif isinstance(value, ErrorReply):
        out.append(encode_error(value))
    elif isinstance(value, SimpleString):
        out.append(b"+" + value.encode() + CRLF)
    elif isinstance(value, Verbatim):
        raw = value.encode()
        if resp3:
            out.append(b"=%d\r\ntxt:%b\r\n" % (len(raw) + 4, raw))
        else:
            out.append(encode_bulk(raw))
    elif isinstance(value, str):
        out.append(encode_bulk(value.encode()))
    elif isinstance(value, float):
        text = format_double(value)
        out.append(b",%b\r\n" % text if resp3 else encode_bulk(text))
    elif isinstance(value, dict):
        if resp3:
            out.append(b"%%%d\r\n" % len(value))
        else:
            out.append(b"*%d\r\n" % (2 * len(value)))
        for k, v in value.items():
            _encode_into(out, k, resp3)
            _encode_into(out, v, resp3)
    elif isinstance(value, (list, tuple)):
        if resp3 and isinstance(value, Push):
            out.append(b">%d\r\n" % len(value))
        elif resp3 and isinstance(value, RespSet):
            out.append(b"~%d\r\n" % len(value))
        else:
            out.append(b"*%d\r\n" % len(value))
        for item in value:
            _encode_into(out, item, resp3)
    elif isinstance(value, RawReply):
        out.append(value.data)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as RESP")


@attrs.frozen(slots=True)
class RawReply:
    """Bytes that are already a complete RESP reply (forwarded verbatim)."""

    data: bytes


def encode_command(args: list[bytes] | tuple[bytes, ...]) -> bytes:
    """Encode a command as a RESP multibulk (what clients send)."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        parts.append(b"$%d\r\n%b\r\n" % (len(a), a))
    return b"".join(parts)


# --- reply boundaries ------------------------------------------------------------------------

_LINE_TYPES = frozenset(b"+-:_,#(")
_BLOB_TYPES = frozenset(b"$!=")
_AGG_TYPES = frozenset(b"*~>")  # n elements
_MAP_TYPES = frozenset(b"%|")  # n pairs


class ReplyError(Exception):
    """A backend sent something that is not RESP."""


def reply_end(buf: bytes, pos: int = 0) -> int:
    """Index just past the complete reply starting at ``pos``, or -1 if it is incomplete."""
    pending = 1
    n = len(buf)
    while pending:
        if pos >= n:
            return -1
        kind = buf[pos]
        nl = buf.find(CRLF, pos)
        if nl < 0:
            return -1
        pending -= 1
        if kind in _LINE_TYPES:
            pos = nl + 2
        elif kind in _BLOB_TYPES:
            try:
                size = int(buf[pos + 1 : nl])
            except ValueError:
                raise ReplyError(f"bad blob length {buf[pos : nl + 2]!r}") from None
            if size < 0:
                pos = nl + 2
            else:
                pos = nl + 2 + size + 2
                if pos > n:
                    return -1
        elif kind in _AGG_TYPES or kind in _MAP_TYPES:
            try:
                count = int(buf[pos + 1 : nl])
            except ValueError:
                raise ReplyError(f"bad aggregate length {buf[pos : nl + 2]!r}") from None
            if count > 0:
                pending += count * 2 if kind in _MAP_TYPES else count
            if kind == 124:  # '|': an attribute map precedes the reply it annotates
                pending += 1
            pos = nl + 2
        else:
            raise ReplyError(f"unknown reply type byte {kind!r}")
    return pos
