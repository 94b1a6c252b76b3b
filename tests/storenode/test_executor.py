"""Executor: dispatch, replies, and the server commands it answers from the keyspace."""

from __future__ import annotations

import pytest

from shardgate.commands import COMMANDS
from shardgate.resp import encode_reply
from storenode.executor import Executor
from storenode.keyspace import EvictionPolicy, Keyspace
from tests.storenode.executor_helpers import (
    NOT_INT,
    NOW,
    OK,
    SYNTAX,
    Err,
    run,
)


@pytest.fixture
def ex() -> Executor:
    return Executor(Keyspace(seed=1))


# --- dispatch ------------------------------------------------------------------------------


# The data commands; the server shell answers the rest of the table (and WAIT).
DATA_COMMANDS = [
    "get",
    "set",
    "setnx",
    "setex",
    "psetex",
    "getset",
    "getdel",
    "getex",
    "mget",
    "mset",
    "msetnx",
    "incr",
    "decr",
    "incrby",
    "decrby",
    "incrbyfloat",
    "append",
    "strlen",
    "getrange",
    "setrange",
    "del",
    "unlink",
    "exists",
    "touch",
    "expire",
    "pexpire",
    "expireat",
    "pexpireat",
    "ttl",
    "pttl",
    "expiretime",
    "pexpiretime",
    "persist",
    "type",
    "scan",
    "keys",
    "randomkey",
    "dbsize",
    "flushdb",
    "flushall",
    "memory",
]


def test_handles_exactly_the_data_commands(ex: Executor) -> None:
    assert ex.command_names == set(DATA_COMMANDS)
    assert ex.command_names <= set(COMMANDS)  # all in the shared table (arity, flags, keys)


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


def test_flushall_async_is_lazy_and_sync_is_not(ex: Executor) -> None:
    for i in range(10):
        run(ex, "SET", f"k{i}", "v")
    assert run(ex, "FLUSHALL", "ASYNC") == OK
    assert run(ex, "DBSIZE") == 0
    assert ex.ks._lazyfree
    run(ex, "SET", "k", "v")
    assert run(ex, "FLUSHALL", "SYNC") == OK
    assert run(ex, "DBSIZE") == 0
    assert ex.ks._lazyfree  # the earlier lazy batch is still for the active cycle to free
    while ex.ks.active_expire_step(NOW):
        pass
    assert not ex.ks._lazyfree
