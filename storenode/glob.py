"""Redis glob patterns (KEYS, SCAN MATCH) compiled to regular expressions.

How it works: ``_tokens`` walks the pattern exactly as Redis 7's ``stringmatchlen`` does
(``*``, ``?``, ``[...]`` with ``^``, ranges in either order and ``\\`` escapes, an unclosed ``[``
reaching to the end of the pattern, a trailing lone ``\\`` matching itself). That walk never
depends on the subject string, so the pattern becomes one compiled regex, matched with
``fullmatch`` in C instead of a Python loop per key. One quirk is kept by hand: Redis's loop
never runs for an empty subject, so an empty key matches only an empty pattern.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_cache: dict[bytes, Callable[[bytes], bool]] = {}
_CACHE_MAX = 256  # patterns are few in practice; a bound keeps a pattern flood harmless


def matcher(pattern: bytes) -> Callable[[bytes], bool]:
    """A predicate telling whether a key matches ``pattern``."""
    fn = _cache.get(pattern)
    if fn is None:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        fn = _compile(pattern)
        _cache[pattern] = fn
    return fn


def _compile(pattern: bytes) -> Callable[[bytes], bool]:
    if pattern == b"":
        return lambda key: key == b""
    regex = re.compile(b"".join(_tokens(pattern)), re.DOTALL)
    full = regex.fullmatch

    def match(key: bytes) -> bool:
        return bool(key) and full(key) is not None

    return match


def _lit(c: int) -> bytes:
    return re.escape(bytes([c]))


def _tokens(p: bytes) -> list[bytes]:
    out: list[bytes] = []
    i = 0
    n = len(p)
    while i < n:
        c = p[i]
        if c == 42:  # '*'
            while i + 1 < n and p[i + 1] == 42:
                i += 1
            out.append(b".*")
        elif c == 63:  # '?'
            out.append(b".")
        elif c == 91:  # '['
            i, cls = _bracket(p, i + 1)
            out.append(cls)
        elif c == 92 and i + 1 < n:  # '\\' escapes the next byte
            i += 1
            out.append(_lit(p[i]))
        else:
            out.append(_lit(c))
        i += 1
    return out


def _bracket(p: bytes, i: int) -> tuple[int, bytes]:
    """Parse a class starting after '['; returns the index of its last byte and the regex."""
    n = len(p)
    negate = i < n and p[i] == 94  # '^'
    if negate:
        i += 1
    members: list[bytes] = []
    while True:
        if i < n and p[i] == 92 and n - i >= 2:  # escaped member
            i += 1
            members.append(_lit(p[i]))
        elif i < n and p[i] == 93:  # ']'
            break
        elif i >= n:  # unclosed: the class ends with the pattern
            i = n - 1
            break
        elif n - i >= 3 and p[i + 1] == 45:  # 'a-z', either order
            lo, hi = sorted((p[i], p[i + 2]))
            members.append(_lit(lo) + b"-" + _lit(hi))
            i += 2
        else:
            members.append(_lit(p[i]))
        i += 1
    if not members:
        return i, b"." if negate else b"(?!)"
    body = b"".join(members)
    return i, (b"[^" if negate else b"[") + body + b"]"
