"""The primary's side of a replica connection: snapshot or backlog, then the live stream.

How it works
- ``SG.SYNC replid offset announce`` turns a client connection into a replica link. If the
  replica's history is ours (our replid, or our previous primary's up to ``second_offset``)
  and the backlog still holds its offset, it gets ``+CONTINUE replid offset`` and the backlog
  from there (a partial resync). Otherwise ``+FULLSYNC replid offset``, a snapshot, and
  ``SG.SNAPEND``.
- The snapshot is the keyspace walked with SCAN, ``SNAPSHOT_CHUNK`` keys at a time, each sent as
  ``SG.PUT``; the node yields between chunks, so clients keep being served (a chunk costs about
  a millisecond) and memory stays bounded by one chunk plus what the socket holds. Writes made
  meanwhile collect in the link's pending buffer from the snapshot's start offset and follow it:
  state records are idempotent, so the replica converges.
- ``SG.GETACK`` and ``SG.PING stamp-ms`` travel on the link but outside the offset space (they
  are not in the backlog); the replica answers GETACK with an ack at once and acks on its own
  every 100 ms. The stamped PING, every ``STAMP_INTERVAL`` after whatever stream bytes were
  pending, is both the heartbeat and the clock the acks are judged by (``replication.py``).
"""

from __future__ import annotations

import socket
import time

import trio
import trio.lowlevel

from shardgate.logs import log_event
from shardgate.resp import ProtocolError, RequestLimits, RequestParser, encode_command
from storenode.node import Node
from storenode.node_types import ServeReplica
from storenode.rawio import Stalled, recv_some, send_all
from storenode.replication import (
    STAMP_INTERVAL,
    ReplicaRecord,
    ack_sent_at,
    put_effect,
    stamp_command,
)

SNAPSHOT_CHUNK = 512
SNAPEND = encode_command([b"SG.SNAPEND"])
GETACK = encode_command([b"SG.GETACK"])
# Redis's client-output-buffer-limit for replicas is 256 MB hard: a replica that falls further
# behind is dropped and resyncs.
MAX_PENDING = 256 * 1024 * 1024


class ReplicaFeed:
    """Stream bytes waiting to go to one replica."""

    __slots__ = ("broken", "max_pending", "pending", "wake")

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self.pending = bytearray()
        self.wake = trio.Event()
        self.broken = False
        self.max_pending = max_pending

    def push(self, data: bytes) -> None:
        if self.broken:
            return
        self.pending += data
        if len(self.pending) > self.max_pending:
            self.broken = True
        self.wake.set()

    def take(self) -> bytes:
        data = bytes(self.pending)
        self.pending.clear()
        self.wake = trio.Event()
        return data


class AckBoard:
    """Wakes everyone waiting for replica acks (WAIT, semi-sync writes) when one arrives."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()


def is_partial_possible(node: Node, req: ServeReplica) -> bool:
    repl = node.repl
    backlog = repl.backlog
    if backlog is None or not backlog.covers(req.offset):
        return False
    if req.replid == repl.replid:
        return True
    return req.replid == repl.replid2 and req.offset <= repl.second_offset


async def serve_replica(
    node: Node, sock: socket.socket, client_id: int, req: ServeReplica, acks: AckBoard
) -> None:
    repl = node.repl
    backlog = node.ensure_backlog()
    record = ReplicaRecord(id=client_id, addr=req.announce)
    feed = ReplicaFeed()
    repl.replicas.add(record)
    repl.links[client_id] = feed
    try:
        if is_partial_possible(node, req):
            repl.partial_syncs += 1
            record.online = True
            record.ack_offset = req.offset
            record.last_ack = time.monotonic()
            log_event("replica_partial_sync", replica=req.announce, offset=req.offset)
            head = b"+CONTINUE %s %d\r\n" % (repl.replid.encode(), req.offset)
            await send_all(sock, head + backlog.read_from(req.offset))
        else:
            if req.replid != "?":
                repl.partial_refused += 1
            repl.full_syncs += 1
            start = repl.offset
            log_event(
                "replica_full_sync", replica=req.announce, offset=start, keys=len(node.keyspace)
            )
            await send_all(sock, b"+FULLSYNC %s %d\r\n" % (repl.replid.encode(), start))
            await _send_snapshot(node, sock)
            await send_all(sock, SNAPEND)
            record.online = True
            record.last_ack = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stream, sock, feed, nursery.cancel_scope)
            nursery.start_soon(_read_acks, node, sock, record, acks, nursery.cancel_scope)
    except* (OSError, Stalled, ProtocolError, ValueError) as group:
        exc = group.exceptions[0]
        log_event(
            "replica_link_lost", level="warn", replica=req.announce, error=str(exc) or repr(exc)
        )
    finally:
        repl.replicas.remove(client_id)
        repl.links.pop(client_id, None)
        acks.notify()


async def _send_snapshot(node: Node, sock: socket.socket) -> None:
    ks = node.keyspace
    cursor = 0
    while True:
        now_ms = time.time_ns() // 1_000_000
        cursor, keys = ks.scan(cursor, SNAPSHOT_CHUNK, now_ms)
        parts = []
        for key in keys:
            e = ks.peek(key, now_ms)
            if e is not None:
                parts.append(put_effect(key, e.value, e.expire_at))
        if parts:
            await send_all(sock, b"".join(parts))
        if cursor == 0:
            return
        await trio.lowlevel.checkpoint()  # let clients run between chunks


async def _stream(sock: socket.socket, feed: ReplicaFeed, scope: trio.CancelScope) -> None:
    next_stamp = 0.0
    while not feed.broken:
        now = time.monotonic()
        stamp = b""
        if now >= next_stamp:
            # After the pending bytes: a replica that echoes it has read everything up to now.
            stamp = stamp_command(now)
            next_stamp = now + STAMP_INTERVAL
        elif not feed.pending:
            with trio.move_on_after(next_stamp - now):
                await feed.wake.wait()
            continue
        await send_all(sock, (feed.take() if feed.pending else b"") + stamp)
    log_event("replica_dropped", level="warn", reason="output buffer limit")
    scope.cancel()


async def _read_acks(
    node: Node, sock: socket.socket, record: ReplicaRecord, acks: AckBoard, scope: trio.CancelScope
) -> None:
    parser = RequestParser(RequestLimits(max_bulk=1024, max_multibulk=8))
    while True:
        data = await recv_some(sock)
        if not data:
            scope.cancel()
            return
        parser.feed(data)
        while (args := parser.next_command()) is not None:
            if args[0].upper() == b"SG.ACK" and len(args) in (2, 3, 4):
                # Judged by when it was sent, on our clock: a late-delivered ack is old news,
                # not a sign of a live replica (replication.py).
                sent = ack_sent_at(
                    time.monotonic(),
                    args,
                    wall_now_ms=time.time_ns() // 1_000_000,
                    stamped=record.stamped,
                )
                node.repl.replicas.ack(record.id, int(args[1]), sent, stamped=len(args) == 4)
                acks.notify()


def request_acks(node: Node) -> None:
    """Ask every replica to ack now (WAIT, semi-sync) instead of at its next 100 ms tick."""
    for link in node.repl.links.values():
        link.push(GETACK)
