"""The store node's trio shell: accept clients, move bytes, run the background cycles.

How it works
- Sockets are plain non-blocking stdlib sockets driven with ``trio.lowlevel.wait_readable`` /
  ``wait_writable``: every recv/send is tried first and the task only parks on EAGAIN. trio's
  stream wrappers checkpoint on every call, which measured 1.5x slower (performance-notes.md).
- A client task reads, parses every complete command in its buffer, executes them in order and
  sends all their replies in one write. It checkpoints every few batches that did not block, so
  one pipelining client cannot starve the others.
- Output is written as it is produced (flushed every 64 KB), so what the node holds for a client
  is bounded by one flush plus one reply; a client that does not read for
  ``client_output_stall_seconds`` while output is pending, or whose single batch exceeds
  ``client_output_limit``, is disconnected.
- The active-expiry cycle runs ``hz`` times a second, in slices of at most 1 ms with a yield
  between slices, at most 25 ms per cycle (Redis's ACTIVE_EXPIRE_CYCLE_SLOW_TIME_PERC), so a
  mass expiry never stalls a command by more than about a millisecond.
"""

from __future__ import annotations

import errno
import socket
import time

import trio
import trio.lowlevel

from shardgate.logs import log_event
from shardgate.resp import ProtocolError, encode_error
from storenode.config import NodeConfig
from storenode.node import Node
from storenode.session import Session

RECV_SIZE = 64 * 1024
FLUSH_AT = 64 * 1024
# Batches handled without blocking before a forced checkpoint (fairness between clients).
BATCHES_PER_YIELD = 8
EXPIRE_SLICE_SECONDS = 0.001
EXPIRE_CYCLE_FRACTION = 0.25

_MAXCLIENTS = encode_error("ERR max number of clients reached")


class ClientGone(Exception):
    """The client closed, reset, stalled or broke the protocol; drop the connection."""


class NodeServer:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.bound: tuple[str, int] | None = None

    async def serve(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        cfg = self.node.config
        listener = trio.socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET)
        with listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            await listener.bind((cfg.host, cfg.port))
            listener.listen(511)  # Redis's tcp-backlog default
            host, port = listener.getsockname()[:2]
            self.bound = (host, port)
            self.node.port = port
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._expire_loop)
                log_event("listening", host=host, port=port)
                task_status.started((host, port))
                while True:
                    conn, addr = await listener.accept()
                    raw = socket.socket(fileno=conn.detach())
                    nursery.start_soon(self._client, raw, addr)

    async def _client(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        node = self.node
        cfg = node.config
        with sock:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            node.stats.connections_received += 1
            if len(node.sessions) >= cfg.maxclients:
                node.stats.rejected_connections += 1
                try:
                    sock.send(_MAXCLIENTS)
                except OSError:
                    pass
                return
            local = sock.getsockname()
            session = Session(
                client_id=node.new_client_id(),
                addr=f"{addr[0]}:{addr[1]}",
                laddr=f"{local[0]}:{local[1]}",
                fd=sock.fileno(),
                now=time.time(),
                limits=cfg.limits,
                needs_auth=bool(cfg.requirepass),
            )
            node.sessions[session.id] = session
            try:
                await self._client_loop(sock, session)
            except ClientGone:
                pass
            except OSError as exc:  # the one place a connection's OSError is handled
                if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT):
                    log_event("client_error", level="warn", client=session.addr, error=str(exc))
            finally:
                del node.sessions[session.id]

    async def _client_loop(self, sock: socket.socket, session: Session) -> None:
        node = self.node
        stats = node.stats
        parser = session.parser
        execute = node.execute
        recv = sock.recv
        wait_readable = trio.lowlevel.wait_readable
        unblocked_batches = 0
        while True:
            try:
                data = recv(RECV_SIZE)
            except BlockingIOError:
                unblocked_batches = 0
                await wait_readable(sock)
                continue
            if not data:
                return
            stats.net_input_bytes += len(data)
            session.last_interaction = time.time()
            out: list[bytes] = []
            size = 0
            try:
                parser.feed(data)
                while (args := parser.next_command()) is not None:
                    reply = execute(session, args)
                    out.append(reply)
                    size += len(reply)
                    if session.closing:
                        break
                    if size >= FLUSH_AT:
                        await self._send(sock, session, out, size)
                        out = []
                        size = 0
            except ProtocolError as exc:
                stats.protocol_errors += 1
                log_event("protocol_error", level="warn", client=session.addr, error=exc.message)
                if not exc.silent:
                    out.append(exc.reply)
                    size += len(exc.reply)
                session.closing = True
            if out:
                await self._send(sock, session, out, size)
            if session.closing:
                return
            unblocked_batches += 1
            if unblocked_batches >= BATCHES_PER_YIELD:
                unblocked_batches = 0
                await trio.lowlevel.checkpoint()

    async def _send(
        self, sock: socket.socket, session: Session, out: list[bytes], size: int
    ) -> None:
        cfg = self.node.config
        if size > cfg.client_output_limit:
            self.node.stats.output_limit_disconnections += 1
            log_event("client_output_limit", level="warn", client=session.addr, bytes=size)
            raise ClientGone
        data = out[0] if len(out) == 1 else b"".join(out)
        self.node.stats.net_output_bytes += size
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        while view:
            with trio.move_on_after(cfg.client_output_stall_seconds):
                await trio.lowlevel.wait_writable(sock)
                try:
                    view = view[sock.send(view) :]
                except BlockingIOError:
                    pass
                continue
            self.node.stats.output_limit_disconnections += 1
            log_event("client_output_stalled", level="warn", client=session.addr, pending=len(view))
            raise ClientGone

    async def _expire_loop(self) -> None:
        """Redis's active expiry: sample volatile keys, repeat while >25% of a sample expired."""
        keyspace = self.node.keyspace
        perf = time.perf_counter
        while True:
            period = 1.0 / self.node.config.hz
            await trio.sleep(period)
            cycle_end = perf() + period * EXPIRE_CYCLE_FRACTION
            more = True
            while more:
                slice_end = min(perf() + EXPIRE_SLICE_SECONDS, cycle_end)
                now_ms = time.time_ns() // 1_000_000
                while (more := keyspace.active_expire_step(now_ms)) and perf() < slice_end:
                    pass
                if perf() >= cycle_end:
                    break
                await trio.lowlevel.checkpoint()


async def serve(
    config: NodeConfig,
    *,
    config_file: str | None = None,
    task_status: trio.TaskStatus[NodeServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a store node until cancelled; ``task_status.started`` gets the bound server."""
    server = NodeServer(Node(config, config_file=config_file))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        task_status.started(server)
