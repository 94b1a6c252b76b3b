"""Executor: every command, option and error, with a fixed clock (Redis 7.0 texts)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardgate.commands import COMMANDS
from shardgate.errors import CommandError
from shardgate.resp import SimpleString, encode_reply
from storenode.args import parse_cursor, parse_ll
from storenode.executor import Executor
from storenode.glob import matcher
from storenode.keyspace import EvictionPolicy, Keyspace
from storenode.longdouble import format_ld, parse_ld, round_ld

NOW = 1_700_000_000_000
LLONG_MAX = 2**63 - 1
LLONG_MIN = -(2**63)


class Err(str):
    """An error reply, as the text after the dash."""


@pytest.fixture
def ex() -> Executor:
    return Executor(Keyspace(seed=1))


def run(ex: Executor, *args: bytes | str | int, now: int = NOW) -> object:
    argv = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    try:
        return ex.execute(argv, now)
    except CommandError as exc:
        return Err(exc.message)


OK = SimpleString("OK")
SYNTAX = Err("ERR syntax error")
NOT_INT = Err("ERR value is not an integer or out of range")


def as_list(reply: object) -> list[bytes]:
    assert isinstance(reply, list)
    return reply


def expire_err(cmd: str) -> Err:
    return Err(f"ERR invalid expire time in '{cmd}' command")


# --- dispatch ------------------------------------------------------------------------------


def test_handles_exactly_the_string_generic_and_keyspace_server_commands(ex: Executor) -> None:
    wanted = {name for name, spec in COMMANDS.items() if spec.group in ("string", "generic")}
    wanted |= {"dbsize", "flushdb", "flushall", "memory"}
    assert ex.command_names == wanted


def test_command_names_are_case_insensitive(ex: Executor) -> None:
    assert run(ex, "SeT", "k", "v") == OK
    assert run(ex, "gEt", "k") == b"v"
    assert run(ex, "GET", "k") == b"v"


def test_unknown_command(ex: Executor) -> None:
    assert run(ex, "lpush", "a", "b") == Err(
        "ERR unknown command 'lpush', with args beginning with: 'a' 'b' "
    )


def test_replies_encode(ex: Executor) -> None:
    assert encode_reply(run(ex, "SET", "k", "v")) == b"+OK\r\n"
    assert encode_reply(run(ex, "GET", "k")) == b"$1\r\nv\r\n"
    assert encode_reply(run(ex, "GET", "nope")) == b"$-1\r\n"
    assert encode_reply(run(ex, "TYPE", "k")) == b"+string\r\n"


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


# --- generic key commands ------------------------------------------------------------------


def test_del_unlink_exists_touch_type(ex: Executor) -> None:
    run(ex, "MSET", "a", "1", "b", "2", "c", "3")
    assert run(ex, "EXISTS", "a", "a", "nope") == 2
    assert run(ex, "TOUCH", "a", "nope", "b") == 2
    assert run(ex, "TYPE", "a") == SimpleString("string")
    assert run(ex, "TYPE", "nope") == SimpleString("none")
    assert run(ex, "DEL", "a", "nope", "a") == 1
    assert run(ex, "UNLINK", "b", "c") == 2
    assert run(ex, "DBSIZE") == 0


def test_del_does_not_count_an_expired_key(ex: Executor) -> None:
    run(ex, "SET", "k", "v", "PX", "10")
    assert run(ex, "DEL", "k", now=NOW + 11) == 0


def test_expire_family(ex: Executor) -> None:
    run(ex, "SET", "k", "v")
    assert run(ex, "EXPIRE", "k", "100") == 1
    assert run(ex, "TTL", "k") == 100
    assert run(ex, "PEXPIRE", "k", "5000") == 1
    assert run(ex, "PTTL", "k") == 5000
    assert run(ex, "EXPIREAT", "k", str(NOW // 1000 + 60)) == 1
    assert run(ex, "EXPIRETIME", "k") == NOW // 1000 + 60
    assert run(ex, "PEXPIREAT", "k", str(NOW + 777)) == 1
    assert run(ex, "PEXPIRETIME", "k") == NOW + 777
    assert run(ex, "EXPIRE", "missing", "100") == 0


@pytest.mark.parametrize(
    ("cmd", "value"),
    [("EXPIRE", "0"), ("EXPIRE", "-10"), ("PEXPIRE", "-1"), ("EXPIREAT", "1"), ("PEXPIREAT", "5")],
)
def test_expire_in_the_past_deletes(ex: Executor, cmd: str, value: str) -> None:
    deleted: list[tuple[bytes, str]] = []
    ex.ks.on_delete = lambda key, why: deleted.append((key, why))
    run(ex, "SET", "k", "v")
    assert run(ex, cmd, "k", value) == 1
    assert run(ex, "EXISTS", "k") == 0
    assert deleted == []  # a DEL by the user, not an expiry the keyspace decided


def test_expire_nx_xx_gt_lt(ex: Executor) -> None:
    run(ex, "SET", "k", "v")
    assert run(ex, "EXPIRE", "k", "100", "XX") == 0
    assert run(ex, "EXPIRE", "k", "100", "GT") == 0  # no TTL counts as infinite
    assert run(ex, "EXPIRE", "k", "100", "LT") == 1
    assert run(ex, "EXPIRE", "k", "200", "NX") == 0
    assert run(ex, "EXPIRE", "k", "200", "XX") == 1
    assert run(ex, "EXPIRE", "k", "100", "GT") == 0
    assert run(ex, "EXPIRE", "k", "300", "gt") == 1
    assert run(ex, "EXPIRE", "k", "400", "LT") == 0
    assert run(ex, "EXPIRE", "k", "50", "lt") == 1
    assert run(ex, "TTL", "k") == 50
    assert run(ex, "EXPIRE", "k", "60", "GT", "XX") == 1
    run(ex, "PERSIST", "k")
    assert run(ex, "EXPIRE", "k", "10", "NX") == 1


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (["NX", "XX"], "ERR NX and XX, GT or LT options at the same time are not compatible"),
        (["NX", "GT"], "ERR NX and XX, GT or LT options at the same time are not compatible"),
        (["LT", "NX"], "ERR NX and XX, GT or LT options at the same time are not compatible"),
        (["GT", "LT"], "ERR GT and LT options at the same time are not compatible"),
        (["FOO"], "ERR Unsupported option FOO"),
    ],
)
def test_expire_option_errors(ex: Executor, options: list[str], error: str) -> None:
    run(ex, "SET", "k", "v")
    assert run(ex, "EXPIRE", "k", "10", *options) == Err(error)
    assert run(ex, "EXPIRE", "missing", "10", *options) == Err(error)


@pytest.mark.parametrize(
    ("cmd", "value"),
    [
        ("EXPIRE", str(LLONG_MAX)),
        ("EXPIRE", str(LLONG_MIN)),
        ("EXPIRE", str(LLONG_MAX // 1000 + 1)),
        ("PEXPIRE", str(LLONG_MAX)),
        ("EXPIREAT", str(LLONG_MAX)),
    ],
)
def test_expire_overflow(ex: Executor, cmd: str, value: str) -> None:
    run(ex, "SET", "k", "v")
    assert run(ex, cmd, "k", value) == expire_err(cmd.lower())
    assert run(ex, "TTL", "k") == -1


def test_expire_bad_number(ex: Executor) -> None:
    assert run(ex, "EXPIRE", "k", "1.5") == NOT_INT
    assert run(ex, "PEXPIREAT", "k", "") == NOT_INT


def test_pexpireat_llong_max_is_accepted(ex: Executor) -> None:
    run(ex, "SET", "k", "v")
    assert run(ex, "PEXPIREAT", "k", str(LLONG_MAX)) == 1
    assert run(ex, "PEXPIRETIME", "k") == LLONG_MAX


def test_ttl_family_special_values(ex: Executor) -> None:
    for cmd in ("TTL", "PTTL", "EXPIRETIME", "PEXPIRETIME"):
        assert run(ex, cmd, "missing") == -2
    run(ex, "SET", "k", "v")
    for cmd in ("TTL", "PTTL", "EXPIRETIME", "PEXPIRETIME"):
        assert run(ex, cmd, "k") == -1


def test_ttl_counts_down_and_the_key_expires_lazily(ex: Executor) -> None:
    run(ex, "SET", "k", "v", "EX", "10")
    assert run(ex, "TTL", "k", now=NOW + 4_400) == 6
    assert run(ex, "PTTL", "k", now=NOW + 9_999) == 1
    assert run(ex, "PTTL", "k", now=NOW + 10_000) == 0  # at the deadline: still there
    assert run(ex, "GET", "k", now=NOW + 10_001) is None
    assert ex.ks.stats.expired_keys == 1


def test_persist(ex: Executor) -> None:
    assert run(ex, "PERSIST", "missing") == 0
    run(ex, "SET", "k", "v")
    assert run(ex, "PERSIST", "k") == 0
    run(ex, "EXPIRE", "k", "100")
    assert run(ex, "PERSIST", "k") == 1
    assert run(ex, "TTL", "k") == -1


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


# --- iteration and the keyspace-wide commands ----------------------------------------------


def test_keys_and_scan(ex: Executor) -> None:
    run(ex, "MSET", "user:1", "a", "user:2", "b", "admin", "c")
    assert sorted(as_list(run(ex, "KEYS", "*"))) == [b"admin", b"user:1", b"user:2"]
    assert sorted(as_list(run(ex, "KEYS", "user:?"))) == [b"user:1", b"user:2"]
    seen: list[bytes] = []
    cursor = b"0"
    while True:
        reply = run(ex, "SCAN", cursor, "MATCH", "user:*", "COUNT", "1")
        assert isinstance(reply, list)
        cursor, batch = reply
        seen.extend(batch)
        if cursor == b"0":
            break
    assert sorted(seen) == [b"user:1", b"user:2"]
    assert run(ex, "SCAN", "0", "TYPE", "string", "COUNT", "100")[1] != []  # type: ignore[index]
    assert run(ex, "SCAN", "0", "TYPE", "hash", "COUNT", "100") == [b"0", []]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["abc"], "ERR invalid cursor"),
        (["1.5"], "ERR invalid cursor"),
        ([" 1"], "ERR invalid cursor"),
        (["+"], "ERR invalid cursor"),
        (["0", "COUNT", "0"], "ERR syntax error"),
        (["0", "COUNT", "-1"], "ERR syntax error"),
        (["0", "COUNT", "x"], "ERR value is not an integer or out of range"),
        (["0", "MATCH"], "ERR syntax error"),
        (["0", "BOGUS", "x"], "ERR syntax error"),
    ],
)
def test_scan_errors(ex: Executor, args: list[str], error: str) -> None:
    assert run(ex, "SCAN", *args) == Err(error)


def test_scan_cursor_parsing_like_strtoul() -> None:
    assert parse_cursor(b"0") == 0
    assert parse_cursor(b"") == 0
    assert parse_cursor(b"+7") == 7
    assert parse_cursor(b"-1") == 2**64 - 1
    with pytest.raises(CommandError):
        parse_cursor(b"18446744073709551616")


def test_randomkey_dbsize_flush(ex: Executor) -> None:
    assert run(ex, "RANDOMKEY") is None
    run(ex, "SET", "only", "v")
    assert run(ex, "RANDOMKEY") == b"only"
    assert run(ex, "DBSIZE") == 1
    assert run(ex, "FLUSHDB", "BOGUS") == SYNTAX
    assert run(ex, "FLUSHDB", "SYNC", "ASYNC") == SYNTAX
    assert run(ex, "FLUSHALL", "async") == OK
    assert run(ex, "DBSIZE") == 0
    run(ex, "SET", "k", "v")
    assert run(ex, "FLUSHDB") == OK
    assert run(ex, "DBSIZE") == 0


def test_memory(ex: Executor) -> None:
    run(ex, "SET", "k", "x" * 100)
    usage = run(ex, "MEMORY", "USAGE", "k")
    assert isinstance(usage, int) and usage > 100
    assert run(ex, "MEMORY", "usage", "k", "SAMPLES", "0") == usage
    assert run(ex, "MEMORY", "USAGE", "missing") is None
    assert run(ex, "MEMORY", "USAGE", "k", "SAMPLES", "-1") == SYNTAX
    assert run(ex, "MEMORY", "USAGE", "k", "SAMPLES", "x") == NOT_INT
    assert run(ex, "MEMORY", "USAGE", "k", "BOGUS") == SYNTAX
    assert run(ex, "MEMORY", "USAGE") == Err(
        "ERR wrong number of arguments for 'memory|usage' command"
    )
    help_lines = run(ex, "MEMORY", "HELP")
    assert isinstance(help_lines, list) and help_lines[0].startswith("MEMORY <subcommand>")
    assert run(ex, "MEMORY", "DOCTOR") == Err("ERR unknown subcommand 'DOCTOR'. Try MEMORY HELP.")


def test_eviction_through_the_executor(ex: Executor) -> None:
    ks = ex.ks
    ks.policy = EvictionPolicy.ALLKEYS_LRU
    for i in range(100):
        run(ex, "SET", f"k{i}", "x" * 100, now=NOW + i)
    ks.maxmemory = ks.used_memory // 2
    assert ks.evict_if_needed() is True
    assert run(ex, "DBSIZE") < 100  # type: ignore[operator]
    assert run(ex, "GET", "k99") is not None


# --- helpers: integers, long doubles, glob -------------------------------------------------


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
