"""The proxy process's own event loop: every client socket and every backend socket.

Why a loop of our own inside trio (measured in docs/performance.md, "The reactor"):
- With a trio task per client, each readable client cost a scheduler pass and an epoll
  re-registration (trio registers with ``EPOLLONESHOT``: one ``epoll_ctl`` per wait). Here one
  task owns an epoll object (level-triggered, each socket registered once) and serves every
  ready socket in one pass.
- Backend sockets are on it too, so a request through an idle proxy is two passes of this loop
  (its client readable, then its backend readable) and nothing else.
- While traffic flows the loop blocks in its own epoll instead of going back through trio's
  between passes. On the VMs we run on, a trio pass (its ``epoll_wait``, the re-arm, the
  scheduling) cost 30-50 µs of a request's latency at one client. Trio's other tasks still get
  their turn: at once when one of them is woken (an instrument sees every reschedule) or when
  trio's own epoll has an event (its fd is on ``hot_ep``: the listener, sentinels, signals, a
  writer waiting for room), and on every ``TICK`` of a periodic timerfd for trio's timers.
- That wait has no timeout: a timeout arms and cancels a kernel timer per wait, which cost
  another 20-30 µs per request here (``proxy/ticker.py``).
- A tick with nothing but ticks since the last one ends the busy wait: the loop waits through
  trio again (on ``ep``, which has every socket but not trio's fd: one epoll inside the other
  both ways is a loop the kernel refuses), and the timer stops, so idle costs nothing.

A socket is read or written only here or from code this loop (or a trio task on the same
thread) calls, never by two tasks at once.
"""

from __future__ import annotations

import select
import time
from typing import TYPE_CHECKING

import trio

from proxy.backend import BackendLost
from proxy.ticker import Ticker
from shardgate.logs import log_event
from shardgate.resp import ReplyError

if TYPE_CHECKING:
    from proxy.backend import BackendConn
    from proxy.client import ClientConn
    from proxy.server import Proxy

MAX_EVENTS = 256  # sockets served per pass
TURN = 0.002  # seconds of client work in one pass before backends and other tasks get a turn
TICK = 0.005  # while busy, trio's timers wait at most this long; a quiet tick ends the busy wait
CLOSE_CHECK = 0.25  # seconds between checks for closing clients past their deadline
OUT_EVENTS = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP
IN_EVENTS = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP


class Reactor:
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.ep = select.epoll()  # every socket: trio waits on it while the loop is idle
        self.hot_ep = select.epoll()  # the same sockets, trio's epoll and the ticker
        self.trio_fd = -1
        self.ticker = Ticker(TICK)
        self.hot_ep.register(self.ticker.fd, select.EPOLLIN)
        self.ticked = False  # a tick came: trio's timers get a turn
        self.work = 0  # events served other than ticks, to tell a quiet tick
        self.clients: dict[int, ClientConn] = {}
        self.backends: dict[int, BackendConn] = {}
        self.serving = False  # inside a pass: replies and requests wait for its end
        # Other trio tasks scheduled and not yet run (the instrument counts them), and whether
        # trio's own epoll has events: either way trio gets a turn before this loop blocks.
        self.runnable = 0
        self.trio_ready = False
        self.task: trio.lowlevel.Task | None = None

    # -- sockets --------------------------------------------------------------------------------

    def add(self, client: ClientConn) -> None:
        fd = client.sock.fileno()
        client.reactor = self
        client.mask = select.EPOLLIN
        self.clients[fd] = client
        self.ep.register(fd, select.EPOLLIN)
        self.hot_ep.register(fd, select.EPOLLIN)
        self.proxy.stats.clients_connected += 1
        self.proxy.stats.clients_total += 1

    def remove(self, client: ClientConn) -> None:
        fd = client.sock.fileno()
        if self.clients.get(fd) is client:
            del self.clients[fd]
            self.proxy.stats.clients_connected -= 1
            self._unregister(fd)

    def modify(self, fd: int, mask: int) -> None:
        self.ep.modify(fd, mask)
        self.hot_ep.modify(fd, mask)

    def _unregister(self, fd: int) -> None:
        for ep in (self.ep, self.hot_ep):
            try:
                ep.unregister(fd)
            except (OSError, ValueError):  # ValueError: the epoll is closed (shutdown)
                pass

    def watch(self, conn: BackendConn) -> None:
        """A backend connection is up: its replies are read here from now on."""
        fd = conn.sock.fileno()  # type: ignore[union-attr]
        conn.watched = fd
        self.backends[fd] = conn
        self.ep.register(fd, select.EPOLLIN)
        self.hot_ep.register(fd, select.EPOLLIN)

    def forget(self, conn: BackendConn) -> None:
        """Before its socket closes (both may ask: ``lose`` and the reader task's end)."""
        fd = conn.watched
        if fd < 0:
            return
        conn.watched = -1
        if self.backends.get(fd) is conn:
            del self.backends[fd]
            self._unregister(fd)

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        self.task = trio.lowlevel.current_task()
        fd = trio_epoll_fd()
        if fd is not None:
            self.hot_ep.register(fd, select.EPOLLIN)
            self.trio_fd = fd
        wakes = _Wakes(self)
        trio.lowlevel.add_instrument(wakes)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._close_late)
                await self._serve()
        finally:
            trio.lowlevel.remove_instrument(wakes)
            for client in list(self.clients.values()):
                client.close()
            self.ep.close()
            self.hot_ep.close()
            self.ticker.close()

    async def _serve(self) -> None:
        ep = self.ep
        hot_ep = self.hot_ep
        ticker = self.ticker
        hot = False
        work_at_tick = 0
        while True:
            if hot:
                if self.runnable or self.trio_ready or self.ticked:
                    if self.ticked:
                        self.ticked = False
                        if self.work == work_at_tick:  # a quiet tick: wait through trio
                            hot = False
                            ticker.stop()
                            continue
                        work_at_tick = self.work
                    self.trio_ready = False
                    await trio.lowlevel.checkpoint()
                # Blocking here holds trio's loop: only while nothing else is runnable, and
                # until the next event, trio's or a tick at the latest.
                events = hot_ep.poll(0 if self.runnable else -1, MAX_EVENTS)
                if not events:
                    continue
            else:
                await trio.lowlevel.wait_readable(ep.fileno())
                events = ep.poll(0, MAX_EVENTS)
                hot = True
                ticker.start()
                work_at_tick = self.work
            self.work += len(events)
            self.serving = True
            try:
                done = self._pass(events, 0)
                while done < len(events):
                    # A flood of pipelined requests must not hold the loop: the backends'
                    # replies (for every other client) and trio's tasks (timeouts) get a turn
                    # (docs/faults.md, 12).
                    self.end_pass()
                    self._read_backends()
                    self.end_pass()
                    await trio.lowlevel.checkpoint()
                    done = self._pass(events, done)
            finally:
                self.serving = False
                self.end_pass()

    def end_pass(self) -> None:
        """Every request of the pass goes out in one send per backend, and every client
        with new replies gets one send."""
        self.proxy.send_unsent()
        self.proxy.flush_dirty()

    def _pass(self, events: list[tuple[int, int]], start: int) -> int:
        """Serve ``events`` from ``start``; returns where it stopped: the end, or the first
        event not served because this turn used up ``TURN``."""
        clients = self.clients
        backends = self.backends
        clock = time.perf_counter
        turn_ends = clock() + TURN
        for index in range(start, len(events)):
            fd, mask = events[index]
            client = clients.get(fd)
            if client is not None:
                self._serve_client(client, mask)
            else:
                conn = backends.get(fd)
                if conn is not None:
                    self._serve_backend(conn)
                elif fd == self.trio_fd:
                    self.trio_ready = True  # trio has a socket or signal to see to: its turn
                elif fd == self.ticker.fd:
                    self.ticker.drain()
                    self.ticked = True
                    self.work -= 1
            if clock() > turn_ends:
                return index + 1
        return len(events)

    def _read_backends(self) -> None:
        for fd, _ in self.ep.poll(0, MAX_EVENTS):
            conn = self.backends.get(fd)
            if conn is not None:
                self._serve_backend(conn)

    @staticmethod
    def _serve_client(client: ClientConn, mask: int) -> None:
        try:
            if client.writing and mask & OUT_EVENTS:
                client.on_writable()
            if client.reading and mask & IN_EVENTS and not client.dead:
                client.on_readable()
            elif mask & (select.EPOLLERR | select.EPOLLHUP) and not client.writing:
                client.close()  # not reading (backpressure, closing) and gone
        except OSError:
            client.close()  # the one place a client's socket errors end it
        except Exception as exc:  # a bug must cost one connection, never the proxy
            log_event("client_failed", "error", client=client.session.id, error=repr(exc))
            client.close()

    @staticmethod
    def _serve_backend(conn: BackendConn) -> None:
        try:
            conn.read_ready()
        except (OSError, BackendLost, ReplyError, ValueError) as exc:
            conn.lose(exc)  # the connection's tasks stop; its requests get the error
        except Exception as exc:  # a bug must cost one connection, never the proxy
            log_event("backend_failed", "error", backend=conn.label, error=repr(exc))
            conn.lose(exc)

    async def _close_late(self) -> None:
        """Closing clients (QUIT, protocol error) whose owed replies never came: closed after
        the request timeout + 1 s, as a task per client would have."""
        while True:
            await trio.sleep(CLOSE_CHECK)
            now = trio.current_time()
            for client in [c for c in self.clients.values() if c.closing]:
                if now >= client.closing_deadline:
                    client.close()


class _Wakes(trio.abc.Instrument):
    """Counts the other tasks that are runnable, so the reactor never blocks in its own epoll
    while trio has work waiting. A flag would not do: a task scheduled before the reactor's
    turn may still be waiting to run after it, later in the same batch."""

    def __init__(self, reactor: Reactor) -> None:
        self.reactor = reactor

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        if task is not self.reactor.task:
            self.reactor.runnable += 1

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        # Tasks scheduled before the instrument was added are stepped without being counted.
        if task is not self.reactor.task and self.reactor.runnable:
            self.reactor.runnable -= 1


def trio_epoll_fd() -> int | None:
    """The fd of trio's own epoll object (Linux), so trio's events end a busy wait. Trio has no
    public API for it; if its internals change this gives None and trio's sockets wait for the
    next ``TICK`` instead (``test_reactor.py`` fails, to say so)."""
    try:
        runner = trio._core._run.GLOBAL_RUN_CONTEXT.runner
        return int(runner.io_manager._epoll.fileno())
    except AttributeError:
        return None
