"""RESP codec: reply encoders and a reply boundary scanner; re-exports the request parser.

How it works
- Requests are parsed by ``shardgate.request_parser`` (re-exported here: ``RequestParser``,
  ``RequestLimits``, ``ProtocolError``, ``split_inline`` and the limits' defaults).
- Replies are encoded by ``encode_reply`` from plain Python values (see the type table there),
  in RESP2 or RESP3.
- ``reply_end`` finds where one complete reply ends in a buffer without decoding it, which is what
  the proxy needs to forward backend replies byte for byte.
"""

from __future__ import annotations

import decimal

import attrs

from shardgate.request_parser import (
    ARG_OVERHEAD,
    CRLF,
    DEFAULT_MAX_BULK,
    DEFAULT_MAX_INLINE,
    DEFAULT_MAX_MULTIBULK,
    DEFAULT_MAX_QUERYBUF,
    UNAUTH_MAX_BULK,
    UNAUTH_MAX_MULTIBULK,
    Batch,
    ProtocolError,
    RequestLimits,
    RequestParser,
    Run,
    encode_command,
    split_inline,
)

__all__ = [
    "ARG_OVERHEAD",
    "Batch",
    "CRLF",
    "DEFAULT_MAX_BULK",
    "DEFAULT_MAX_INLINE",
    "DEFAULT_MAX_MULTIBULK",
    "DEFAULT_MAX_QUERYBUF",
    "NULL_ARRAY",
    "NULL_BULK",
    "OK",
    "OK_BYTES",
    "UNAUTH_MAX_BULK",
    "UNAUTH_MAX_MULTIBULK",
    "ErrorReply",
    "ProtocolError",
    "Push",
    "RawReply",
    "ReplyError",
    "RequestLimits",
    "RequestParser",
    "RespSet",
    "Run",
    "SimpleString",
    "Verbatim",
    "encode_bulk",
    "encode_command",
    "encode_error",
    "encode_reply",
    "format_double",
    "format_reply_double",
    "reply_end",
    "split_inline",
]


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

_INF = float("inf")
_DECIMAL_17 = decimal.Decimal("1e-17")  # %.17Lf: 17 decimals


def encode_bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def encode_error(message: str) -> bytes:
    # Error lines must stay one line; newlines would desynchronise the client.
    return b"-" + _utf8(message.replace("\r", " ").replace("\n", " ")) + CRLF


def _utf8(text: str) -> bytes:
    # Text decoded from client bytes with surrogateescape turns back into those bytes; any
    # other lone surrogate must not make a reply raise.
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def format_double(value: float) -> bytes:
    """The text INCRBYFLOAT stores and returns, as Redis 7 writes it.

    Redis prints the long double result with ``%.17Lf`` and strips trailing zeros and the dot
    (``ld2string``, LD_STR_HUMAN): never an exponent, at most 17 decimals, ``-0`` as ``0``. We
    hold a double, so the digits are its shortest round-trip form: the same text for every value
    a user typed or a sum of them carries (10.5+0.1 → ``10.6``, 5.0e3 → ``5000``, 1e20 →
    ``100000000000000000000``, 1.5e-7 → ``0.00000015``). Where Redis shows its long double's own
    binary noise (12345678.9 → ``12345678.8999999999996362``) or a double's rounding differs
    from a long double's (0.1+0.2), the texts differ.
    """
    if value != value:
        return b"nan"
    if value in (_INF, -_INF):
        return b"inf" if value > 0 else b"-inf"
    dec = decimal.Decimal(repr(value))
    exponent = dec.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -17:
        # Only values below 1 have digits past the 17th decimal; rounding keeps <= 17 digits.
        dec = dec.quantize(_DECIMAL_17, rounding=decimal.ROUND_HALF_EVEN)
    text = format(dec, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text == "-0":
        text = "0"
    return text.encode()


def format_reply_double(value: float) -> bytes:
    """A double reply as Redis 7.0 sends it (addReplyDouble: ``%.17g``, ``inf``, ``-inf``)."""
    if value != value:
        return b"nan"
    if value in (_INF, -_INF):
        return b"inf" if value > 0 else b"-inf"
    return b"%.17g" % value


def encode_reply(value: object, resp3: bool = False) -> bytes:
    """Encode a reply value.

    bytes → bulk, None → null, bool → RESP3 boolean (integer in RESP2), int → integer,
    float → RESP3 double (bulk in RESP2; both ``%.17g`` as Redis 7.0), SimpleString → status, ErrorReply → error,
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
        out.append(b"+" + _utf8(value) + CRLF)
    elif isinstance(value, Verbatim):
        raw = _utf8(value)
        if resp3:
            out.append(b"=%d\r\ntxt:%b\r\n" % (len(raw) + 4, raw))
        else:
            out.append(encode_bulk(raw))
    elif isinstance(value, str):
        out.append(encode_bulk(_utf8(value)))
    elif isinstance(value, float):
        text = format_reply_double(value)
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


# --- reply boundaries ------------------------------------------------------------------------

_LINE_TYPES = frozenset(b"+-:_,#(")
_BLOB_TYPES = frozenset(b"$!=")
_AGG_TYPES = frozenset(b"*~>")  # n elements
_MAP_TYPES = frozenset(b"%|")  # n pairs
_ALL_TYPES = _LINE_TYPES | _BLOB_TYPES | _AGG_TYPES | _MAP_TYPES


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
        if kind not in _ALL_TYPES:
            raise ReplyError(f"unknown reply type byte {kind!r}")
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
                if size != -1:
                    raise ReplyError(f"bad blob length {buf[pos : nl + 2]!r}")
                pos = nl + 2
            else:
                pos = nl + 2 + size + 2
                if pos > n:
                    return -1
                if buf[pos - 2] != 13 or buf[pos - 1] != 10:
                    raise ReplyError("missing CRLF after a blob")
        else:
            try:
                count = int(buf[pos + 1 : nl])
            except ValueError:
                raise ReplyError(f"bad aggregate length {buf[pos : nl + 2]!r}") from None
            if count > 0:
                pending += count * 2 if kind in _MAP_TYPES else count
            if kind == 124:  # '|': an attribute map precedes the reply it annotates
                pending += 1
            pos = nl + 2
    return pos
