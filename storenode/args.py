"""Argument parsing shared by the command modules, with Redis 7.0's exact acceptance rules."""

from __future__ import annotations

from shardgate.errors import CommandError, not_integer

LLONG_MAX = 2**63 - 1
LLONG_MIN = -(2**63)
_LONG_STR_SIZE = 21  # Redis: strings this long or longer are never integers


def parse_ll(s: bytes | bytearray) -> int | None:
    """Redis's string2ll: no sign but '-', no leading zeros, no spaces, 64-bit range."""
    n = len(s)
    if n == 0 or n >= _LONG_STR_SIZE:
        return None
    first = s[0]
    if 49 <= first <= 57:  # '1'..'9'
        if n == 1 or s.isdigit():
            v = int(s)
            return v if v <= LLONG_MAX else None
        return None
    if first == 45:  # '-'
        if n > 1 and 49 <= s[1] <= 57 and (n == 2 or s[2:].isdigit()):
            v = int(s)
            return v if v >= LLONG_MIN else None
        return None
    if n == 1 and first == 48:  # "0"
        return 0
    return None


def int_arg(s: bytes) -> int:
    """An integer argument, or Redis's "not an integer" error."""
    v = parse_ll(s)
    if v is None:
        raise not_integer()
    return v


def expire_time_error(command: str) -> CommandError:
    return CommandError(f"ERR invalid expire time in '{command}' command")


def cstr(arg: bytes) -> bytes:
    """What C's string functions see: the bytes before the first NUL. Redis compares option
    names with strcasecmp, so ``NX\\0junk`` is NX to it; numbers and patterns use lengths."""
    i = arg.find(b"\0")
    return arg if i < 0 else arg[:i]


def eq(arg: bytes, word: bytes) -> bool:
    """Case-insensitive option match, C-string style (``word`` is lower case)."""
    return cstr(arg).lower() == word


def parse_cursor(s: bytes) -> int:
    """SCAN's cursor: C strtoul rules (sign allowed, wraps), no leading space, no garbage."""
    text = s.split(b"\0", 1)[0]
    body = text[1:] if text[:1] in (b"+", b"-") else text
    if text[:1].isspace() or (body and not body.isdigit()) or (text and not body):
        raise CommandError("ERR invalid cursor")
    if not body:
        return 0  # strtoul("") parses nothing and Redis does not notice
    v = int(body.lstrip(b"0") or b"0") if len(body.lstrip(b"0")) <= 20 else 2**64
    if v > 2**64 - 1:
        raise CommandError("ERR invalid cursor")
    return (-v) % 2**64 if text[:1] == b"-" else v
