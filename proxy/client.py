"""One client connection: parse every complete command, route it, release replies in order.

How it works
- The reader task reads whatever the socket has (syscall first, wait only on EAGAIN), parses
  every complete command in the buffer, and for each appends a ``Pending`` to the client's
  ``ReplyQueue`` and submits the request to the backend(s). It never waits per request.
- Replies are written by whoever completes them (a backend reader, the timeout timer, or this
  task for local answers) with one non-blocking ``send`` per batch; what the socket does not
  take goes to ``outbuf`` and the writer task finishes it, so two tasks never write at once.
- Backpressure instead of unbounded memory: with ``max_outstanding`` replies pending or
  ``max_output`` unsent bytes, the reader stops reading until the backlog halves.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import hiredis
import trio

from proxy.local import NOAUTH, Action, LocalContext, Session, execute
from proxy.ordering import Pending, ReplyQueue
from proxy.router import SINGLE_KEY, Local, Reject, Router, Split, is_readonly, xxh3
from shardgate.resp import ProtocolError, RequestParser
from shardgate.slots import SLOTS, hash_tag

if TYPE_CHECKING:
    from proxy.server import Proxy

RECV_SIZE = 64 * 1024
FAIR_BATCHES = 4  # successful reads in a row before yielding to other tasks


class ClientConn:
    __slots__ = (
        "_reader_task",
        "_writer_task",
        "closing",
        "dead",
        "outbuf",
        "outlen",
        "parser",
        "proxy",
        "queue",
        "scope",
        "session",
        "sock",
        "touched",
        "writing",
    )

    def __init__(self, proxy: Proxy, sock: socket.socket, client_id: int) -> None:
        self.proxy = proxy
        self.sock = sock
        authed = proxy.config.requirepass is None
        self.session = Session(client_id, authenticated=authed)
        self.parser = RequestParser(proxy.config.limits, authenticated=authed)
        self.queue = ReplyQueue()
        self.outbuf: list[bytes] = []
        self.outlen = 0
        self.writing = False  # the writer task owns the output until outbuf is empty
        self.touched = False  # set by backend readers while batching flushes
        self.dead = False
        self.closing = False
        self.scope: trio.CancelScope | None = None
        self._writer_task: trio.lowlevel.Task | None = None
        self._reader_task: trio.lowlevel.Task | None = None

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.scope = nursery.cancel_scope
                nursery.start_soon(self._writer)
                try:
                    await self._read_loop()
                    if self.closing:  # QUIT or protocol error: write what is owed, then close
                        with trio.move_on_after(self.proxy.config.timeout + 1):
                            await self._drained()
                except OSError:
                    pass  # the one place a client's socket errors end the connection
                nursery.cancel_scope.cancel()
        finally:
            self.dead = True
            self.sock.close()

    # -- reading and dispatch -------------------------------------------------------------------

    async def _read_loop(self) -> None:
        sock = self.sock
        parser = self.parser
        config = self.proxy.config
        max_outstanding = config.max_outstanding
        max_output = config.max_output
        streak = 0
        wait = False
        while not self.closing and not self.dead:
            if len(self.queue) >= max_outstanding or self.outlen > max_output:
                await self._park_reader()
                continue
            if wait:
                await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(RECV_SIZE)
            except BlockingIOError:
                streak = 0
                wait = True
                continue
            if not data:
                return
            # A short read emptied the socket: wait for readiness rather than trying again.
            wait = len(data) < RECV_SIZE
            try:
                parser.feed(data)
                self._dispatch(parser)
            except ProtocolError as exc:
                self.proxy.stats.protocol_errors += 1
                if not exc.silent:
                    self.queue.append(Pending.done(self, exc.reply))
                self.closing = True
            self.flush()
            streak += 1
            if streak >= FAIR_BATCHES and not wait:
                streak = 0
                await trio.lowlevel.checkpoint()

    def _dispatch(self, parser: RequestParser) -> None:
        proxy = self.proxy
        router = proxy.router
        conns = proxy.shard_conns
        session = self.session
        queue = self.queue
        append = queue.append
        stats = proxy.stats
        counts = stats.commands
        now = trio.current_time()
        deadline = now + proxy.config.timeout
        pack = hiredis.pack_command
        reads = proxy.reads
        retry = proxy.follower is not None
        next_command = parser.next_command
        # The hot path, inlined (measured: a route() and a submit() call per request were a
        # tenth of the proxy's CPU at -P 16): a single-key command from an authenticated
        # client, forwarded to its shard's primary. Anything else takes the general path.
        fast = type(router) is Router and session.authenticated and reads is None
        single = SINGLE_KEY if fast else {}
        slot_owner = router.slot_owner if type(router) is Router else ()
        while (args := next_command()) is not None:
            name = args[0]
            counts[name] = counts.get(name, 0) + 1
            arity = single.get(name)
            if arity is not None:
                argc = len(args)
                if argc == arity or (arity < 0 and argc >= -arity):
                    key = args[1]
                    if b"{" in key:
                        key = hash_tag(key)
                    conn = conns[slot_owner[xxh3(key) % SLOTS]]
                    if conn.up and len(conn.waiters) < conn.max_queue:
                        pending = Pending(self, now, deadline)
                        append(pending)
                        request = pack(tuple(args))  # type: ignore[arg-type]
                        if retry:
                            pending.retry = request  # kept for one retry after a -READONLY
                        conn.wq.append(request)
                        conn.waiters.append((pending, 0))
                        conn.requests += 1
                        if (task := conn.writer_task) is not None:
                            conn.writer_task = None
                            trio.lowlevel.reschedule(task)
                    else:
                        append(Pending.done(self, conn.refusal() or conn.down_error))
                        stats.refused += 1
                    continue
            if not session.authenticated:
                decision = router.route(args)
                if not (isinstance(decision, Local) and "noauth" in decision.spec.flags):
                    stats.noauth += 1
                    append(Pending.done(self, NOAUTH))
                    continue
            else:
                decision = router.route(args)
            if type(decision) is int:
                conn = conns[decision]
                if (
                    reads is not None
                    and (plan := reads[decision]) is not None
                    and is_readonly(name)
                ):
                    picked = plan.pick()
                    if picked is None:
                        append(Pending.done(self, plan.no_replica))
                        stats.refused += 1
                        continue
                    conn = picked
                if conn.up and len(conn.waiters) < conn.max_queue:
                    pending = Pending(self, now, deadline)
                    append(pending)
                    request = pack(tuple(args))  # type: ignore[arg-type]
                    if retry:
                        pending.retry = request
                    conn.submit(pending, 0, request)
                else:
                    append(Pending.done(self, conn.refusal() or conn.down_error))
                    stats.refused += 1
            elif type(decision) is Split:
                self._split(decision, now, deadline, name)
            elif type(decision) is Local:
                self._local(args, decision)
                if self.closing:
                    return
                if type(router) is Router and session.authenticated and reads is None:
                    single = SINGLE_KEY  # AUTH in the middle of a pipeline
            else:
                assert isinstance(decision, Reject)
                stats.rejected += 1
                append(Pending.done(self, decision.reply))

    def _split(self, decision: Split, now: float, deadline: float, name: bytes) -> None:
        conns = self.proxy.shard_conns
        reads = self.proxy.reads if is_readonly(name) else None
        targets = []
        for shard, _ in decision.parts:
            conn = conns[shard]
            if reads is not None and (plan := reads[shard]) is not None:
                picked = plan.pick()
                if picked is None:
                    self.queue.append(Pending.done(self, plan.no_replica))
                    self.proxy.stats.refused += 1
                    return
                conn = picked
            refusal = conn.refusal()
            if refusal is not None:  # all or nothing: never a partial success
                self.queue.append(Pending.done(self, refusal))
                self.proxy.stats.refused += 1
                return
            targets.append(conn)
        pending = Pending(self, now, deadline, len(decision.parts), decision.merge)
        self.queue.append(pending)
        for index, (conn, (_, request)) in enumerate(zip(targets, decision.parts)):
            conn.submit(pending, index, request)

    def _local(self, args: list[bytes], decision: Local) -> None:
        proxy = self.proxy
        session = self.session
        ctx = LocalContext(
            requirepass=proxy.config.requirepass,
            now=proxy.wall_time(),
            info=proxy.info_sections,
            config=proxy.config.params(),
        )
        was_authed = session.authenticated
        reply, action = execute(args, decision.spec, session, ctx)
        if session.authenticated != was_authed:
            self.parser.authenticated = session.authenticated
        if action is Action.RELOAD:
            pending = Pending(self, 0.0, float("inf"))
            self.queue.append(pending)
            proxy.reload_soon(pending)
            return
        if action is Action.CLOSE:
            self.closing = True
        self.queue.append(Pending.done(self, reply))

    # -- writing --------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write the replies that are ready, in order; never blocks."""
        self.touched = False
        if self.dead:
            return
        ready = self.queue.take_ready()
        if not ready:
            return
        data = b"".join(ready) if len(ready) > 1 else ready[0]
        if self.writing:
            self.outbuf.append(data)
            self.outlen += len(data)
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._die()
            return
        if sent < len(data):
            rest = data[sent:]
            self.outbuf.append(rest)
            self.outlen += len(rest)
            self.writing = True
            self._wake("_writer_task")
        else:
            self._maybe_resume_reader()

    def _die(self) -> None:
        self.dead = True
        if self.scope is not None:
            self.scope.cancel()

    def _maybe_resume_reader(self) -> None:
        if self._reader_task is not None and (
            len(self.queue) <= self.proxy.config.max_outstanding // 2
            and self.outlen <= self.proxy.config.max_output // 2
        ):
            self._wake("_reader_task")

    def _wake(self, slot: str) -> None:
        task = getattr(self, slot)
        if task is not None:
            setattr(self, slot, None)
            trio.lowlevel.reschedule(task)

    async def _park(self, slot: str) -> None:
        setattr(self, slot, trio.lowlevel.current_task())

        def abort(_: object) -> trio.lowlevel.Abort:
            setattr(self, slot, None)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def _drained(self) -> None:
        """Wait until every queued reply has been written (QUIT, protocol errors)."""
        while (len(self.queue) or self.writing) and not self.dead:
            await self._park("_reader_task")

    async def _park_reader(self) -> None:
        await self._park("_reader_task")

    async def _writer(self) -> None:
        sock = self.sock
        while True:
            if not self.outbuf:
                self.writing = False
                self._maybe_resume_reader()
                await self._park("_writer_task")
                continue
            data = b"".join(self.outbuf)
            self.outbuf.clear()
            while data:
                try:
                    sent = sock.send(data)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(sock)
                    continue
                except OSError:
                    self._die()
                    return
                data = data[sent:]
                self.outlen -= sent
            self.outlen = max(self.outlen, 0)
