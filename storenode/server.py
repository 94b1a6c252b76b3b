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
- Replication: a replica runs one link task to its primary (restarted on every role change);
  a primary serves each replica from the connection that sent ``SG.SYNC``
  (``repl_primary.py``). WAIT and semi-synchronous writes (``sync_replicas``) park the client's
  connection until enough replicas acked, or the timeout; a semi-sync write that times out
  stays applied and is answered ``-TIMEOUT``.
"""

from __future__ import annotations

import errno
import gc
import math
import socket
import time

import trio
import trio.lowlevel

from shardgate.logs import log_event
from shardgate.resp import ProtocolError, encode_error
from storenode.config import NodeConfig
from storenode.node import STALL_SECONDS, Node
from storenode.node_types import Deferred, PausedWrite, ServeReplica, WaitForAcks
from storenode.reactor import Reactor
from storenode.repl_primary import AckBoard, request_acks, serve_replica
from storenode.repl_replica import run_replica_link
from storenode.roles import Role
from storenode.session import Session

RECV_SIZE = 64 * 1024
FLUSH_AT = 64 * 1024
# Batches handled without blocking before a forced checkpoint (fairness between clients).
BATCHES_PER_YIELD = 8
EXPIRE_SLICE_SECONDS = 0.001
EXPIRE_CYCLE_FRACTION = 0.25
GC_FREEZE_SECONDS = 1.0

_MAXCLIENTS = encode_error("ERR max number of clients reached")


class ClientGone(Exception):
    """The client closed, reset, stalled or broke the protocol; drop the connection."""


class NodeServer:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.bound: tuple[str, int] | None = None
        self.acks = AckBoard()
        self._nursery: trio.Nursery | None = None
        self._reactor: Reactor | None = None
        self._link_target: str | None = None
        self._link_scope: trio.CancelScope | None = None
        self._replica_scopes: dict[int, trio.CancelScope] = {}
        self._unpaused = trio.Event()
        node.on_unpause = self._wake_paused

    def _wake_paused(self) -> None:
        self._unpaused.set()
        self._unpaused = trio.Event()

    # --- roles and replication ------------------------------------------------------------

    def _role_changed(self) -> None:
        state = self.node.roles
        target = state.primary if state.role is Role.REPLICA else None
        if state.role is not Role.PRIMARY:
            for scope in self._replica_scopes.values():
                scope.cancel()  # a demoted node stops feeding its old replicas
        if target == self._link_target:
            return
        if self._link_scope is not None:
            self._link_scope.cancel()
            self._link_scope = None
        self._link_target = target
        if target is not None and self._nursery is not None:
            scope = trio.CancelScope()
            self._link_scope = scope
            self._nursery.start_soon(self._run_link, scope, target)

    async def _run_link(self, scope: trio.CancelScope, target: str) -> None:
        with scope:
            await run_replica_link(self.node, target)

    async def _serve_replica(
        self, sock: socket.socket, session: Session, req: ServeReplica
    ) -> None:
        scope = trio.CancelScope()
        session.flags = "S"
        self._replica_scopes[session.id] = scope
        try:
            with scope:
                await serve_replica(self.node, sock, session.id, req, self.acks)
        finally:
            del self._replica_scopes[session.id]

    async def _await_acks(self, offset: int, needed: int) -> None:
        """Return once ``needed`` replicas acked ``offset``; callers bound it with a scope."""
        table = self.node.repl.replicas
        if needed > 0 and table.acked(offset) < needed:
            request_acks(self.node)
            while table.acked(offset) < needed:
                await self.acks.wait()

    async def _after_pause(self, session: Session, paused: PausedWrite) -> tuple[bytes, bool]:
        """Run a write held by CLIENT PAUSE once the pause ends; also whether it wrote (moved
        the replication offset). Measured around this execute alone: a node demoted during
        the pause follows its new primary's stream, so its offset moves without this write,
        which it refuses with -READONLY (docs/faults.md, scenario 8)."""
        node = self.node
        remaining = node.writes_paused_until - time.monotonic()
        if remaining > 0:
            with trio.move_on_after(remaining):
                await self._unpaused.wait()
        if node.writes_paused_until and time.monotonic() >= node.writes_paused_until:
            node.writes_paused_until = 0.0
            node.refresh_gates()
        before = node.repl.offset
        reply = node.execute(session, list(paused.args))
        assert isinstance(reply, bytes)  # a write resolves to bytes once unpaused
        return reply, node.repl.offset != before

    async def _resolve(self, deferred: Deferred) -> bytes:
        assert isinstance(deferred, WaitForAcks)
        timeout = deferred.timeout_ms / 1000 if deferred.timeout_ms else math.inf
        with trio.move_on_after(timeout):
            await self._await_acks(deferred.offset, deferred.numreplicas)
        return b":%d\r\n" % self.node.repl.replicas.acked(deferred.offset)

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
                self._nursery = nursery
                self._reactor = Reactor(self.node, nursery, self._client_task)
                nursery.start_soon(self._reactor.run)
                nursery.start_soon(self._expire_loop)
                self.node.on_role_change = self._role_changed
                self._role_changed()
                log_event("listening", host=host, port=port)
                task_status.started((host, port))
                while True:
                    conn, addr = await listener.accept()
                    raw = socket.socket(fileno=conn.detach())
                    nursery.start_soon(self._client, raw, addr)

    async def _client(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        session = self._new_session(sock, addr)
        if session is None:
            sock.close()
        elif self._reactor is not None and not self.node.config.sync_replicas:
            self._reactor.add(sock, session)  # the reactor owns the socket from here
        else:
            await self._client_task(sock, session, [], None)

    def _new_session(self, sock: socket.socket, addr: tuple[str, int]) -> Session | None:
        node = self.node
        cfg = node.config
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        node.stats.connections_received += 1
        if len(node.sessions) >= cfg.maxclients:
            node.stats.rejected_connections += 1
            try:
                sock.send(_MAXCLIENTS)
            except OSError:
                pass
            return None
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
        return session

    async def _client_task(
        self, sock: socket.socket, session: Session, out: list[bytes], deferred: Deferred | None
    ) -> None:
        """A client with a task of its own (from the start, or handed over by the reactor with
        the replies it already had and the command that must wait)."""
        node = self.node
        with sock:
            scope = trio.CancelScope()
            session.kill = scope.cancel
            try:
                with scope:
                    if deferred is not None:
                        if isinstance(deferred, ServeReplica):
                            await self._flush(sock, session, out, sum(map(len, out)), [])
                            await self._serve_replica(sock, session, deferred)
                            return
                        if isinstance(deferred, PausedWrite):
                            await self._flush(sock, session, out, sum(map(len, out)), [])
                            out = [(await self._after_pause(session, deferred))[0]]
                        else:
                            out.append(await self._resolve(deferred))
                        await self._flush(sock, session, out, sum(map(len, out)), [])
                    await self._client_loop(sock, session, drain_first=deferred is not None)
            except ClientGone:
                pass
            except OSError as exc:  # the one place a connection's OSError is handled
                if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT):
                    log_event("client_error", level="warn", client=session.addr, error=str(exc))
            finally:
                node.sessions.pop(session.id, None)

    async def _client_loop(
        self, sock: socket.socket, session: Session, *, drain_first: bool = False
    ) -> None:
        node = self.node
        stats = node.stats
        parser = session.parser
        execute = node.execute
        recv = sock.recv
        wait_readable = trio.lowlevel.wait_readable
        unblocked_batches = 0
        while True:
            if drain_first:
                data = b""  # commands already buffered by the parser come first
                drain_first = False
            else:
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
            sync_n = node.config.sync_replicas
            synced: list[int] = []  # indexes in out of semi-sync writes awaiting acks
            repl = node.repl
            try:
                parser.feed(data)
                while (args := parser.next_command()) is not None:
                    before = repl.offset
                    reply = execute(session, args)
                    if reply.__class__ is not bytes:
                        if isinstance(reply, ServeReplica):
                            await self._flush(sock, session, out, size, synced)
                            await self._serve_replica(sock, session, reply)
                            return
                        if isinstance(reply, PausedWrite):
                            # Flush what came before, then hold this write until the pause ends.
                            await self._flush(sock, session, out, size, synced)
                            out = []
                            size = 0
                            reply, wrote = await self._after_pause(session, reply)
                            if sync_n and wrote:
                                synced.append(len(out))
                        else:
                            reply = await self._resolve(reply)  # type: ignore[arg-type]
                    elif sync_n and repl.offset != before:
                        synced.append(len(out))
                    out.append(reply)
                    size += len(reply)
                    if session.closing:
                        break
                    if size >= FLUSH_AT:
                        await self._flush(sock, session, out, size, synced)
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
                await self._flush(sock, session, out, size, synced)
            if session.closing:
                return
            unblocked_batches += 1
            if unblocked_batches >= BATCHES_PER_YIELD:
                unblocked_batches = 0
                await trio.lowlevel.checkpoint()

    async def _flush(
        self, sock: socket.socket, session: Session, out: list[bytes], size: int, synced: list[int]
    ) -> None:
        """Send a batch of replies; semi-sync writes in it wait for their replica acks first."""
        if synced:
            cfg = self.node.config
            offset = self.node.repl.offset
            with trio.move_on_after(cfg.sync_timeout_ms / 1000):
                await self._await_acks(offset, cfg.sync_replicas)
            got = self.node.repl.replicas.acked(offset)
            if got < cfg.sync_replicas:
                error = encode_error(
                    f"TIMEOUT write applied but acknowledged by {got} of {cfg.sync_replicas} "
                    f"replicas within {cfg.sync_timeout_ms} ms"
                )
                for i in synced:
                    size += len(error) - len(out[i])
                    out[i] = error
            synced.clear()
        if out:
            await self._send(sock, session, out, size)

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
        next_freeze = 0.0
        while True:
            period = 1.0 / self.node.config.hz
            await trio.sleep(period)
            node = self.node
            tick = time.monotonic()
            if tick - node.last_tick > STALL_SECONDS:
                node.woke_at = tick  # we were stopped: see Node._refuse_write
            node.last_tick = tick
            if self._reactor is not None:
                self._reactor.check_stalls()
            if perf() >= next_freeze:
                # A full cyclic-GC pass over a million key records takes ~90 ms. Records never
                # form cycles, so move everything that survived so far out of the collector's
                # sight (gc.freeze is O(1)); young objects are still collected as usual.
                gc.freeze()
                next_freeze = perf() + GC_FREEZE_SECONDS
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
