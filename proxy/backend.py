"""One pipelined connection to a backend node, shared by every client of this proxy process.

How it works (twemproxy's model, measured fastest in performance-notes.md)
- The proxy's reactor (``proxy/reactor.py``) queues requests on ``wq`` and ``(pending, part)``
  on ``waiters``, in the same order, and at the end of its pass sends everything queued for
  this connection in one ``send`` (``send_now``). Nothing awaits. Requests queued from other
  tasks (``submit`` outside a reactor pass) wake the writer task, which does the same.
- ``read_ready`` reads once, cuts replies with ``reply_ends`` and pops ``waiters`` in order;
  each reply completes its client's request, and every client touched by one read is flushed
  once. The reactor calls it when the socket is readable (the socket is on its epoll); without
  a reactor (tests, tools) the reader task does.
- The timer task fails requests whose deadline passed (they stay in ``waiters`` as placeholders,
  so a late reply is matched to its own request and dropped). ``fail_after`` consecutive
  timeouts drop the connection; while it is not UP, ``submit`` fails requests at once.
- Sockets are raw and non-blocking: try the syscall first, wait for readiness only on EAGAIN.
"""

from __future__ import annotations

import errno
import socket
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from proxy.health import Health, State
from proxy.ordering import Pending
from proxy.replies import reply_ends
from shardgate.logs import log_event
from shardgate.metrics import FastHistogram
from shardgate.resp import ReplyError, encode_command, reply_end

if TYPE_CHECKING:
    from proxy.reactor import Reactor

TICK = 0.01  # timeout checks every 10 ms: errors arrive within timeout + ~10 ms
RECV_SIZE = 256 * 1024
FAIR_BATCHES = 8  # successful reads in a row before yielding to other tasks
_READ_BUF = bytearray(RECV_SIZE)  # where every backend read lands first (``read_ready``)
_READ_VIEW = memoryview(_READ_BUF)


class BackendLost(Exception):
    """The connection is unusable; every waiting request gets ``reason`` as its error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BackendConn:
    __slots__ = (
        "_buf",
        "_expired",
        "_live",
        "_lost",
        "_napping",
        "_need",
        "_reader_task",
        "address",
        "busy_error",
        "down_error",
        "epoch",
        "errors",
        "fencing",
        "health",
        "inline",
        "label",
        "latency",
        "max_queue",
        "on_flush",
        "on_lost",
        "on_readonly",
        "on_stale",
        "password",
        "reactor",
        "requests",
        "role",
        "scope",
        "sock",
        "timeout",
        "timeout_error",
        "timeouts",
        "up",
        "waiters",
        "watched",
        "wq",
        "writer_task",
    )

    def __init__(
        self,
        address: tuple[str, int],
        *,
        label: str,
        timeout: float,
        max_queue: int,
        fail_after: int,
        reconnect_interval: float,
        password: str | None,
        epoch: int,
        latency: FastHistogram,
        on_flush: Callable[[list[Any]], None],
        role: bytes = b"primary",
        on_stale: Callable[[str], None] | None = None,
        on_readonly: Callable[[Any, Pending, int, bytes], bool] | None = None,
        on_lost: Callable[[Any, Pending, int, bytes], bool] | None = None,
        reactor: Reactor | None = None,
    ) -> None:
        self.address = address
        self.label = label
        self.timeout = timeout
        self.max_queue = max_queue
        self.password = password
        self.epoch = epoch  # announced to shardgate nodes with SG.FENCE on every connection
        self.fencing: bool | None = None  # None until a handshake shows whether SG.FENCE exists
        self.role = role  # b"primary" | b"replica": what our topology says this node is
        self.on_stale = on_stale  # a -STALE reply: the proxy refreshes its topology
        # A -READONLY reply to a request that may be retried: True when the proxy took it over.
        self.on_readonly = on_readonly
        # A request lost with the connection (its outcome unknown): True when the proxy took
        # it over (an idempotent read it retries on the new primary).
        self.on_lost = on_lost
        self.latency = latency
        self.on_flush = on_flush  # flushes the clients a batch of replies touched
        self.health = Health(fail_after=fail_after, interval=reconnect_interval)
        self.up = False
        self.sock: socket.socket | None = None  # while connected
        # The proxy's reactor reads this connection's socket in its own epoll loop, and sends
        # what its pass queued (``send_now``); None: the connection's own tasks do both.
        self.reactor = reactor
        self.watched = -1  # the fd on the reactor's epoll, while it is
        self.inline = False  # on the reactor's list of connections to send for
        self._buf = b""  # reply bytes read but not yet complete
        self._need = 0  # bytes the head reply needs before scanning again (large bulks)
        self._live: trio.CancelScope | None = None  # the live connection's tasks
        self.wq: list[bytes] = []
        self.waiters: deque[tuple[Pending, int]] = deque()
        self._expired = 0  # waiters at the head that already timed out
        self._lost: str | None = None
        self.writer_task: trio.lowlevel.Task | None = None
        self._reader_task: trio.lowlevel.Task | None = None
        self._napping: trio.CancelScope | None = None  # the wait between connection attempts
        self.scope: trio.CancelScope | None = None
        self.requests = 0
        self.errors = 0
        self.timeouts = 0
        self.down_error = f"-ERR backend {label} is down\r\n".encode()
        self.busy_error = f"-ERR backend {label} busy: too many requests in flight\r\n".encode()
        self.timeout_error = f"-ERR backend {label} timeout\r\n".encode()

    # -- called by client tasks (never awaits) --------------------------------------------------

    def submit(self, pending: Pending, part: int, request: bytes) -> None:
        self.wq.append(request)
        self.waiters.append((pending, part))
        self.requests += 1
        reactor = self.reactor
        if reactor is not None and reactor.serving:
            if not self.inline:  # sent at the end of the reactor's pass, with the rest
                self.inline = True
                reactor.proxy.unsent.append(self)
            return
        task = self.writer_task
        if task is not None:
            self.writer_task = None
            trio.lowlevel.reschedule(task)

    def send_now(self) -> None:
        """Send what clients queued, called by the client reactor at the end of its pass.

        Only while the writer task is parked with nothing in hand (so order is kept): one
        ``send`` here instead of a writer wakeup and a scheduler pass per reactor pass, which is
        most of a request's latency through one idle proxy. Whatever the socket does not take,
        or an error, is left to the writer task as usual."""
        self.inline = False
        wq = self.wq
        if not wq:
            return
        task = self.writer_task
        sock = self.sock
        if task is not None and sock is not None:
            data = b"".join(wq) if len(wq) > 1 else wq[0]
            try:
                sent = sock.send(data)
            except OSError:  # BlockingIOError too: the writer waits and sees any error itself
                sent = 0
            if sent == len(data):
                wq.clear()
                return
            wq[:] = [data[sent:]]
        if task is not None:
            self.writer_task = None
            trio.lowlevel.reschedule(task)

    def refusal(self) -> bytes | None:
        """The error a new request gets at once, or None when it may be submitted."""
        if not self.up:
            return self.down_error
        if len(self.waiters) >= self.max_queue:
            return self.busy_error
        return None

    @property
    def inflight(self) -> int:
        return len(self.waiters)

    def fence_request(self) -> bytes:
        """SG.FENCE: tell a shardgate node our topology epoch and the role it has in it."""
        return encode_command([b"SG.FENCE", b"%d" % self.epoch, self.role])

    def announce_epoch(self, epoch: int, role: bytes | None = None) -> None:
        """After adopting a newer epoch: fence again on the live connection, with the role the
        node has in the new topology."""
        if role is not None:
            self.role = role
        if epoch <= self.epoch:
            return
        self.epoch = epoch
        if not self.up and self._napping is not None:
            # Refused (-STALE) or down under the old topology: the new epoch may be accepted,
            # so try at once instead of waiting out the reconnect interval.
            self.health.last_attempt = None
            self._napping.cancel()
        if self.fencing and self.up:
            sink = _FenceSink(self.label, epoch, self.on_stale)
            sink.pending = Pending(sink, trio.current_time(), trio.current_time() + self.timeout)
            self.submit(sink.pending, 0, self.fence_request())

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, serve, and reconnect with backoff until cancelled or retired."""
        started = False
        with trio.CancelScope() as scope:
            self.scope = scope
            while self.health.state is not State.RETIRED:
                now = trio.current_time()
                wait = self.health.next_attempt_at() - now
                if wait > 0:
                    with trio.CancelScope(deadline=now + wait) as self._napping:
                        await trio.sleep_forever()
                    self._napping = None
                    now = trio.current_time()
                self.health.attempt(now)
                sock = None
                self._lost = None
                try:
                    with trio.fail_after(self.timeout):
                        sock = await self._connect()
                except (OSError, trio.TooSlowError, BackendLost, ReplyError) as exc:
                    self._lost = _describe(exc)
                if sock is not None:
                    self.health.connected(trio.current_time())
                    self.up = True
                    self.sock = sock
                    log_event("backend_up", backend=self.label)
                    if not started:
                        task_status.started()
                        started = True
                    try:
                        async with trio.open_nursery() as nursery:
                            self._live = nursery.cancel_scope
                            for task in (self._reader, self._writer, self._timer):
                                nursery.start_soon(self._guard, task, sock, nursery.cancel_scope)
                    finally:
                        self._live = None
                        self.up = False
                        self.sock = None
                        sock.close()
                reason = self._lost or "closed"
                self._drop(f"-ERR backend {self.label} connection lost: {reason}\r\n")
                if self.health.state is not State.RETIRED:
                    # One line per change, not one per retry: a dead node logs once, not 1/s.
                    if sock is not None or reason != self.health.last_error:
                        log_event("backend_down", "warn", backend=self.label, reason=reason)
                    self.health.failed(trio.current_time(), reason)
                if not started:
                    task_status.started()
                    started = True
            self._drop(self.down_error)

    def retire(self) -> None:
        """Stop after the requests in flight are answered (or time out)."""
        self.health.retire(trio.current_time())
        if not self.waiters and self.scope is not None:
            self.scope.cancel()

    def _drop(self, error: str | bytes) -> None:
        """Fail every waiting request; the positions of replies are lost with the socket."""
        self.up = False
        err = error.encode() if isinstance(error, str) else error
        touched = []
        failed = 0
        lost = self.on_lost
        while self.waiters:
            pending, part = self.waiters.popleft()
            if lost is not None and pending.reply is None and lost(self, pending, part, err):
                continue
            if pending.fail_part(part, err):
                failed += 1
                owner: Any = pending.owner
                if not owner.touched:
                    owner.touched = True
                    touched.append(owner)
        self.errors += failed
        self._expired = 0
        self.wq.clear()
        if touched:
            self.on_flush(touched)

    async def _connect(self) -> socket.socket:
        infos = await trio.socket.getaddrinfo(*self.address, type=socket.SOCK_STREAM)
        family, type_, proto, _, addr = infos[0]
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(addr)
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, errno.errorcode.get(err, str(err)))
            await trio.lowlevel.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, f"connect: {errno.errorcode.get(err, err)}")
            hello = []
            if self.password is not None:
                hello.append(encode_command([b"AUTH", self.password.encode()]))
            hello.append(self.fence_request())
            hello.append(b"*1\r\n$4\r\nPING\r\n")
            await _send_all(sock, b"".join(hello))
            buf = b""
            replies: list[bytes] = []
            while len(replies) < len(hello):
                await trio.lowlevel.wait_readable(sock)
                data = sock.recv(65536)
                if not data:
                    raise BackendLost("closed during handshake")
                buf += data
                while (end := reply_end(buf)) > 0:
                    replies.append(buf[:end])
                    buf = buf[end:]
            fence_reply = replies[-2]
            if fence_reply.startswith(b"-ERR unknown command"):
                self.fencing = False  # a stock redis-server: no epochs to announce
                replies.remove(fence_reply)
            elif fence_reply == b"+OK\r\n":
                self.fencing = True
            for reply in replies:
                if reply.startswith(b"-STALE") and self.on_stale is not None:
                    self.on_stale(f"{self.label} answered {reply[1:-2].decode('utf-8', 'replace')}")
                if reply[:1] == b"-":
                    # -STALE n: the node has seen a newer topology than ours; sending it
                    # traffic routed by an older one is what fencing exists to prevent.
                    raise BackendLost(
                        "handshake refused: " + reply[1:-2].decode("utf-8", "replace")
                    )
        except BaseException:
            sock.close()
            raise
        return sock

    # -- tasks ----------------------------------------------------------------------------------

    async def _guard(
        self,
        task: Callable[[socket.socket], Any],
        sock: socket.socket,
        scope: trio.CancelScope,
    ) -> None:
        """The one place a live connection's errors are caught: record why, stop all three."""
        try:
            await task(sock)
        except (OSError, BackendLost, ReplyError, ValueError) as exc:
            if self._lost is None:
                self._lost = _describe(exc)
            scope.cancel()

    async def _writer(self, sock: socket.socket) -> None:
        wq = self.wq
        while True:
            if not wq:
                await self._park_writer()
                continue
            data = b"".join(wq) if len(wq) > 1 else wq[0]
            wq.clear()
            while True:
                try:
                    sent = sock.send(data)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(sock)
                    continue
                if sent == len(data):
                    break
                data = data[sent:]

    async def _park_writer(self) -> None:
        self.writer_task = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self.writer_task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def _reader(self, sock: socket.socket) -> None:
        self._buf = b""
        self._need = 0
        reactor = self.reactor
        if reactor is not None:
            # The reactor reads this socket in its own epoll loop, and calls ``lose`` on an
            # error; this task only holds the registration for the connection's lifetime.
            reactor.watch(self)
            try:
                await trio.sleep_forever()
            finally:
                reactor.forget(self)
            return  # not reached: sleep_forever ends only by cancellation
        emptied = False
        streak = 0
        while True:
            if emptied:
                streak = 0
                await trio.lowlevel.wait_readable(sock)
            emptied = self.read_ready()
            if not emptied:
                streak += 1
                if streak >= FAIR_BATCHES:
                    streak = 0
                    await trio.lowlevel.checkpoint()

    def lose(self, exc: BaseException) -> None:
        """A read by the reactor failed: what ``_guard`` does for a task, record why and stop
        the connection's tasks. The socket leaves the reactor's epoll at once."""
        if self._lost is None:
            self._lost = _describe(exc)
        if self.reactor is not None:
            self.reactor.forget(self)
        if self._live is not None:
            self._live.cancel()

    def read_ready(self) -> bool:
        """Read once and answer every reply now complete; True when the read emptied the
        socket. Raises ``BackendLost`` (or ``OSError``) when the connection is unusable."""
        waiters = self.waiters
        try:
            # Into one buffer the process keeps: ``recv(RECV_SIZE)`` would mmap and munmap a
            # fresh 256 KiB per read (glibc's threshold), three syscalls per reply at -P 1. One
            # for all connections: every read is copied out before anything else runs.
            got = self.sock.recv_into(_READ_BUF)  # type: ignore[union-attr]
        except BlockingIOError:
            return True
        if not got:
            raise BackendLost("connection closed by backend")
        data = _READ_VIEW[:got].tobytes()
        emptied = got < RECV_SIZE  # a short read emptied the socket
        buf = self._buf
        buf = buf + data if buf else data
        n = len(buf)
        if n < self._need:
            self._buf = buf
            return emptied
        ends, self._need = reply_ends(buf)
        if not ends:
            self._buf = buf
            return emptied
        if len(ends) > len(waiters):
            raise BackendLost("reply with no request waiting")
        # The latency histogram inline (FastHistogram.observe without a call per reply).
        lat_counts = self.latency.counts
        lat_bounds = self.latency.bounds
        lat_sum = 0.0
        answered = False
        touched = []
        now = trio.current_time()
        last_started = -1.0
        took = 0.0
        bucket = 0
        pos = 0
        for end in ends:
            pending, part = waiters.popleft()
            if self._expired:
                self._expired -= 1  # a late reply: it proves nothing about the timeouts
                pos = end
                continue
            answered = True
            if (
                buf[pos] == 45  # '-'
                and self.on_readonly is not None
                and buf.startswith(b"-READONLY", pos)
                and self.on_readonly(self, pending, part, buf[pos:end])
            ):
                pos = end  # the proxy retries it once a newer topology routes it elsewhere
                continue
            # Pending.complete inlined: a single reply, or one part of a run or split.
            if pending.reply is not None:
                pos = end  # already failed (timeout, retry): drop the late reply
                continue
            data = buf[pos:end] if (pos or end != n) else buf
            pos = end
            parts = pending.parts
            if parts is not None:
                if parts[part] is not None:
                    continue
                parts[part] = data
            started = pending.started
            if started != last_started:  # a run's replies share one bucket: look once
                last_started = started
                took = now - started
                bucket = bisect_left(lat_bounds, took)
            lat_counts[bucket] += 1
            lat_sum += took
            if parts is None:
                pending.reply = data
            else:
                pending.remaining -= 1
                if pending.remaining:
                    continue
                # every part is filled: merge sees bytes only
                pending.reply = pending.merge(parts)  # type: ignore[arg-type,misc]
                pending.parts = None
            owner: Any = pending.owner
            if not owner.touched:
                owner.touched = True
                touched.append(owner)
        if answered:
            # Only a reply to a request still waiting ends a timeout streak: late replies
            # to expired requests keep coming from a slow backend (docs/faults.md, 11).
            self.health.consecutive_timeouts = 0
        if lat_sum:
            self.latency.total += lat_sum
        self._buf = buf[pos:] if pos < n else b""
        if touched:
            self.on_flush(touched)
        if self.health.state is State.RETIRED and not waiters:
            raise BackendLost("retired")
        return emptied

    async def _timer(self, _sock: socket.socket) -> None:
        waiters = self.waiters
        error = self.timeout_error
        while True:
            await trio.sleep(TICK)
            now = trio.current_time()
            touched = []
            count = 0
            while self._expired < len(waiters):
                pending, part = waiters[self._expired]
                if pending.deadline > now:
                    break
                self._expired += 1
                if pending.fail_part(part, error):
                    count += 1
                    owner: Any = pending.owner
                    if not owner.touched:
                        owner.touched = True
                        touched.append(owner)
            if count:
                self.timeouts += count
                self.errors += count
                log_event("backend_timeout", "warn", backend=self.label, requests=count)
            if touched:
                self.on_flush(touched)
            if count and self.health.timed_out(count):
                raise BackendLost(f"{self.health.consecutive_timeouts} consecutive timeouts")
            if self.health.state is State.RETIRED and self._expired >= len(waiters):
                raise BackendLost("retired")


class _FenceSink:
    """The owner of an SG.FENCE sent on a live connection: logs a refusal, nothing else."""

    def __init__(self, label: str, epoch: int, on_stale: Callable[[str], None] | None) -> None:
        self.label = label
        self.epoch = epoch
        self.on_stale = on_stale
        self.touched = False
        self.pending: Pending | None = None
        self.queue: tuple[()] = ()  # what the proxy's flush scheduling looks at

    def flush(self) -> None:
        self.touched = False
        reply = self.pending.reply if self.pending is not None else None
        if reply is not None and reply[:1] == b"-":
            log_event(
                "fence_refused", "warn", backend=self.label, epoch=self.epoch, reply=reply[1:-2]
            )
            if reply.startswith(b"-STALE") and self.on_stale is not None:
                self.on_stale(f"{self.label} answered {reply[1:-2].decode('utf-8', 'replace')}")


async def _send_all(sock: socket.socket, data: bytes) -> None:
    while data:
        try:
            sent = sock.send(data)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        data = data[sent:]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "connect/handshake timeout"
    if isinstance(exc, BackendLost):
        return exc.reason
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)
