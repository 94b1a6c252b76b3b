"""Replay differential_script.txt against redis-server 7.0 and the store node; compare replies.

Each line runs on both sides one after the other, so time-dependent replies (TTL right after
EX 100) see the same clock. Replies are compared as raw RESP bytes, so reply *types* must match
too (a status "+OK" is not a bulk "OK"). Two store-node variants are checked: the real server
(``python -m shardgate node``) over a socket, and the pure Executor in-process, behind the same
arity and unknown-command checks the server shell makes.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shardgate.commands import lookup
from shardgate.errors import CommandError, unknown_command, wrong_arity
from shardgate.resp import encode_command, encode_reply, reply_end, split_inline
from storenode.executor import Executor
from storenode.keyspace import Keyspace
from tests.procs import free_port

SCRIPT = Path(__file__).with_name("differential_script.txt")
REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 15.0
IO_TIMEOUT = 5.0

Call = Callable[[list[bytes]], bytes]


def load_script() -> list[tuple[int, str, list[str], list[bytes]]]:
    """(line number, directive or "", directive arguments, command args) per script line."""
    steps = []
    for lineno, raw in enumerate(SCRIPT.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        directive, extra = "", []
        if line.startswith("@"):
            head, _, rest = line.partition(" ")
            directive = head[1:]
            if directive == "approx":
                tol, _, rest = rest.partition(" ")
                extra = [tol]
            elif directive == "sleep":
                extra, rest = [rest], ""
            line = rest
        steps.append((lineno, directive, extra, split_inline(line.encode())))
    return steps


# --- a tiny RESP2 reply parser, for the directives that compare parsed values ---------------


def parse_reply(buf: bytes, pos: int = 0) -> tuple[object, int]:
    kind = buf[pos : pos + 1]
    nl = buf.index(b"\r\n", pos)
    head = buf[pos + 1 : nl]
    if kind in (b"+", b"-"):
        return (kind, head), nl + 2
    if kind == b":":
        return int(head), nl + 2
    if kind == b"$":
        size = int(head)
        if size < 0:
            return None, nl + 2
        return buf[nl + 2 : nl + 2 + size], nl + 4 + size
    if kind == b"*":
        items = []
        pos = nl + 2
        for _ in range(int(head)):
            item, pos = parse_reply(buf, pos)
            items.append(item)
        return items, pos
    raise AssertionError(f"unexpected reply {buf!r}")


# --- backends -------------------------------------------------------------------------------


class Connection:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)

    def call(self, args: list[bytes]) -> bytes:
        self.sock.sendall(encode_command(args))
        buf = b""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
            end = reply_end(buf)
            if end >= 0:
                assert end == len(buf), f"extra bytes after reply: {buf!r}"
                return buf

    def close(self) -> None:
        self.sock.close()


def in_process() -> Call:
    """The Executor behind the same checks the server shell makes before calling it."""
    executor = Executor(Keyspace(seed=1))

    def call(args: list[bytes]) -> bytes:
        spec = lookup(args[0])
        try:
            if spec is None:
                raise unknown_command(args)
            if not spec.arity_ok(len(args)):
                raise wrong_arity(spec.name)
            return encode_reply(executor.execute(args, time.time_ns() // 1_000_000))
        except CommandError as exc:
            return exc.reply

    return call


@contextlib.contextmanager
def server(argv: list[str], port: int) -> Iterator[Connection]:
    proc = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    conn: Connection | None = None
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while conn is None:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"{argv[0]} exited with {proc.returncode}: {err[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{argv} did not start listening on {port}")
            try:
                conn = Connection(port)
            except OSError:
                time.sleep(0.05)
        yield conn
    finally:
        if conn is not None:
            conn.close()
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stderr:
            proc.stderr.close()


def redis_server() -> contextlib.AbstractContextManager[Connection]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not on PATH")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    return server([*argv, "no", "--daemonize", "no"], port)


def store_node() -> contextlib.AbstractContextManager[Connection]:
    port = free_port()
    argv = [sys.executable, "-m", "shardgate", "node", "--port", str(port)]
    return server([*argv, "--maxmemory", "0", "--maxmemory-policy", "noeviction"], port)


# --- the replay -----------------------------------------------------------------------------


def scan_all(call: Call, options: list[bytes]) -> list[bytes]:
    keys: list[bytes] = []
    cursor = b"0"
    for _ in range(10_000):
        reply, _ = parse_reply(call([b"SCAN", cursor, *options]))
        assert isinstance(reply, list), reply
        cursor, batch = reply
        keys.extend(batch)
        if cursor == b"0":
            return sorted(set(keys))
    raise AssertionError("SCAN did not finish")


def normalise(directive: str, extra: list[str], reply: bytes) -> object:
    if directive == "sorted":
        value, _ = parse_reply(reply)
        return sorted(value) if isinstance(value, list) else value
    if directive == "type":
        return reply[:1]
    return reply


def replay(expected: Call, actual: Call) -> int:
    """Run every step on both sides; return the number of commands compared."""
    mismatches = []
    compared = 0
    for lineno, directive, extra, args in load_script():
        if directive == "sleep":
            time.sleep(int(extra[0]) / 1000)
            continue
        if directive == "scanall":
            want: object = scan_all(expected, args)
            got: object = scan_all(actual, args)
        elif directive == "unknown":
            expected(args)
            want = unknown_command(args).reply
            got = actual(args)
        else:
            want = normalise(directive, extra, expected(args))
            got = normalise(directive, extra, actual(args))
            if directive == "approx" and want != got:
                a, _ = parse_reply(want)  # type: ignore[arg-type]
                b, _ = parse_reply(got)  # type: ignore[arg-type]
                if isinstance(a, int) and isinstance(b, int) and abs(a - b) <= int(extra[0]):
                    got = want
        compared += 1
        if want != got:
            mismatches.append(f"line {lineno}: {args!r}\n  redis: {want!r}\n  node:  {got!r}")
    assert not mismatches, f"{len(mismatches)} mismatches:\n" + "\n".join(mismatches)
    return compared


def test_script_is_long_enough() -> None:
    commands = [s for s in load_script() if s[1] != "sleep"]
    assert len(commands) >= 200


def test_against_executor_in_process() -> None:
    with redis_server() as redis:
        assert replay(redis.call, in_process()) >= 200


def test_against_store_node() -> None:
    with redis_server() as redis, store_node() as node:
        assert replay(redis.call, node.call) >= 200


# --- random command sequences ---------------------------------------------------------------

_FUZZ_COMMANDS = [
    "get", "set", "setnx", "setex", "psetex", "getset", "getdel", "getex", "mget", "mset",
    "msetnx", "incr", "decr", "incrby", "decrby", "incrbyfloat", "append", "strlen", "getrange",
    "setrange", "del", "unlink", "exists", "touch", "expire", "pexpire", "expireat", "pexpireat",
    "ttl", "pttl", "expiretime", "pexpiretime", "persist", "type", "dbsize", "memory",
]  # fmt: skip
_FUZZ_KEYS = [b"a", b"b", b"c", b""]
# No TTL short enough to run out during the test: expiry instants could fall between the two
# sides' executions of one command. Past absolute times (deletion at once) are fine.
_FUZZ_TOKENS = [
    b"0", b"-1", b"-100", b"7000000", b"1000000", b"4102444800", b"4102444800000", b"1700000000",
    b"9223372036854775807", b"-9223372036854775808", b"9223372036854775808",
    b"1.5", b"-0.5", b"1e3", b"abc", b"", b" 7", b"+7", b"07", b"inf", b"nan", b"0x10",
    b"3.0", b"5e-1", b".5", b"-.5e1", b"1e400", b"12345678901234567890", b"\x00",
    b"NX", b"XX", b"GT", b"LT", b"EX", b"PX", b"EXAT", b"PXAT", b"KEEPTTL", b"GET", b"PERSIST",
    b"nx", b"ex", b"SAMPLES", b"USAGE", b"HELP",
]  # fmt: skip
_TOLERANCE = {b"pttl": 50, b"pexpiretime": 50, b"ttl": 1, b"expiretime": 1}


def random_commands(seed: int, count: int) -> Iterator[list[bytes]]:
    rng = random.Random(seed)
    for _ in range(count):
        args = [rng.choice(_FUZZ_COMMANDS).encode()]
        for i in range(rng.randrange(6)):
            if i == 0 and rng.random() < 0.8:
                args.append(rng.choice(_FUZZ_KEYS))
            else:
                args.append(rng.choice(_FUZZ_TOKENS + _FUZZ_KEYS))
        yield args


def same_reply(args: list[bytes], want: bytes, got: bytes) -> bool:
    if want == got:
        return True
    if want[:1] == got[:1] == b":":
        if args[0] == b"memory":
            return True  # each server's own estimate
        tolerance = _TOLERANCE.get(args[0], 0)
        return abs(int(want[1:-2]) - int(got[1:-2])) <= tolerance
    return False


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_commands_against_executor_in_process(seed: int) -> None:
    with redis_server() as redis:
        ours = in_process()
        redis.call([b"FLUSHALL"])
        mismatches = []
        for args in random_commands(seed, 3000):
            want, got = redis.call(args), ours(args)
            if not same_reply(args, want, got):
                mismatches.append(f"{args!r}\n  redis: {want!r}\n  node:  {got!r}")
        assert not mismatches, f"{len(mismatches)} mismatches:\n" + "\n".join(mismatches[:20])
