"""Generic key commands: DEL/EXISTS/TOUCH/TYPE, the EXPIRE and TTL families, KEYS and SCAN."""

from __future__ import annotations

import pytest

from shardgate.resp import SimpleString
from storenode.executor import Executor
from storenode.keyspace import Keyspace
from tests.storenode.executor_helpers import (
    LLONG_MAX,
    LLONG_MIN,
    NOT_INT,
    NOW,
    Err,
    as_list,
    expire_err,
    run,
)


@pytest.fixture
def ex() -> Executor:
    return Executor(Keyspace(seed=1))


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
