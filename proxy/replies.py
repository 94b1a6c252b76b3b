"""Where each reply in a backend's byte stream ends: the proxy forwards replies as the bytes they
came as, so it needs their boundaries, never their values.

How it works
- ``reply_ends(buf)`` gives the end offset of every complete reply at the head of ``buf`` and
  how many bytes the first incomplete one needs before scanning again is worth it (0: unknown).
- Pipelined runs of one command get runs of alike replies: ``+OK`` for SETs, bulk strings for
  GETs, integers for INCRs. Those are cut with one ``split`` on CRLF and a few C-level checks
  over the tokens, as the request parser does with requests (``Run``), instead of a header
  parsed in Python per reply. Anything else (arrays, errors, nulls, a value holding a CRLF, a
  mix of kinds, big values) goes through the scanner, which reads one header per reply.

Sans-I/O: bytes in, offsets out. Malformed input raises ``ValueError`` (a bad length), which
the backend connection treats as a broken stream.
"""

from __future__ import annotations

from itertools import accumulate, repeat
from operator import add

from shardgate.resp import CRLF, reply_end

# "$0" … "$4095": the bulk headers the alike path takes; bigger values are scanned by length.
_BULK_SIZES = {b"$%d" % i: i for i in range(4096)}
_WINDOW = 64 * 1024  # bytes one split may cover: a big buffer is cut a window at a time
_ALIKE_MIN = 256  # below this (a reply or two, as at one request per round trip) scan
_PLUS, _COLON, _DOLLAR, _MINUS = 43, 58, 36, 45
_ALIKE_KINDS = (_DOLLAR, _PLUS, _COLON)
_LINE_KINDS = (_PLUS, _COLON, _MINUS)


def reply_ends(buf: bytes) -> tuple[list[int], int]:
    """The end offsets of the complete replies at the head of ``buf``, and ``need``.

    One function, the scanner inlined: at one request per round trip this runs once per reply.
    """
    ends: list[int] = []
    pos = 0
    n = len(buf)
    if n >= _ALIKE_MIN and buf[0] in _ALIKE_KINDS:
        ends = _alike(buf, buf[0])
        if ends:
            pos = ends[-1]
    while pos < n:  # the scanner: one header per reply
        kind = buf[pos]
        if kind in _LINE_KINDS:
            end = buf.find(CRLF, pos)
            if end < 0:
                return ends, 0
            end += 2
        elif kind == _DOLLAR:
            nl = buf.find(CRLF, pos)
            if nl < 0:
                return ends, 0
            size = int(buf[pos + 1 : nl])
            end = nl + 2 if size < 0 else nl + size + 4
            if end > n:
                return ends, end - pos  # wait for the whole bulk before scanning again
        else:
            end = reply_end(buf, pos)
            if end < 0:
                return ends, 0
        ends.append(end)
        pos = end
    return ends, 0


def _alike(buf: bytes, kind: int) -> list[int]:
    """Ends of the leading replies when they are all of one kind: small bulk strings, or status
    lines, or integers. Empty when the head does not suit (the scanner takes it then).

    Why it cannot misread: a bulk is taken only when the token after its ``$N`` header is
    exactly N bytes long. A value holding a CRLF splits into tokens shorter than N, so the run
    stops there; a line reply is one token, and ``count`` checks that every token of the
    window starts with the same kind byte.
    """
    toks = (buf if len(buf) <= _WINDOW else buf[:_WINDOW]).split(CRLF)
    last = len(toks) - 1  # toks[last] is not followed by a CRLF: never a whole token
    if kind == _DOLLAR:
        count = last // 2
        if count < 2:
            return []
        headers = toks[0 : 2 * count : 2]
        lengths = list(map(len, toks[1 : 2 * count : 2]))
        if list(map(_BULK_SIZES.get, headers)) != lengths:
            return []  # a null, a big value, a CRLF inside a value, another kind …
        sizes = map(add, map(add, lengths, map(len, headers)), repeat(4, count))
    else:
        if last < 2:
            return []
        sizes = map(add, map(len, toks[:last]), repeat(2, last))
        ends = list(accumulate(sizes))
        # Every CRLF before the last end starts a token: each must be followed by the kind.
        if buf.count(CRLF + bytes((kind,)), 0, ends[-1]) != last - 1:
            return []
        return ends
    return list(accumulate(sizes))
