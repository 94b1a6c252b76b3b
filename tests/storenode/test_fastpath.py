"""The reactor's GET/SET fast path (storenode/fastpath.py) against the general path.

Two nodes get the same random byte stream, batch by batch: one answers every command through
``RequestParser`` → ``Node.execute`` (what a client task does), the other through the reactor's
read path, which tries the fast path first. Replies must be byte-identical and so must the state
after every batch: records (value, expiry, recency), counters, the replication stream. The mix
covers what the fast path must leave alone: options, lower-case and odd framings, frames cut
between batches, expired keys and TTLs, APPEND's bytearrays, eviction under a small maxmemory,
a replica's READONLY, a paused primary, replication, RESP3 and authentication.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

import pytest

import storenode.fastpath
import storenode.node
from shardgate.resp import ProtocolError, encode_command
from storenode import roles
from storenode.config import NodeConfig
from storenode.node import Node
from storenode.node_types import Deferred, PausedWrite
from storenode.reactor import Reactor
from storenode.roles import Role
from storenode.session import Session

START_MS = 1_700_000_000_000
WORLDS = 10
STEPS = 300  # per world


class Clock:
    def __init__(self) -> None:
        self.ms = START_MS

    def time_ns(self) -> int:
        return self.ms * 1_000_000


class FakeSock:
    """The reactor's view of a client socket: recv hands out one batch, send collects."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.inbox = b""
        self.sent: list[bytes] = []

    def fileno(self) -> int:
        return self.fd

    def recv(self, size: int) -> bytes:
        data, self.inbox = self.inbox, b""
        return data

    def send(self, data: bytes) -> int:
        self.sent.append(bytes(data))
        return len(data)

    def close(self) -> None:
        pass


class FakeNursery:
    def __init__(self) -> None:
        self.started: list[tuple[Any, ...]] = []

    def start_soon(self, fn: Any, *args: Any) -> None:
        self.started.append(args)


def new_node(seed: int) -> Node:
    node = Node(NodeConfig(port=0, maxmemory=0, requirepass="pw"))
    node.keyspace._rand = random.Random(seed).random  # the same eviction samples on both sides
    return node


def new_session(node: Node, cid: int) -> Session:
    session = Session(
        client_id=cid, addr="t", laddr="t", fd=0, now=0.0, limits=node.config.limits,
        needs_auth=True,
    )  # fmt: skip
    node.sessions[cid] = session
    return session


class GeneralSide:
    """What a client task does: parse everything, execute one command at a time."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.session = new_session(node, 1)

    def batch(self, data: bytes) -> tuple[bytes, Deferred | str | None]:
        parser = self.session.parser
        out = []
        try:
            parser.feed(data)
            while (args := parser.next_command()) is not None:
                reply = self.node.execute(self.session, args)
                if not isinstance(reply, bytes):
                    return b"".join(out), reply
                out.append(reply)
        except ProtocolError as exc:
            self.node.sessions.pop(self.session.id, None)
            return b"".join(out) + (b"" if exc.silent else exc.reply), "closed"
        return b"".join(out), None

    def reconnect(self, cid: int) -> None:
        self.node.sessions.pop(self.session.id, None)
        self.session = new_session(self.node, cid)


class ReactorSide:
    """The reactor's read path (fast path first) on a fake socket."""

    def __init__(self, node: Node, fd: int) -> None:
        self.node = node
        self.nursery = FakeNursery()
        self.reactor = Reactor(node, self.nursery, None)  # type: ignore[arg-type]
        self.fd = fd
        self.connect(1)

    def connect(self, cid: int) -> None:
        self.sock = FakeSock(self.fd)
        self.session = new_session(self.node, cid)
        self.reactor.add(self.sock, self.session)  # type: ignore[arg-type]

    def batch(self, data: bytes) -> tuple[bytes, Deferred | str | None]:
        self.sock.inbox = data
        self.reactor._readable(self.fd, self.reactor.clients[self.fd])
        sent = b"".join(self.sock.sent)
        self.sock.sent.clear()
        if self.nursery.started:
            _sock, _session, out, deferred = self.nursery.started.pop()
            return sent + b"".join(out), deferred
        if self.fd not in self.reactor.clients:
            return sent, "closed"
        return sent, None

    def reconnect(self, cid: int) -> None:
        if self.fd in self.reactor.clients:
            self.reactor._release(self.fd)
        self.node.sessions.pop(self.session.id, None)
        self.connect(cid)


def state(node: Node) -> dict[str, Any]:
    ks = node.keyspace
    records = {
        key: (bytes(e.value), type(e.value).__name__, e.expire_at, e.lru, e.pos)
        for key, e in ks.records.items()
    }
    calls = {name: (c.calls, c.failed) for name, c in node.stats.command_calls.items() if c.calls}
    backlog = node.repl.backlog
    return {
        "records": records,
        "keys": list(ks._keys),
        "vkeys": list(ks._vkeys),
        "used_memory": ks.used_memory,
        "ks_stats": {name: getattr(ks.stats, name) for name in ks.stats.__slots__},
        "calls": calls,
        "processed": node.stats.commands_processed,
        "errors": (node.stats.error_replies, dict(node.stats.error_prefixes)),
        "latency_count": sum(node.stats.latency.counts),
        "offset": node.repl.offset,
        "backlog": None if backlog is None else bytes(backlog._buf),
    }


def bulk_frame(args: list[bytes], rng: random.Random) -> bytes:
    """A command as a client sends it, sometimes in a form the fast path must not take."""
    r = rng.random()
    if r < 0.02:
        return b" ".join(args) + b"\r\n" if all(a and b" " not in a for a in args) else b""
    if r < 0.021:  # a non-canonical length: a protocol error
        frame = encode_command(args)
        return frame.replace(b"$%d\r\n" % len(args[-1]), b"$0%d\r\n" % len(args[-1]), 1)
    return encode_command(args)


class Mix:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.keys = [b"key:%012d" % i for i in range(40)] + [b"k", b"a\r\nb", b"x" * 150]

    def key(self) -> bytes:
        return self.rng.choice(self.keys)

    def value(self) -> bytes:
        rng = self.rng
        r = rng.random()
        if r < 0.05:
            return b"v" * rng.choice((1000, 1023, 1024, 5000))
        if r < 0.1:
            return b"12"
        if r < 0.12:
            return b"a\r\nb"
        return bytes(rng.randrange(97, 123) for _ in range(rng.choice((0, 3, 100))))

    def command(self) -> list[bytes]:
        rng = self.rng
        r = rng.random()
        name = rng.choice((b"GET", b"SET")) if r < 0.93 else None
        if name is not None and rng.random() < 0.15:
            name = name.lower()
        if name in (b"GET", b"get"):
            return [name, self.key()]
        if name in (b"SET", b"set"):
            return [name, self.key(), self.value()]
        return rng.choice(
            (
                lambda: [
                    b"SET",
                    self.key(),
                    self.value(),
                    b"PX",
                    str(rng.randrange(1, 8)).encode(),
                ],
                lambda: [b"SET", self.key(), self.value(), rng.choice((b"NX", b"XX", b"GET"))],
                lambda: [b"SET", self.key(), self.value(), b"EX", b"100", b"GET"],
                lambda: [b"PEXPIRE", self.key(), str(rng.randrange(1, 6)).encode()],
                lambda: [b"APPEND", self.key(), b"tail"],
                lambda: [b"INCR", self.key()],
                lambda: [b"DEL", self.key()],
                lambda: [b"GETEX", self.key(), b"PX", b"3"],
                lambda: [b"PTTL", self.key()],
                lambda: [b"MGET", self.key(), self.key()],
                lambda: [b"GET"],
                lambda: [b"SET", self.key()],
                lambda: [b"PING"],
                lambda: [b"HELLO", rng.choice((b"2", b"2", b"3"))],
                lambda: [b"AUTH", rng.choice((b"pw", b"nope"))],
                lambda: [b"DBSIZE"],
            )
        )()

    def batch(self) -> bytes:
        n = self.rng.choice((1, 2, 16, 16, 40))
        return b"".join(bulk_frame(self.command(), self.rng) for _ in range(n))


def chunks(stream: Iterator[bytes], rng: random.Random) -> Iterator[bytes]:
    """Batches as the network may deliver them: sometimes cut inside a frame."""
    held = b""
    for data in stream:
        data = held + data
        if data and rng.random() < 0.2:
            cut = rng.randrange(len(data))
            data, held = data[:cut], data[cut:]
        else:
            held = b""
        if data:  # recv never gives b"" but at the end of the stream
            yield data


def change_world(rng: random.Random, nodes: list[Node], clock: Clock) -> None:
    """The same random change to both nodes: time, role, pause, replication, memory limit."""
    r = rng.random()
    if r < 0.6:
        clock.ms += rng.choice((0, 0, 1, 2, 5))
    elif r < 0.605:
        new_role = rng.choice((Role.PRIMARY, Role.PRIMARY, Role.REPLICA))
        for node in nodes:
            if new_role is not node.roles.role:
                node.set_roles(roles.manual(node.roles, new_role, "127.0.0.1:1"))
    elif r < 0.61:
        until = rng.choice((0.0, 0.0, 1e18))  # CLIENT PAUSE WRITE until far away, or unpause
        for node in nodes:
            node.writes_paused_until = until
            node.refresh_gates()
    elif r < 0.611:  # replicas attach: from now on a primary's writes are propagated
        for node in nodes:
            node.ensure_backlog()
    elif r < 0.63:
        limit = rng.choice((0, 0, 20_000, 30_000))  # a few dozen keys: eviction, or OOM
        policy = rng.choice(("allkeys-lru", "noeviction", "volatile-lru"))
        for node in nodes:
            node.keyspace.maxmemory = limit
            node.keyspace.policy = type(node.keyspace.policy)(policy)
            node.refresh_gates()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fast_path_matches_general_path(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(storenode.node, "time_ns", clock.time_ns)
    monkeypatch.setattr(storenode.fastpath, "time_ns", clock.time_ns)
    taken = []
    serve = storenode.fastpath.serve

    def counting_serve(node: Node, session: Session, data: bytes, pos: int, *rest: Any) -> Any:
        stop, size = serve(node, session, data, pos, *rest)
        taken.append(data.count(b"*", pos, stop))  # frames: no key or value holds a "*"
        return stop, size

    monkeypatch.setattr(storenode.fastpath, "serve", counting_serve)
    rng = random.Random(seed)
    total = 0
    for world in range(WORLDS):  # fresh nodes now and then: replication, once on, stays on
        total += run_world(rng, clock, seed * 100 + world)
    # The fast path had work to do, and did it: it took a good share of the commands.
    assert sum(taken) > total * 0.05


def run_world(rng: random.Random, clock: Clock, seed: int) -> int:
    """Drive a fresh pair of nodes through random batches and changes; the frames sent."""
    general_node, fast_node = new_node(seed), new_node(seed)
    r_fd, w_fd = os.pipe()  # a real fd for the reactor's epoll
    fast = ReactorSide(fast_node, r_fd)
    try:
        general = GeneralSide(general_node)
        mix = Mix(rng)
        stream = chunks((mix.batch() for _ in range(STEPS)), rng)
        auth = encode_command([b"AUTH", b"pw"])
        assert general.batch(auth) == fast.batch(auth)
        cid = 1
        total = 0
        for step, data in enumerate(stream):
            total += data.count(b"*")
            change_world(rng, [general_node, fast_node], clock)
            expected = general.batch(data)
            got = fast.batch(data)
            assert got == expected, f"step {step}: {data!r}"
            assert state(fast_node) == state(general_node), f"step {step}: {data!r}"
            assert fast.session.last_cmd == general.session.last_cmd
            if expected[1] is not None:
                # A held write (both hand the client over) or a protocol error (both close):
                # start anew.
                assert expected[1] == "closed" or isinstance(expected[1], PausedWrite)
                cid += 1
                general.reconnect(cid)
                fast.reconnect(cid)
                if rng.random() < 0.7:  # else unauthenticated until the stream's AUTH pw
                    for side in (general, fast):
                        assert side.batch(auth) == (b"+OK\r\n", None)
        return total
    finally:
        fast.reactor.ep.close()
        os.close(r_fd)
        os.close(w_fd)


def test_fast_path_takes_plain_get_and_set() -> None:
    """Plain GET/SET frames never reach the parser (what redis-benchmark sends)."""
    node = Node(NodeConfig(port=0))
    session = new_session(node, 1)
    session.set_authenticated(True)
    data = encode_command([b"SET", b"key:1", b"v" * 100]) + encode_command([b"GET", b"key:1"])
    data += encode_command([b"get", b"missing"])
    out: list[bytes] = []
    pos, size = storenode.fastpath.serve(node, session, data, 0, out, 1 << 16)
    assert pos == len(data)
    assert b"".join(out) == b"+OK\r\n$100\r\n" + b"v" * 100 + b"\r\n$-1\r\n"
    assert size == len(b"".join(out))
    assert node.stats.command_calls["get"].calls == 2
    assert node.keyspace.stats.keyspace_hits == 1
    assert node.keyspace.stats.keyspace_misses == 1


def test_fast_path_waits_for_bytes_the_parser_holds() -> None:
    """A batch that starts like a GET frame but ends a command the parser holds is not one."""
    node = Node(NodeConfig(port=0))
    side = ReactorSide.__new__(ReactorSide)
    r_fd, w_fd = os.pipe()
    try:
        ReactorSide.__init__(side, node, r_fd)
        side.session.set_authenticated(True)
        assert side.batch(encode_command([b"SET", b"k", b"v"])) == (b"+OK\r\n", None)
        inner = encode_command([b"GET", b"k"])  # the bytes of a GET frame, as a 21-byte key
        side.batch(b"*2\r\n$3\r\nGET\r\n$%d\r\n" % len(inner))
        assert side.batch(inner + b"\r\n") == (b"$-1\r\n", None)
    finally:
        side.reactor.ep.close()
        os.close(r_fd)
        os.close(w_fd)


@pytest.mark.parametrize("room", [None, 100_000])
def test_long_pipeline_is_flushed_in_order(room: int | None) -> None:
    """Replies are sent every FLUSH_AT bytes; when the socket fills up, the rest waits."""
    node = Node(NodeConfig(port=0))
    r_fd, w_fd = os.pipe()
    side = ReactorSide(node, r_fd)
    try:
        side.session.set_authenticated(True)
        assert side.batch(encode_command([b"SET", b"k", b"v" * 100])) == (b"+OK\r\n", None)
        get = encode_command([b"GET", b"k"])
        data = get * 2000 + encode_command([b"PING"]) + get * 10
        expected = (b"$100\r\n" + b"v" * 100 + b"\r\n") * 2000 + b"+PONG\r\n"
        expected += (b"$100\r\n" + b"v" * 100 + b"\r\n") * 10
        if room is None:
            assert side.batch(data) == (expected, None)
            return
        sock = side.sock
        sent: list[bytes] = []

        def send_some(chunk: bytes) -> int:
            n = min(len(chunk), room - sum(map(len, sent)))
            sent.append(bytes(chunk[:n]))
            return n

        sock.send = send_some  # type: ignore[method-assign]
        sock.inbox = data
        reactor = side.reactor
        reactor._readable(side.fd, reactor.clients[side.fd])
        assert side.fd in reactor.blocked
        sock.send = lambda chunk: sent.append(bytes(chunk)) or len(chunk)  # type: ignore[method-assign]
        reactor._resume(side.fd, reactor.clients[side.fd])
        assert b"".join(sent) == expected
    finally:
        side.reactor.ep.close()
        os.close(r_fd)
        os.close(w_fd)
