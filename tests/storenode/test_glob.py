"""Glob patterns: the compiled regex agrees with a port of Redis 7's stringmatchlen."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storenode.glob import matcher


def redis_stringmatch(pattern: bytes, string: bytes) -> bool:
    """A line-by-line port of Redis 7's stringmatchlen (nocase=0), the reference."""
    p = pattern + b"\0"  # C strings: reading one past the end sees NUL
    s = string + b"\0"

    def impl(pi: int, plen: int, si: int, slen: int, skip: list[bool]) -> bool:
        while plen and slen:
            c = p[pi]
            if c == 42:  # '*'
                while plen and p[pi + 1] == 42:
                    pi += 1
                    plen -= 1
                if plen == 1:
                    return True
                while slen:
                    if impl(pi + 1, plen - 1, si, slen, skip):
                        return True
                    if skip[0]:
                        return False
                    si += 1
                    slen -= 1
                skip[0] = True
                return False
            elif c == 63:  # '?'
                si += 1
                slen -= 1
            elif c == 91:  # '['
                pi += 1
                plen -= 1
                negate = p[pi] == 94
                if negate:
                    pi += 1
                    plen -= 1
                match = False
                while True:
                    if p[pi] == 92 and plen >= 2:
                        pi += 1
                        plen -= 1
                        if p[pi] == s[si]:
                            match = True
                    elif p[pi] == 93:
                        break
                    elif plen == 0:
                        pi -= 1
                        plen += 1
                        break
                    elif plen >= 3 and p[pi + 1] == 45:
                        lo, hi = sorted((p[pi], p[pi + 2]))
                        pi += 2
                        plen -= 2
                        if lo <= s[si] <= hi:
                            match = True
                    elif p[pi] == s[si]:
                        match = True
                    pi += 1
                    plen -= 1
                if negate:
                    match = not match
                if not match:
                    return False
                si += 1
                slen -= 1
            else:
                if c == 92 and plen >= 2:
                    pi += 1
                    plen -= 1
                if p[pi] != s[si]:
                    return False
                si += 1
                slen -= 1
            pi += 1
            plen -= 1
            if slen == 0:
                while p[pi] == 42:
                    pi += 1
                    plen -= 1
                break
        return plen == 0 and slen == 0

    return impl(0, len(pattern), 0, len(string), [False])


_GLOB_ALPHABET = st.sampled_from([b"a", b"b", b"-", b"*", b"?", b"[", b"]", b"^", b"\\"])


@given(
    st.lists(_GLOB_ALPHABET, max_size=8).map(b"".join),
    st.lists(st.sampled_from([b"a", b"b", b"-", b"*", b"[", b"\\"]), max_size=6).map(b"".join),
)
def test_glob_matches_redis_stringmatchlen(pattern: bytes, key: bytes) -> None:
    assert matcher(pattern)(key) == redis_stringmatch(pattern, key)


@pytest.mark.parametrize(
    ("pattern", "key", "want"),
    [
        (b"h?llo", b"hello", True),
        (b"h*llo", b"heeeello", True),
        (b"h[ae]llo", b"hallo", True),
        (b"h[^e]llo", b"hello", False),
        (b"h[a-b]llo", b"hbllo", True),
        (b"h[b-a]llo", b"hbllo", True),
        (b"weird\\*", b"weird*", True),
        (b"weird\\*", b"weirdo", False),
        (b"*", b"", False),  # Redis's loop never runs on an empty subject
        (b"", b"", True),
        (b"a[", b"ab", False),
        (b"a[^", b"ab", True),
        (b"\\", b"\\", True),
    ],
)
def test_glob_examples(pattern: bytes, key: bytes, want: bool) -> None:
    assert matcher(pattern)(key) is want
    assert redis_stringmatch(pattern, key) is want
