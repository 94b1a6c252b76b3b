"""One client connection: parse every complete command, route it, release replies in order.

How it works
- The proxy's reactor (``proxy/reactor.py``) watches every client socket; when a client is
  readable it reads once, parses every complete command in the buffer, and for each appends a
  ``Pending`` to the client's ``ReplyQueue`` and submits the request to the backend(s). It
  never waits per request.
- Replies are written by whoever completes them (a backend reader, the timeout timer, or the
  reactor for local answers) with one non-blocking ``send`` per batch; what the socket does
  not take goes to ``outbuf`` and the reactor writes it when the socket is writable.
- Backpressure instead of unbounded memory: with ``max_outstanding`` replies pending or
  ``max_output`` unsent bytes, the client is not read until the backlog halves.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING

import hiredis
import trio

from proxy.local import NOAUTH, Action, LocalContext, Session, execute
from proxy.ordering import Pending, ReplyQueue, RunPending
from proxy.router import SINGLE_KEY, Local, Reject, Router, Split, is_readonly, xxh3
from shardgate.resp import Batch, ProtocolError, RequestParser, Run
from shardgate.slots import BRACE, SLOTS, hash_tag

if TYPE_CHECKING:
    from proxy.reactor import Reactor
    from proxy.server import Proxy

RECV_SIZE = 64 * 1024


class ClientConn:
    __slots__ = (
        "closing",
        "closing_deadline",
        "dead",
        "mask",
        "outbuf",
        "outlen",
        "parser",
        "proxy",
        "queue",
        "reactor",
        "reading",
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
        self.parser = RequestParser(proxy.config.limits, authenticated=authed, runs=True)
        self.queue = ReplyQueue()
        self.outbuf: list[bytes] = []
        self.outlen = 0
        self.reading = True  # False while the reply backlog is over its cap
        self.writing = False  # output is waiting in outbuf for the socket to take it
        self.touched = False  # set by backend readers while batching flushes
        self.dead = False
        self.closing = False  # QUIT or a protocol error: write what is owed, then close
        self.closing_deadline = 0.0
        self.reactor: Reactor | None = None
        self.mask = 0  # the epoll events the reactor watches for this client

    # -- called by the reactor ------------------------------------------------------------------

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        if not data:
            self.close()
            return
        parser = self.parser
        try:
            # One whole command per read (a client waiting for each reply): no buffering, and
            # the received bytes go to the backend as they are.
            args = parser.single(data)
            if args is None:
                parser.feed(data)
                self._dispatch(parser)
            else:
                self._dispatch(parser, args, data)
        except ProtocolError as exc:
            self.proxy.stats.protocol_errors += 1
            if not exc.silent:
                self.queue.append(Pending.done(self, exc.reply))
            self._start_closing()
        self.flush()
        config = self.proxy.config
        if self.reading and (
            len(self.queue) >= config.max_outstanding or self.outlen > config.max_output
        ):
            self.reading = False  # backpressure: read again once the backlog halves
            self._watch()

    def on_writable(self) -> None:
        data = b"".join(self.outbuf) if len(self.outbuf) > 1 else self.outbuf[0]
        self.outbuf.clear()
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        self.outlen -= sent
        if sent < len(data):
            self.outbuf.append(data[sent:])
            return
        self.outlen = 0
        self.writing = False
        if not self._maybe_finish():
            self._maybe_resume_reader()
            self._watch()

    def close(self) -> None:
        """The one way a connection ends: the reactor stops watching it and closes it."""
        if self.dead:
            return
        self.dead = True
        if self.reactor is not None:
            self.reactor.remove(self)
        self.sock.close()

    def _start_closing(self) -> None:
        self.closing = True
        self.reading = False
        self.closing_deadline = trio.current_time() + self.proxy.config.timeout + 1
        self._watch()

    def _maybe_finish(self) -> bool:
        """A closing client whose replies are all written is closed; True when it was."""
        if self.closing and not self.writing and not len(self.queue):
            self.close()
            return True
        return False

    def _watch(self) -> None:
        mask = (select.EPOLLIN if self.reading else 0) | (select.EPOLLOUT if self.writing else 0)
        if mask != self.mask and not self.dead and self.reactor is not None:
            self.mask = mask
            self.reactor.modify(self.sock.fileno(), mask)

    # -- reading and dispatch -------------------------------------------------------------------

    def _dispatch(
        self, parser: RequestParser, single_args: list[bytes] | None = None, raw: bytes = b""
    ) -> None:
        """Every command ``parser`` has ready, or only ``single_args`` (whose exact bytes are
        ``raw``) when ``RequestParser.single`` took the read."""
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
        items: Iterable[list[bytes] | Run | Batch] = (
            iter(parser.next_item, None) if single_args is None else (single_args,)
        )
        # The hot path, inlined (measured: a route() and a submit() call per request were a
        # tenth of the proxy's CPU at -P 16): a single-key command from an authenticated
        # client, forwarded to its shard's primary. Anything else takes the general path.
        fast = type(router) is Router and session.authenticated and reads is None
        single = SINGLE_KEY if fast else {}
        slot_owner = router.slot_owner if type(router) is Router else ()
        unsent = proxy.unsent
        runs = fast  # runs of same-shaped commands go whole, as one RunPending
        for args in items:
            if not isinstance(args, list):  # a Run or a Batch: several commands at once
                if runs and self._forward_many(args, single, counts):
                    self._forward(args, now, deadline, retry)
                else:
                    parser.give_back(args)
                continue
            name = args[0]
            counts[name] = counts.get(name, 0) + 1
            arity = single.get(name)
            if arity is not None:
                argc = len(args)
                if argc == arity or (arity < 0 and argc >= -arity):
                    key = args[1]
                    if BRACE in key:
                        key = hash_tag(key)
                    conn = conns[slot_owner[xxh3(key) % SLOTS]]
                    if conn.up and len(conn.waiters) < conn.max_queue:
                        pending = Pending(self, now, deadline)
                        append(pending)
                        request = raw or pack(tuple(args))  # type: ignore[arg-type]
                        if retry:
                            pending.retry = request  # kept for one retry after a -READONLY
                        conn.wq.append(request)
                        conn.waiters.append((pending, 0))
                        conn.requests += 1
                        if not conn.inline:  # sent at the end of the reactor's pass
                            conn.inline = True
                            unsent.append(conn)
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
                    runs = True
            else:
                assert isinstance(decision, Reject)
                stats.rejected += 1
                append(Pending.done(self, decision.reply))

    @staticmethod
    def _forward_many(
        item: Run | Batch, single: dict[bytes, int], counts: dict[bytes, int]
    ) -> bool:
        """Whether every command of a run or batch is a single-key command with a valid
        argument count (then they are counted and go by ``_forward``); if not, the caller
        gives them back to come out one by one."""
        if isinstance(item, Run):
            name = item.toks[2]
            arity = single.get(name)
            argc = item.stride >> 1
            if arity is None or not (argc == arity or (arity < 0 and argc >= -arity)):
                return False
            counts[name] = counts.get(name, 0) + item.count
            return True
        for args in item.commands:
            arity = single.get(args[0])
            argc = len(args)
            if arity is None or not (argc == arity or (arity < 0 and argc >= -arity)):
                return False
        for args in item.commands:
            counts[args[0]] = counts.get(args[0], 0) + 1
        return True

    def _forward(self, item: Run | Batch, now: float, deadline: float, retry: bool) -> None:
        """Single-key commands read together (a pipeline of GETs, of SETs, or of both): each
        request goes to its key's shard exactly as the client sent it, and one RunPending
        collects the replies in order. Per request, only a hash, a slice and two appends."""
        proxy = self.proxy
        conns = proxy.shard_conns
        slot_owner = proxy.router.slot_owner  # type: ignore[union-attr]
        unsent = proxy.unsent
        buf = item.buf
        offsets = item.offsets
        count = item.count
        if isinstance(item, Run):  # the keys: a strided slice of the tokens, taken in C
            keys = item.toks[4 : count * item.stride : item.stride]
        else:
            keys = [args[1] for args in item.commands]
        # Following sentinels, each request may be retried once on its own (a -READONLY
        # write, a read lost with its connection): the pending keeps their bytes for that.
        pending = RunPending(self, now, deadline, count, item.frame if retry else None)
        self.queue.append_run(pending)
        start = offsets[0]
        for index, key in enumerate(keys):
            if BRACE in key:
                key = hash_tag(key)
            conn = conns[slot_owner[xxh3(key) % SLOTS]]
            stop = offsets[index + 1]
            if conn.up and len(conn.waiters) < conn.max_queue:
                conn.wq.append(buf[start:stop])
                conn.waiters.append((pending, index))
                conn.requests += 1
                if not conn.inline:  # sent at the end of the reactor's pass
                    conn.inline = True
                    unsent.append(conn)
            else:
                pending.fail_part(index, conn.refusal() or conn.down_error)
                proxy.stats.refused += 1
            start = stop

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
            self._start_closing()
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
            self.close()
            return
        if sent < len(data):
            rest = data[sent:]
            self.outbuf.append(rest)
            self.outlen += len(rest)
            self.writing = True
            self._watch()
        elif not self._maybe_finish():
            self._maybe_resume_reader()

    def _maybe_resume_reader(self) -> None:
        config = self.proxy.config
        if (
            not self.reading
            and not self.closing
            and len(self.queue) <= config.max_outstanding // 2
            and self.outlen <= config.max_output // 2
        ):
            self.reading = True
            self._watch()
