"""The replica's side: connect to the primary, sync, apply the stream, ack.

How it works
- ``run_replica_link`` loops for as long as the node is a replica of that primary (the server
  cancels it on a role change): connect, ``AUTH`` if a password is set, ``SG.SYNC replid offset
  announce``, then either a snapshot (flush, apply ``SG.PUT`` records until ``SG.SNAPEND``) or a
  continuation, then the live stream. It reconnects with exponential backoff (100 ms to 1 s).
- Every stream command moves the offset by its encoded length and is appended to the replica's
  own backlog, so after a promotion the other replicas can continue from it (Redis's replid2).
- Acks: ``SG.ACK offset sent-at-ms stamp-ms`` every 100 ms and at once on ``SG.GETACK``;
  ``stamp-ms`` echoes the newest ``SG.PING stamp-ms`` read from the primary (left out until one
  arrives). The echo lets the primary judge an ack by when it was sent, on its own clock, not
  when it arrived: acks held up by a partition arrive in a burst when it heals and must not make
  a superseded primary believe its replicas are with it (found by
  tests/faults/test_jepsen_partition.py; ``replication.py`` says why not by ``sent-at-ms``).
- A link silent for ``LINK_TIMEOUT`` seconds (the primary pings every 100 ms) is dropped
  and reconnected, like Redis's repl-timeout.
"""

from __future__ import annotations

import secrets
import socket
import time

import trio

from shardgate.config import parse_address
from shardgate.logs import log_event
from shardgate.resp import ProtocolError, RequestLimits, RequestParser, encode_command
from storenode.node import Node
from storenode.rawio import connect as raw_connect
from storenode.rawio import recv_some, send_all
from storenode.replication import ACK_INTERVAL

LINK_TIMEOUT = 10.0
BACKOFF_MIN = 0.1
BACKOFF_MAX = 1.0


class ReplicationError(Exception):
    pass


async def run_replica_link(node: Node, primary: str) -> None:
    backoff = BACKOFF_MIN
    while True:
        started = time.monotonic()
        try:
            await _sync_once(node, primary)
        except* (OSError, ReplicationError, ProtocolError, trio.TooSlowError, ValueError) as group:
            exc = group.exceptions[0]
            log_event(
                "replica_link_down",
                level="warn",
                primary=primary,
                error=str(exc) or type(exc).__name__,
            )
        finally:
            if node.repl.link_up or not node.repl.link_down_since:
                node.repl.link_down_since = time.monotonic()
            node.repl.link_up = False
            node.repl.sync_in_progress = False
        if time.monotonic() - started > 5:
            backoff = BACKOFF_MIN  # it worked for a while: retry quickly
        await trio.sleep(backoff)
        backoff = min(backoff * 2, BACKOFF_MAX)


async def _read_line(sock: socket.socket, buf: bytearray) -> bytes:
    while b"\r\n" not in buf:
        if len(buf) > 4096:
            raise ReplicationError("primary sent an overlong handshake line")
        data = await recv_some(sock)
        if not data:
            raise ReplicationError("primary closed the connection")
        buf += data
    line, _, rest = bytes(buf).partition(b"\r\n")
    buf[:] = rest
    return line


async def _sync_once(node: Node, primary: str) -> None:
    host, port = parse_address(primary)
    repl = node.repl
    with trio.fail_after(5):
        sock = await raw_connect(host, port)
    with sock:
        password = node.config.masterauth or node.config.requirepass
        announce = node.config.announce or f"{node.config.host}:{node.port}"
        hello = b""
        if password:
            hello += encode_command([b"AUTH", password.encode()])
        replid = repl.replid if repl.offset or repl.history else "?"
        hello += encode_command(
            [b"SG.SYNC", replid.encode(), str(repl.offset).encode(), announce.encode()]
        )
        await send_all(sock, hello)
        buf = bytearray()
        if password:
            line = await _read_line(sock, buf)
            if not line.startswith(b"+OK"):
                raise ReplicationError(f"AUTH refused: {line.decode('utf-8', 'replace')}")
        line = await _read_line(sock, buf)
        parts = line.split()
        if len(parts) != 3 or parts[0] not in (b"+CONTINUE", b"+FULLSYNC"):
            raise ReplicationError(f"unexpected handshake reply {line[:200]!r}")
        new_replid = parts[1].decode("ascii", "replace")
        offset = int(parts[2])
        parser = RequestParser(RequestLimits())
        parser.feed(bytes(buf))
        repl.last_io = time.monotonic()
        if parts[0] == b"+FULLSYNC":
            log_event("full_sync_started", primary=primary, offset=offset)
            repl.sync_in_progress = True
            # No history until the snapshot is complete: a save taken meanwhile (persistence.py)
            # must not claim the old replid and offset for a half-replaced keyspace.
            repl.history = False
            repl.replid = secrets.token_hex(20)
            repl.offset = 0
            node.keyspace.flush()
            await _apply_snapshot(node, sock, parser)
            repl.sync_in_progress = False
            node.ensure_backlog().reset(offset)
            log_event("full_sync_done", primary=primary, keys=len(node.keyspace))
        else:
            log_event("partial_sync", primary=primary, offset=offset)
        repl.replid = new_replid
        repl.offset = offset
        repl.history = True
        repl.link_up = True
        acker = _Acker(node, sock)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(acker.run)
            await _apply_stream(node, sock, parser, acker)
            nursery.cancel_scope.cancel()


def _apply(node: Node, args: list[bytes], now_ms: int) -> None:
    name = args[0]
    ks = node.keyspace
    node.persistence.replica_changes += 1
    if name == b"SG.PUT" and len(args) == 4:
        ks.set(args[1], args[2], now_ms, int(args[3]))
    elif name == b"DEL" and len(args) == 2:
        ks.delete(args[1], now_ms)
    elif name == b"FLUSHALL":
        ks.flush()
    else:
        raise ReplicationError(f"unknown stream command {name[:64]!r}")


async def _apply_snapshot(node: Node, sock: socket.socket, parser: RequestParser) -> None:
    while True:
        while (args := parser.next_command()) is not None:
            if args[0] == b"SG.SNAPEND":
                return
            if args[0] in (b"SG.PING", b"SG.GETACK"):
                continue
            _apply(node, args, time.time_ns() // 1_000_000)
        with trio.fail_after(LINK_TIMEOUT):
            data = await recv_some(sock)
        if not data:
            raise ReplicationError("primary closed the connection during the snapshot")
        node.repl.last_io = time.monotonic()
        parser.feed(data)


async def _apply_stream(
    node: Node, sock: socket.socket, parser: RequestParser, acker: _Acker
) -> None:
    repl = node.repl
    backlog = node.ensure_backlog()
    while True:
        now_ms = time.time_ns() // 1_000_000
        while (args := parser.next_command()) is not None:
            if args[0] == b"SG.PING":
                if len(args) == 2:
                    acker.stamp = args[1]
                continue
            if args[0] == b"SG.GETACK":
                acker.now.set()
                continue
            _apply(node, args, now_ms)
            raw = encode_command(args)  # the primary's exact bytes: both use the canonical form
            repl.offset += len(raw)
            backlog.append(raw)
            for link in repl.links.values():  # a background save's capture (persistence.py)
                link.push(raw)
        with trio.fail_after(LINK_TIMEOUT):
            data = await recv_some(sock)
        if not data:
            raise ReplicationError("primary closed the connection")
        repl.last_io = time.monotonic()
        parser.feed(data)


class _Acker:
    """The only task writing to the link: acks every 100 ms, or at once when asked."""

    def __init__(self, node: Node, sock: socket.socket) -> None:
        self.node = node
        self.sock = sock
        self.now = trio.Event()
        self.stamp: bytes | None = None  # the newest stamp the primary sent, echoed

    async def run(self) -> None:
        while True:
            ack = [
                b"SG.ACK",
                str(self.node.repl.offset).encode(),
                str(time.time_ns() // 1_000_000).encode(),
            ]
            if self.stamp is not None:
                ack.append(self.stamp)
            await send_all(self.sock, encode_command(ack))
            with trio.move_on_after(ACK_INTERVAL):
                await self.now.wait()
            self.now = trio.Event()
