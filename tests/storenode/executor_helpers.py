"""Shared helpers for the executor tests: a fixed clock and replies as comparable values."""

from __future__ import annotations

from shardgate.errors import CommandError
from shardgate.resp import SimpleString
from storenode.executor import Executor

NOW = 1_700_000_000_000
LLONG_MAX = 2**63 - 1
LLONG_MIN = -(2**63)


class Err(str):
    """An error reply, as the text after the dash."""


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
