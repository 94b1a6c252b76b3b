"""String commands: GET/SET and their options, counters, byte ranges (Redis 7.0 texts)."""

from __future__ import annotations

import pytest

from storenode.executor import Executor
from storenode.keyspace import Keyspace
from tests.storenode.executor_helpers import (
    LLONG_MAX,
    LLONG_MIN,
    NOT_INT,
    NOW,
    OK,
    SYNTAX,
    Err,
    expire_err,
    run,
)


@pytest.fixture
def ex() -> Executor:
    return Executor(Keyspace(seed=1))


# --- GET / SET -----------------------------------------------------------------------------


def test_get_set_basics(ex: Executor) -> None:
    assert run(ex, "GET", "k") is None
    assert run(ex, "SET", "k", "v") == OK
    assert run(ex, "GET", "k") == b"v"
    assert run(ex, "SET", "k", b"") == OK
    assert run(ex, "GET", "k") == b""
    assert run(ex, "SET", b"", b"\x00\r\n") == OK
    assert run(ex, "GET", b"") == b"\x00\r\n"


def test_set_nx_xx_get(ex: Executor) -> None:
    assert run(ex, "SET", "k", "1", "NX") == OK
    assert run(ex, "SET", "k", "2", "NX") is None
    assert run(ex, "SET", "k", "3", "XX") == OK
    assert run(ex, "SET", "missing", "3", "XX") is None
    assert run(ex, "GET", "missing") is None
    assert run(ex, "SET", "k", "4", "GET") == b"3"
    assert run(ex, "SET", "new", "4", "GET") is None
    assert run(ex, "SET", "k", "5", "NX", "GET") == b"4"  # aborted, still replies the old value
    assert run(ex, "GET", "k") == b"4"
    assert run(ex, "SET", "other", "5", "XX", "GET") is None
    assert run(ex, "GET", "other") is None


@pytest.mark.parametrize(
    "options",
    [
        ["NX", "XX"],
        ["XX", "NX"],
        ["EX", "10", "PX", "10"],
        ["PX", "10", "EX", "10"],
        ["EX", "10", "EXAT", "10"],
        ["PXAT", "10", "PX", "10"],
        ["EX", "10", "KEEPTTL"],
        ["KEEPTTL", "PX", "10"],
        ["EX"],
        ["PXAT"],
        ["PERSIST"],
        ["BOGUS"],
        ["NX", "BOGUS"],
    ],
)
def test_set_option_conflicts_are_syntax_errors(ex: Executor, options: list[str]) -> None:
    assert run(ex, "SET", "k", "v", *options) == SYNTAX
    assert run(ex, "GET", "k") is None


def test_set_same_expire_option_twice_last_wins(ex: Executor) -> None:
    assert run(ex, "SET", "k", "v", "EX", "10", "EX", "20") == OK
    assert run(ex, "TTL", "k") == 20


@pytest.mark.parametrize(
    ("unit", "value", "reply"),
    [
        ("EX", "0", "expire"),
        ("EX", "-1", "expire"),
        ("PX", "0", "expire"),
        ("PX", "-100", "expire"),
        ("EXAT", "0", "expire"),
        ("PXAT", "-1", "expire"),
        ("EX", str(LLONG_MAX // 1000 + 1), "expire"),
        ("PX", str(LLONG_MAX), "expire"),  # overflows once now is added
        ("EX", "abc", "int"),
        ("EX", "1.5", "int"),
        ("EX", "99999999999999999999", "int"),
        ("PX", " 5", "int"),
    ],
)
def test_set_invalid_expire_times(ex: Executor, unit: str, value: str, reply: str) -> None:
    want = expire_err("set") if reply == "expire" else NOT_INT
    assert run(ex, "SET", "k", "v", unit, value) == want
    assert run(ex, "GET", "k") is None


def test_set_relative_and_absolute_expiry(ex: Executor) -> None:
    run(ex, "SET", "k", "v", "EX", "100")
    assert run(ex, "PTTL", "k") == 100_000
    run(ex, "SET", "k", "v", "PX", "1500")
    assert run(ex, "PTTL", "k") == 1500
    assert run(ex, "TTL", "k") == 2  # rounded like Redis: (ms + 500) / 1000
    run(ex, "SET", "k", "v", "EXAT", str(NOW // 1000 + 50))
    assert run(ex, "EXPIRETIME", "k") == NOW // 1000 + 50
    run(ex, "SET", "k", "v", "PXAT", str(NOW + 1234))
    assert run(ex, "PEXPIRETIME", "k") == NOW + 1234
    assert run(ex, "EXPIRETIME", "k") == (NOW + 1234 + 500) // 1000
    # huge: accepted while now + ms fits in a signed 64-bit integer
    assert run(ex, "SET", "huge", "v", "EX", str(LLONG_MAX // 1000)) == expire_err("set")
    biggest = (LLONG_MAX - NOW) // 1000
    assert run(ex, "SET", "huge", "v", "EX", str(biggest)) == OK
    assert run(ex, "TTL", "huge") == biggest


def test_set_exat_in_the_past_is_accepted_and_the_key_is_gone(ex: Executor) -> None:
    assert run(ex, "SET", "k", "v", "EXAT", "1") == OK
    assert run(ex, "GET", "k") is None
    assert run(ex, "EXISTS", "k") == 0
    assert run(ex, "TTL", "k") == -2


def test_set_removes_ttl_unless_keepttl(ex: Executor) -> None:
    run(ex, "SET", "k", "v", "EX", "100")
    run(ex, "SET", "k", "v2", "KEEPTTL")
    assert run(ex, "TTL", "k") == 100
    assert run(ex, "GET", "k") == b"v2"
    run(ex, "SET", "k", "v3")
    assert run(ex, "TTL", "k") == -1
    run(ex, "SET", "new", "v", "KEEPTTL")
    assert run(ex, "TTL", "new") == -1


def test_set_get_with_expiry(ex: Executor) -> None:
    run(ex, "SET", "k", "old")
    assert run(ex, "SET", "k", "new", "GET", "EX", "100") == b"old"
    assert run(ex, "TTL", "k") == 100


def test_setnx_setex_psetex(ex: Executor) -> None:
    assert run(ex, "SETNX", "k", "1") == 1
    assert run(ex, "SETNX", "k", "2") == 0
    assert run(ex, "GET", "k") == b"1"
    assert run(ex, "SETEX", "s", "100", "v") == OK
    assert run(ex, "TTL", "s") == 100
    assert run(ex, "SETEX", "s", "0", "v") == expire_err("setex")
    assert run(ex, "SETEX", "s", "-5", "v") == expire_err("setex")
    assert run(ex, "SETEX", "s", "x", "v") == NOT_INT
    assert run(ex, "PSETEX", "p", "1500", "v") == OK
    assert run(ex, "PTTL", "p") == 1500
    assert run(ex, "PSETEX", "p", "0", "v") == expire_err("psetex")


def test_getset_getdel(ex: Executor) -> None:
    assert run(ex, "GETSET", "k", "1") is None
    assert run(ex, "GETSET", "k", "2") == b"1"
    run(ex, "EXPIRE", "k", "100")
    assert run(ex, "GETSET", "k", "3") == b"2"
    assert run(ex, "TTL", "k") == -1  # GETSET drops the TTL
    assert run(ex, "GETDEL", "k") == b"3"
    assert run(ex, "GETDEL", "k") is None
    assert run(ex, "EXISTS", "k") == 0


def test_getex(ex: Executor) -> None:
    run(ex, "SET", "k", "v")
    assert run(ex, "GETEX", "k") == b"v"
    assert run(ex, "TTL", "k") == -1
    assert run(ex, "GETEX", "k", "EX", "100") == b"v"
    assert run(ex, "TTL", "k") == 100
    assert run(ex, "GETEX", "k", "PX", "2000") == b"v"
    assert run(ex, "PTTL", "k") == 2000
    assert run(ex, "GETEX", "k", "PERSIST") == b"v"
    assert run(ex, "TTL", "k") == -1
    assert run(ex, "GETEX", "k", "EXAT", str(NOW // 1000 + 9)) == b"v"
    assert run(ex, "EXPIRETIME", "k") == NOW // 1000 + 9
    assert run(ex, "GETEX", "k", "PXAT", str(NOW + 99)) == b"v"
    assert run(ex, "PEXPIRETIME", "k") == NOW + 99
    assert run(ex, "GETEX", "k", "PXAT", str(NOW)) == b"v"  # reached: deleted
    assert run(ex, "EXISTS", "k") == 0


def test_getex_errors(ex: Executor) -> None:
    run(ex, "SET", "k", "v")
    assert run(ex, "GETEX", "k", "EX", "0") == expire_err("getex")
    assert run(ex, "GETEX", "k", "PX", "-1") == expire_err("getex")
    assert run(ex, "GETEX", "k", "EX", "abc") == NOT_INT
    for bad in (["EX", "1", "PX", "1"], ["PERSIST", "EX", "1"], ["EX", "1", "PERSIST"]):
        assert run(ex, "GETEX", "k", *bad) == SYNTAX
    for bad in (["NX"], ["XX"], ["GET"], ["KEEPTTL"], ["EX"], ["BOGUS"]):
        assert run(ex, "GETEX", "k", *bad) == SYNTAX
    # the expire value is only checked once the key is found
    assert run(ex, "GETEX", "missing", "EX", "0") is None
    assert run(ex, "TTL", "k") == -1


def test_mget_mset_msetnx(ex: Executor) -> None:
    assert run(ex, "MSET", "a", "1", "b", "2") == OK
    assert run(ex, "MGET", "a", "b", "c") == [b"1", b"2", None]
    assert run(ex, "MSET", "a", "1", "b") == Err("ERR wrong number of arguments for 'mset' command")
    assert run(ex, "MSETNX", "c", "3", "d", "4") == 1
    assert run(ex, "MSETNX", "d", "x", "e", "y") == 0
    assert run(ex, "MGET", "d", "e") == [b"4", None]
    assert run(ex, "MSETNX", "a", "1", "b") == Err(
        "ERR wrong number of arguments for 'msetnx' command"
    )
    run(ex, "EXPIRE", "a", "100")
    run(ex, "MSET", "a", "9")
    assert run(ex, "TTL", "a") == -1


# --- counters ------------------------------------------------------------------------------


def test_incr_family(ex: Executor) -> None:
    assert run(ex, "INCR", "n") == 1
    assert run(ex, "INCRBY", "n", "10") == 11
    assert run(ex, "DECR", "n") == 10
    assert run(ex, "DECRBY", "n", "20") == -10
    assert run(ex, "INCRBY", "n", "-5") == -15
    assert run(ex, "GET", "n") == b"-15"
    assert run(ex, "DECR", "fresh") == -1


def test_incr_keeps_ttl(ex: Executor) -> None:
    run(ex, "SET", "n", "1", "EX", "100")
    assert run(ex, "INCR", "n") == 2
    assert run(ex, "TTL", "n") == 100


def test_incr_overflow(ex: Executor) -> None:
    overflow = Err("ERR increment or decrement would overflow")
    run(ex, "SET", "max", str(LLONG_MAX))
    assert run(ex, "INCR", "max") == overflow
    assert run(ex, "INCRBY", "max", "0") == LLONG_MAX
    run(ex, "SET", "min", str(LLONG_MIN))
    assert run(ex, "DECR", "min") == overflow
    assert run(ex, "INCRBY", "min", str(LLONG_MIN)) == overflow
    assert run(ex, "DECRBY", "x", str(LLONG_MIN)) == Err("ERR decrement would overflow")
    assert run(ex, "GET", "max") == str(LLONG_MAX).encode()


@pytest.mark.parametrize(
    "value", ["abc", " 1", "1 ", "+1", "01", "-0", "1.5", "", "9223372036854775808", "1e3"]
)
def test_incr_rejects_what_redis_rejects(ex: Executor, value: str) -> None:
    run(ex, "SET", "n", value)
    assert run(ex, "INCR", "n") == NOT_INT
    assert run(ex, "INCRBY", "other", value) == NOT_INT


def test_incrbyfloat(ex: Executor) -> None:
    assert run(ex, "INCRBYFLOAT", "f", "0.1") == b"0.1"
    assert run(ex, "INCRBYFLOAT", "f", "0.2") == b"0.3"  # long double arithmetic, as Redis
    run(ex, "SET", "f", "10.5")
    assert run(ex, "INCRBYFLOAT", "f", "0.1") == b"10.6"
    assert run(ex, "INCRBYFLOAT", "f", "-10.6") == b"0"
    assert run(ex, "INCRBYFLOAT", "f", "5.0e3") == b"5000"
    run(ex, "SET", "f", "3")
    assert run(ex, "INCRBYFLOAT", "f", "1.5e-20") == b"3"
    assert run(ex, "GET", "f") == b"3"
    run(ex, "SET", "t", "1", "EX", "100")
    run(ex, "INCRBYFLOAT", "t", "1")
    assert run(ex, "TTL", "t") == 100


@pytest.mark.parametrize("incr", ["abc", "", " 1", "1 ", "nan", "1e5000", "0x", "."])
def test_incrbyfloat_invalid(ex: Executor, incr: str) -> None:
    assert run(ex, "INCRBYFLOAT", "f", incr) == Err("ERR value is not a valid float")


def test_incrbyfloat_infinity(ex: Executor) -> None:
    err = Err("ERR increment would produce NaN or Infinity")
    assert run(ex, "INCRBYFLOAT", "f", "inf") == err
    assert run(ex, "INCRBYFLOAT", "f", "-Infinity") == err
    run(ex, "SET", "f", "notanumber")
    assert run(ex, "INCRBYFLOAT", "f", "1") == Err("ERR value is not a valid float")


# --- byte ranges ---------------------------------------------------------------------------


def test_append_strlen(ex: Executor) -> None:
    assert run(ex, "APPEND", "k", "hello") == 5
    assert run(ex, "APPEND", "k", " world") == 11
    assert run(ex, "APPEND", "k", "!") == 12
    assert run(ex, "GET", "k") == b"hello world!"
    assert run(ex, "STRLEN", "k") == 12
    assert run(ex, "STRLEN", "missing") == 0
    assert isinstance(run(ex, "GET", "k"), bytes)
    run(ex, "SET", "t", "v", "EX", "100")
    run(ex, "APPEND", "t", "w")
    assert run(ex, "TTL", "t") == 100


def test_append_and_setrange_respect_proto_max_bulk_len(ex: Executor) -> None:
    ex.proto_max_bulk_len = 10
    run(ex, "SET", "k", "12345")
    too_big = Err("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
    assert run(ex, "APPEND", "k", "678901") == too_big
    assert run(ex, "SETRANGE", "k", "8", "abc") == too_big
    assert run(ex, "SETRANGE", "new", "10", "a") == too_big
    assert run(ex, "GET", "k") == b"12345"


def test_setrange_default_limit_is_512mb_and_checked_before_allocating(ex: Executor) -> None:
    too_big = Err("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
    assert run(ex, "SETRANGE", "k", str(512 * 1024 * 1024), "x") == too_big
    assert run(ex, "SETRANGE", "k", str(LLONG_MAX), "x") == too_big


@pytest.mark.parametrize(
    ("start", "end", "want"),
    [
        (0, 4, b"hello"),
        (-5, -1, b"world"),
        (6, 100, b"world"),
        (-100, 2, b"hel"),
        (5, 2, b""),
        (-1, -5, b""),
        (0, -1, b"hello world"),
        (100, 200, b""),
        (-1, -1, b"d"),
        (0, 0, b"h"),
    ],
)
def test_getrange(ex: Executor, start: int, end: int, want: bytes) -> None:
    run(ex, "SET", "k", "hello world")
    assert run(ex, "GETRANGE", "k", start, end) == want


def test_getrange_edges(ex: Executor) -> None:
    assert run(ex, "GETRANGE", "missing", 0, -1) == b""
    run(ex, "SET", "e", "")
    assert run(ex, "GETRANGE", "e", 0, -1) == b""
    assert run(ex, "GETRANGE", "e", "a", 1) == NOT_INT
    assert run(ex, "GETRANGE", "e", 0, "b") == NOT_INT


def test_setrange(ex: Executor) -> None:
    run(ex, "SET", "k", "hello world")
    assert run(ex, "SETRANGE", "k", 6, "WORLD") == 11
    assert run(ex, "GET", "k") == b"hello WORLD"
    assert run(ex, "SETRANGE", "k", 13, "!") == 14
    assert run(ex, "GET", "k") == b"hello WORLD\x00\x00!"
    assert run(ex, "SETRANGE", "k", 0, "") == 14
    assert run(ex, "SETRANGE", "new", 3, "abc") == 6
    assert run(ex, "GET", "new") == b"\x00\x00\x00abc"
    assert run(ex, "SETRANGE", "empty", 0, "") == 0
    assert run(ex, "EXISTS", "empty") == 0
    assert run(ex, "SETRANGE", "k", -1, "x") == Err("ERR offset is out of range")
    assert run(ex, "SETRANGE", "k", "x", "x") == NOT_INT


def test_used_memory_follows_append_and_setrange(ex: Executor) -> None:
    ks = ex.ks
    run(ex, "SET", "k", "x" * 100)
    before = ks._mem
    for _ in range(50):
        run(ex, "APPEND", "k", "y" * 100)
    assert ks._mem > before + 4000
    assert ks._mem == ks.record_size(b"k", ks._map[b"k"])
    run(ex, "SETRANGE", "k", 10_000, "z")
    assert ks._mem == ks.record_size(b"k", ks._map[b"k"])
    assert ks._mem > before + 10_000
    run(ex, "DEL", "k")
    assert ks._mem == 0


def test_a_grown_value_becomes_bytes_again_when_read(ex: Executor) -> None:
    run(ex, "SET", "k", "abc")
    run(ex, "APPEND", "k", "def")
    assert isinstance(ex.ks._map[b"k"].value, bytearray)
    assert run(ex, "GET", "k") == b"abcdef"
    assert ex.ks._map[b"k"].value.__class__ is bytes
    assert ex.ks._mem == ex.ks.record_size(b"k", ex.ks._map[b"k"])
    run(ex, "SETRANGE", "k", 1, "X")
    assert run(ex, "MGET", "k") == [b"aXcdef"]
    assert ex.ks._map[b"k"].value.__class__ is bytes


def test_incrbyfloat_with_thousands_of_digits(ex: Executor) -> None:
    # Past int()'s 4300-digit str limit, which must not turn into an exception.
    ones = "1" * 4400
    reply = run(ex, "INCRBYFLOAT", "a", ones)
    assert isinstance(reply, bytes) and len(reply) == 4400
    assert reply.startswith(b"11111111111111111111263938166286")  # the long double, as Redis
    assert run(ex, "INCRBYFLOAT", "b", "0." + ones) == b"0.11111111111111111"
    big = run(ex, "INCRBYFLOAT", "c", "1.18973149535723176502e+4932")  # LDBL_MAX
    assert isinstance(big, bytes) and len(big) == 4933
    invalid = Err("ERR value is not a valid float")
    assert run(ex, "INCRBYFLOAT", "d", "1.18973149535723176508575932662800702e+4932") == invalid
    assert run(ex, "INCRBYFLOAT", "d", "1" * 5200) == invalid  # Redis's 5 KB limit
    assert run(ex, "INCRBYFLOAT", "e", "1e" + "0" * 5000 + "5") == b"100000"
    assert run(ex, "INCRBYFLOAT", "f", "1e" + "9" * 5000) == invalid
    assert run(ex, "INCRBYFLOAT", "g", "0e" + "9" * 5000) == b"0"
