"""INCRBYFLOAT's arithmetic, bit for bit: x87 80-bit long doubles, like Redis on x86-64.

Redis parses both operands with ``strtold``, adds them as ``long double`` (64-bit mantissa) and
prints the sum with ``%.17Lf``, trimming trailing zeros. That is why ``0.1 + 0.2`` is ``0.3`` in
Redis and not Python's ``0.30000000000000004``. Here each value is an exact ``Fraction``
rounded to the nearest long double (ties to even), so the digits match Redis's.
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction

_MANT_BITS = 64
_EMIN = -16382  # smallest normal binary exponent; below it the quantum stays fixed (subnormals)
_EMAX = 16383
_MAX_FINITE = Fraction((1 << _MANT_BITS) - 1) * Fraction(2) ** (_EMAX - _MANT_BITS + 1)
MAX_CHARS = 5 * 1024  # Redis's MAX_LONG_DOUBLE_CHARS: longer strings are not numbers

_DEC = re.compile(rb"([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?")
_HEX = re.compile(rb"([+-]?)0[xX]([0-9a-fA-F]*)(?:\.([0-9a-fA-F]*))?(?:[pP]([+-]?\d+))?")
_INF = re.compile(rb"([+-]?)(?:inf|infinity)", re.IGNORECASE)


class Infinite(Exception):
    """The value is, or rounds to, an infinity."""


def round_ld(x: Fraction) -> Fraction:
    """The long double nearest to ``x``; raises Infinite on overflow."""
    if x == 0:
        return x
    a = abs(x)
    n, d = a.numerator, a.denominator
    e = n.bit_length() - d.bit_length()  # 2**e <= a < 2**(e+2)
    if (n << max(-e, 0)) < (d << max(e, 0)):
        e -= 1
    q = max(e, _EMIN) - (_MANT_BITS - 1)  # exponent of the last mantissa bit
    scaled = a / Fraction(2) ** q
    m = round(scaled)  # Fraction rounds half to even
    r = Fraction(m) * Fraction(2) ** q
    if r > _MAX_FINITE:
        raise Infinite
    return r if x > 0 else -r


def parse_ld(s: bytes | bytearray) -> Fraction | None:
    """strtold as Redis's string2ld uses it; None when Redis says "not a valid float".

    Raises Infinite for "inf"/"infinity" (valid operands whose sum cannot be finite).
    """
    # string2ld also checks that strtold consumed every byte, so an embedded NUL is invalid.
    s = bytes(s)
    if not s or len(s) >= MAX_CHARS or b"\0" in s:
        return None
    m = _HEX.fullmatch(s)
    if m is not None and (m.group(2) or m.group(3)):
        sign, whole, frac, exp = m.groups()
        frac = frac or b""
        value = Fraction(int((whole + frac) or b"0", 16), 16 ** len(frac))
        e = _exponent(exp)
        if abs(e) > 40000:
            return _extreme(value)
        value *= Fraction(2) ** e
    else:
        if _INF.fullmatch(s):
            raise Infinite
        m = _DEC.fullmatch(s)
        if m is None or not (m.group(2) or m.group(3)):
            return None
        sign, whole, frac, exp = m.groups()
        # Decimal, not int(): up to 5 KB of digits is past int()'s 4300-digit str limit.
        value = Fraction(Decimal((whole or b"0").decode() + "." + (frac or b"").decode()))
        e = _exponent(exp)
        if abs(e) > 20000:  # far past the long double range either way, whatever the digits
            return _extreme(value)
        value *= Fraction(10) ** e
    if sign == b"-":
        value = -value
    try:
        r = round_ld(value)
    except Infinite:
        return None  # strtold: ERANGE with HUGE_VAL
    if r == 0 and value != 0:
        return None  # strtold: ERANGE underflow to zero
    return r


def _exponent(exp: bytes | None) -> int:
    """The exponent's value, clamped: it may have thousands of (leading zero) digits."""
    if not exp:
        return 0
    negative = exp[:1] == b"-"
    digits = exp.lstrip(b"+-").lstrip(b"0")
    value = int(digits) if 0 < len(digits) <= 9 else (10**9 if digits else 0)
    return -value if negative else value


def _extreme(value: Fraction) -> Fraction | None:
    # Zero stays zero; anything else overflows or underflows, and both make string2ld fail.
    return value if value == 0 else None


def format_ld(x: Fraction) -> bytes:
    """``%.17Lf`` with trailing zeros (and a trailing dot) removed, "-0" printed as "0"."""
    neg = x < 0
    scaled = round(abs(x) * 10**17)
    # Via Decimal: str() of an int refuses more than 4300 digits, and LDBL_MAX has 4933.
    text = format(Decimal(scaled), "f").rjust(18, "0")
    whole, frac = text[:-17], text[-17:].rstrip("0")
    out = whole + ("." + frac if frac else "")
    if neg and out != "0":
        out = "-" + out
    return out.encode()
