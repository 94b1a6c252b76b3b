"""Argument parsing with Redis's acceptance rules, and INCRBYFLOAT's long double arithmetic."""

from __future__ import annotations

import pytest

from shardgate.errors import CommandError
from storenode.args import parse_cursor, parse_ll
from storenode.longdouble import format_ld, parse_ld, round_ld

LLONG_MAX = 2**63 - 1
LLONG_MIN = -(2**63)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"0", 0),
        (b"7", 7),
        (b"-7", -7),
        (b"9223372036854775807", LLONG_MAX),
        (b"-9223372036854775808", LLONG_MIN),
        (b"9223372036854775808", None),
        (b"-9223372036854775809", None),
        (b"-0", None),
        (b"007", None),
        (b"+7", None),
        (b" 7", None),
        (b"7 ", None),
        (b"", None),
        (b"-", None),
        (b"1" * 21, None),
    ],
)
def test_parse_ll(text: bytes, value: int | None) -> None:
    assert parse_ll(text) == value


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [
        (b"0.1", b"0.2", b"0.3"),
        (b"10.5", b"0.1", b"10.6"),
        (b"-1", b"0.9", b"-0.1"),
        (b"1", b"-1", b"0"),
        (b"-0.0", b"0", b"0"),
        (b"0x10", b"0", b"16"),
        (b"1e2", b".5", b"100.5"),
        (b"3", b"1.5e-20", b"3"),
        (b"1", b"1e-17", b"1.00000000000000001"),
    ],
)
def test_long_double_sums_match_redis(a: bytes, b: bytes, want: bytes) -> None:
    x, y = parse_ld(a), parse_ld(b)
    assert x is not None and y is not None
    assert format_ld(round_ld(x + y)) == want


def test_scan_cursor_parsing_like_strtoul() -> None:
    assert parse_cursor(b"0") == 0
    assert parse_cursor(b"") == 0
    assert parse_cursor(b"+7") == 7
    assert parse_cursor(b"-1") == 2**64 - 1
    with pytest.raises(CommandError):
        parse_cursor(b"18446744073709551616")


def test_scan_cursor_with_thousands_of_digits() -> None:
    with pytest.raises(CommandError):
        parse_cursor(b"1" * 5000)
    assert parse_cursor(b"0" * 5000 + b"12") == 12
