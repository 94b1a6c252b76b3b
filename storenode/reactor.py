"""Many plain clients served from one trio task: an epoll loop inside trio.

Why: a trio task per client costs a scheduler pass (and an epoll re-registration) every time a
client becomes readable; with 50 clients at one command per round trip that overhead was most
of the node's CPU per request. Here one task waits on an epoll object of its own
(``trio.lowlevel.wait_readable`` on the epoll fd), then serves every ready client in one go:
recv, parse, execute, send, no task switch in between.

What stays with a dedicated task per client (the server's ``_client_loop``): anything that must
wait — WAIT, a write held by CLIENT PAUSE, a replica link (SG.SYNC) — and every client when
semi-synchronous replication is on. Such a client is handed over mid-stream with the replies
it already has, and the task goes on from the same parser, so order is kept.

Backpressure: when a send would block, the rest is kept, the client is watched for EPOLLOUT
only (no more reading, so nothing more is produced), and it is dropped if it does not read for
``client_output_stall_seconds``.
"""

from __future__ import annotations

import errno
import select
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from shardgate.logs import log_event
from shardgate.resp import ProtocolError
from storenode import fastpath
from storenode.node_types import Deferred
from storenode.session import Session

if TYPE_CHECKING:
    from storenode.node import Node

RECV_SIZE = 64 * 1024
FLUSH_AT = 64 * 1024
# Clients served per wakeup before yielding to other trio tasks (expiry, replication).
MAX_EVENTS = 256

Handoff = Callable[[socket.socket, Session, list[bytes], Deferred], Awaitable[None]]


class _Client:
    __slots__ = ("blocked_since", "pending", "session", "sock")

    def __init__(self, sock: socket.socket, session: Session) -> None:
        self.sock = sock
        self.session = session
        self.pending = b""  # output the kernel did not take yet
        self.blocked_since = 0.0


class Reactor:
    def __init__(self, node: Node, nursery: trio.Nursery, handoff: Handoff) -> None:
        self.node = node
        self.nursery = nursery
        self.handoff = handoff
        self.ep = select.epoll()
        self.clients: dict[int, _Client] = {}
        self.blocked: set[int] = set()  # clients whose output the kernel would not take

    def add(self, sock: socket.socket, session: Session) -> None:
        fd = sock.fileno()
        self.clients[fd] = _Client(sock, session)
        session.kill = lambda: self.drop(fd)
        self.ep.register(fd, select.EPOLLIN)

    def drop(self, fd: int) -> None:
        self.blocked.discard(fd)
        client = self.clients.pop(fd, None)
        if client is None:
            return
        try:
            self.ep.unregister(fd)
        except OSError:
            pass
        client.sock.close()
        self.node.sessions.pop(client.session.id, None)

    def _release(self, fd: int) -> _Client:
        """Stop watching a client without closing it (it goes to a task of its own)."""
        client = self.clients.pop(fd)
        self.ep.unregister(fd)
        return client

    async def run(self) -> None:
        try:
            while True:
                await trio.lowlevel.wait_readable(self.ep.fileno())
                for fd, events in self.ep.poll(0, MAX_EVENTS):
                    client = self.clients.get(fd)
                    if client is None:
                        continue
                    try:
                        if client.pending:
                            if events & (select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP):
                                self._resume(fd, client)
                        else:
                            self._readable(fd, client)
                    except OSError as exc:
                        if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT):
                            log_event(
                                "client_error",
                                level="warn",
                                client=client.session.addr,
                                error=str(exc),
                            )
                        self.drop(fd)
        finally:
            for fd in list(self.clients):
                self.drop(fd)
            self.ep.close()

    def _readable(self, fd: int, client: _Client) -> None:
        try:
            data = client.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        if not data:
            self.drop(fd)
            return
        session = client.session
        self.node.stats.net_input_bytes += len(data)
        session.last_interaction = time.time()
        out: list[bytes] = []
        size = 0
        if fastpath.eligible(session, data):
            # Plain GETs and SETs first (storenode/fastpath.py); the general path below takes
            # over at the first frame the fast path leaves, and the rest of the batch.
            pos = 0
            while True:
                pos, size = fastpath.serve(self.node, session, data, pos, out, FLUSH_AT)
                if size < FLUSH_AT or pos == len(data):
                    break
                if not self._send(fd, client, out, size):
                    session.parser.commands_taken_elsewhere()
                    session.parser.feed(data[pos:])  # runs once the client reads
                    return
                out = []
                size = 0
            if pos:
                session.parser.commands_taken_elsewhere()
                data = data[pos:]
        if not data:  # the fast path took it all
            self._send(fd, client, out, size)
            return
        try:
            session.parser.feed(data)
        except ProtocolError as exc:
            self._protocol_error(fd, client, out, exc)
            return
        self._process(fd, client, out, size)

    def _process(self, fd: int, client: _Client, out: list[bytes], size: int) -> None:
        """Run every complete command in the client's buffer and send the replies (``out``
        holds replies of earlier commands of the batch, ``size`` bytes)."""
        session = client.session
        parser = session.parser
        execute = self.node.execute
        try:
            while (args := parser.next_command()) is not None:
                reply = execute(session, args)
                if reply.__class__ is not bytes:
                    # Must wait: hand the client to a task of its own, replies so far included.
                    self._release(fd)
                    self.nursery.start_soon(self.handoff, client.sock, session, out, reply)  # type: ignore[arg-type]
                    return
                out.append(reply)
                size += len(reply)
                if session.closing:
                    break
                if size >= FLUSH_AT:
                    if not self._send(fd, client, out, size):
                        return  # blocked: the rest runs once the client reads
                    out = []
                    size = 0
        except ProtocolError as exc:
            self._protocol_error(fd, client, out, exc)
            return
        if out and not self._send(fd, client, out, size):
            return
        if session.closing:
            self.drop(fd)

    def _send(self, fd: int, client: _Client, out: list[bytes], size: int) -> bool:
        """Send replies; False when the socket is full (the client is then write-blocked)."""
        node = self.node
        if size > node.config.client_output_limit:
            node.stats.output_limit_disconnections += 1
            log_event("client_output_limit", level="warn", client=client.session.addr, bytes=size)
            self.drop(fd)
            return False
        data = out[0] if len(out) == 1 else b"".join(out)
        node.stats.net_output_bytes += size
        try:
            sent = client.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return True
        client.pending = data[sent:]
        client.blocked_since = time.monotonic()
        self.blocked.add(fd)
        self.ep.modify(fd, select.EPOLLOUT)
        return False

    def _resume(self, fd: int, client: _Client) -> None:
        try:
            sent = client.sock.send(client.pending)
        except BlockingIOError:
            return
        client.pending = client.pending[sent:]
        if client.pending:
            return
        self.blocked.discard(fd)
        self.ep.modify(fd, select.EPOLLIN)
        self._process(fd, client, [], 0)  # commands that waited behind the blocked output

    def check_stalls(self) -> None:
        """Drop clients that have not read their replies for too long (called periodically)."""
        limit = self.node.config.client_output_stall_seconds
        now = time.monotonic()
        for fd in list(self.blocked):
            client = self.clients[fd]
            if now - client.blocked_since > limit:
                self.node.stats.output_limit_disconnections += 1
                log_event("client_output_stalled", level="warn", client=client.session.addr)
                self.drop(fd)

    def _protocol_error(
        self, fd: int, client: _Client, out: list[bytes], exc: ProtocolError
    ) -> None:
        self.node.stats.protocol_errors += 1
        log_event("protocol_error", level="warn", client=client.session.addr, error=exc.message)
        if not exc.silent:
            out.append(exc.reply)
        if out:
            try:
                client.sock.send(b"".join(out))
            except OSError:
                pass
        self.drop(fd)
