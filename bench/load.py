"""The load generator: ``--procs`` processes, each driving its share of the clients over raw
non-blocking sockets with one ``selectors`` loop (no framework between the bench and the
syscalls, so the generator costs as little CPU per request as Python allows).

How it works
- The parent forks the load processes. Each connects its clients (AUTH if a password is given),
  SETs its slice of the keyspace when prefilling, then waits on a barrier shared with the parent
  so every process starts the warm-up at the same moment.
- After ``--warmup`` seconds each process swaps in a fresh recorder: the warm-up is thrown away.
  The parent reads the server's CPU time at that moment and again at the end.
- Every second each process sends the parent its counts and that second's histogram (encoded);
  the parent merges them into the live progress line. At the end each sends its full recorder
  and the CPU time it used (getrusage), and the parent merges everything (``bench.loadstats``).
"""

from __future__ import annotations

import heapq
import multiprocessing as mp
import os
import random
import resource
import selectors
import socket
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from typing import Any

from bench.loadconn import ClientLoad
from bench.loadspec import LoadSpec, RequestMaker, encode_command, split_evenly
from bench.loadstats import Latency, Recorder, Result, combine, decode, merge
from bench.serverpid import cpu_seconds

RECV_BYTES = 1 << 18
CONNECT_TIMEOUT = 5.0  # seconds
DRAIN_TIMEOUT = 5.0  # seconds to wait for replies still in flight at the end
PREFILL_PIPELINE = 256


class LoadError(RuntimeError):
    pass


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _connect(spec: LoadSpec) -> socket.socket:
    sock = socket.create_connection((spec.host, spec.port), timeout=CONNECT_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if spec.password is not None:
        sock.sendall(encode_command([b"AUTH", spec.password.encode()]))
        reply = sock.recv(1024)
        if not reply.startswith(b"+OK"):
            sock.close()
            raise LoadError(f"AUTH failed: {reply.decode(errors='replace').strip()}")
    # One PING first: a server that refuses every command (NOAUTH, LOADING) ends the run at
    # once with its own words instead of a table of errors.
    sock.sendall(encode_command([b"PING"]))
    reply = sock.recv(1024)
    if not reply.startswith(b"+PONG"):
        sock.close()
        raise LoadError(f"PING answered {reply.decode(errors='replace').strip()!r}")
    sock.setblocking(False)
    return sock


def _prefill(sock: socket.socket, maker: RequestMaker, first: int, last: int) -> None:
    """SET keys first..last-1, pipelined, blocking."""
    sock.setblocking(True)
    try:
        for lo in range(first, last, PREFILL_PIPELINE):
            hi = min(last, lo + PREFILL_PIPELINE)
            sock.sendall(b"".join(maker.set_request(i) for i in range(lo, hi)))
            want, got = hi - lo, 0
            while got < want:
                data = sock.recv(RECV_BYTES)
                if not data:
                    raise LoadError("connection closed during prefill")
                got += data.count(b"\r\n")  # every SET reply is one line (+OK or -ERR)
    finally:
        sock.setblocking(False)


class _Worker:
    """One load process's event loop."""

    def __init__(self, spec: LoadSpec, index: int, report: Connection) -> None:
        self.spec = spec
        self.index = index
        self.report = report
        self.rng = random.Random(spec.seed)
        self.maker = RequestMaker(spec, self.rng)
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self.clients: list[ClientLoad] = []
        self.outbuf: list[bytes] = []
        self.closed_loop = spec.rate is None
        self.writing: list[bool] = []
        self.blocked: list[bool] = []  # open loop: due, but --pipeline requests in flight
        self.due: list[tuple[float, int]] = []  # open loop: (next due time, client) heap

    def connect(self, prefill_range: tuple[int, int] | None) -> None:
        for _ in range(self.spec.clients):
            self.socks.append(_connect(self.spec))
        if prefill_range is not None:
            _prefill(self.socks[0], self.maker, *prefill_range)

    def run(self, start: float) -> dict[str, Any]:
        spec = self.spec
        per_client_rate = None if spec.rate is None else spec.rate / spec.clients
        recorder = Recorder(start)
        budgets = split_evenly(spec.requests, spec.clients) if spec.requests is not None else None
        for i, sock in enumerate(self.socks):
            # Open loop: clients' schedules are staggered so they do not all fire together.
            offset = 0.0 if per_client_rate is None else i / (per_client_rate * spec.clients)
            c = ClientLoad(
                self.maker.next,
                recorder,
                pipeline=spec.pipeline,
                rate=per_client_rate,
                start=start + offset,
            )
            self.clients.append(c)
            self.outbuf.append(b"")
            self.writing.append(False)
            self.blocked.append(False)
            self.sel.register(sock, selectors.EVENT_READ, i)
        measure_at = start + spec.warmup
        end = None if spec.duration is None else measure_at + spec.duration
        warm = spec.warmup > 0
        cpu0 = _cpu_self()
        next_tick = start + 1.0
        if not warm:
            self._arm_budgets(budgets)
        first = True
        stopped = False
        while True:
            now = time.monotonic()
            if now >= next_tick:
                self._report_tick(recorder, now, warm=warm)
                next_tick += 1.0
            if warm and now >= measure_at:
                warm = False
                recorder = Recorder(measure_at)
                for c in self.clients:
                    c.recorder = recorder
                self._arm_budgets(budgets)
                cpu0 = _cpu_self()
            sending = end is None or now < end
            if not sending and not stopped:
                stopped = True
                for c in self.clients:
                    c.budget = 0
            if first:
                # Closed loop: a client refills as soon as its last reply is in (in _ready), so
                # only the first round is sent from here. Open loop: this seeds the schedule.
                first = False
                for i in range(len(self.clients)):
                    self._pump(i, now)
            else:
                # Open loop: only the clients whose next request is due (a heap, not a scan).
                while self.due and self.due[0][0] <= now:
                    self._pump(heapq.heappop(self.due)[1], now)
            ending = not sending or (budgets is not None and not warm and self._spent())
            if ending and not any(c.inflight for c in self.clients):
                break
            if not sending and now > end + DRAIN_TIMEOUT:  # type: ignore[operator]
                for c in self.clients:
                    c.lost(now)
                break
            timeout = min(next_tick - now, 0.05)
            if self.due:
                timeout = max(0.0, min(timeout, self.due[0][0] - now))
            for key, events in self.sel.select(timeout):
                self._ready(key.data, events)
        finished = time.monotonic()
        out = recorder.encode()
        out["cpu_s"] = _cpu_self() - cpu0
        out["elapsed_s"] = finished - recorder.start
        return out

    def _arm_budgets(self, budgets: list[int] | None) -> None:
        if budgets is not None:
            for c, b in zip(self.clients, budgets):
                c.budget = b

    def _spent(self) -> bool:
        return all(c.budget == 0 for c in self.clients)

    def _report_tick(self, recorder: Recorder, now: float, *, warm: bool = False) -> None:
        second = int(now - recorder.start) - 1
        hist = recorder.intervals.get(second)
        self.report.send(
            {
                "tick": True,
                "warm": warm,
                "ops": hist.get_total_count() if hist else 0,
                "errors": recorder.interval_errors.get(second, 0),
                "histogram": hist.encode() if hist else None,
            }
        )

    def _send(self, i: int, data: bytes) -> None:
        pending = self.outbuf[i] + data if self.outbuf[i] else data
        sock = self.socks[i]
        try:
            sent = sock.send(pending)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._broken(i)
            return
        self.outbuf[i] = rest = pending[sent:]
        writing = bool(rest)
        if writing != self.writing[i]:  # epoll_ctl only when the interest changes
            self.writing[i] = writing
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
            self.sel.modify(sock, events, i)

    def _ready(self, i: int, events: int) -> None:
        sock = self.socks[i]
        if events & selectors.EVENT_WRITE and self.outbuf[i]:
            self._send(i, b"")
        if events & selectors.EVENT_READ:
            try:
                data = sock.recv(RECV_BYTES)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._broken(i)
                return
            c = self.clients[i]
            c.feed(data, time.monotonic())
            if self.closed_loop:
                if not c.inflight:
                    more = c.fill(time.monotonic())  # closed loop: intended = now
                    if more:
                        self._send(i, more)
            elif self.blocked[i]:
                self.blocked[i] = False  # a reply freed a slot: send the overdue requests
                self._pump(i, time.monotonic())

    def _pump(self, i: int, now: float) -> None:
        """Send what client ``i`` has due; open loop: reschedule it on the heap."""
        c = self.clients[i]
        data = c.fill(now)
        if data:
            self._send(i, data)
        if self.closed_loop or c.budget == 0:
            return
        if c.next_due <= now:  # held back by the --pipeline cap: resumes on its next reply
            self.blocked[i] = True
        else:
            heapq.heappush(self.due, (c.next_due, i))

    def _broken(self, i: int) -> None:
        """Count what was in flight as errors and reconnect (once; a dead server ends the run)."""
        now = time.monotonic()
        self.clients[i].lost(now)
        self.sel.unregister(self.socks[i])
        self.socks[i].close()
        self.outbuf[i] = b""
        self.writing[i] = False
        time.sleep(0.1)
        try:
            self.socks[i] = _connect(self.spec)
        except OSError as exc:
            raise LoadError(f"lost the connection and could not reconnect: {exc}") from exc
        self.sel.register(self.socks[i], selectors.EVENT_READ, i)
        if self.blocked[i]:
            self.blocked[i] = False
            self._pump(i, time.monotonic())


def _worker_main(
    spec: LoadSpec, index: int, prefill: tuple[int, int] | None, barrier: Barrier, pipe: Connection
) -> None:
    try:
        worker = _Worker(spec, index, pipe)
        worker.connect(prefill)
    except (OSError, LoadError) as exc:
        barrier.abort()
        pipe.send({"error": f"{type(exc).__name__}: {exc}"})
        return
    try:
        barrier.wait()
    except Exception:  # the parent or a sibling aborted
        return
    try:
        pipe.send({"done": worker.run(time.monotonic())})
    except (OSError, LoadError) as exc:
        pipe.send({"error": f"{type(exc).__name__}: {exc}"})


def _progress_line(second: int, warm: bool, ops: int, errors: int, p99_us: int) -> str:
    phase = "warm-up" if warm else "measure"
    return (
        f"\r[{phase} {second:4d} s] {ops:>10,} ops/s  p99 {p99_us / 1000:8.3f} ms  "
        f"errors {errors:,}   "
    )


def run(
    spec: LoadSpec,
    *,
    server_pids: list[int],
    progress: Callable[[str], None] | None = None,
) -> Result:
    """Run the load; return the merged result. Raises LoadError if a process fails."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(spec.procs + 1)
    spans = split_evenly(spec.keys, spec.procs)
    procs, pipes = [], []
    lo = 0
    for i in range(spec.procs):
        prefill = (lo, lo + spans[i]) if spec.prefill else None
        lo += spans[i]
        parent_end, child_end = ctx.Pipe(duplex=False)
        p = ctx.Process(
            target=_worker_main,
            args=(spec.share(i), i, prefill, barrier, child_end),
            daemon=True,
        )
        p.start()
        child_end.close()
        procs.append(p)
        pipes.append(parent_end)
    try:
        return _collect(spec, barrier, procs, pipes, server_pids, progress)
    finally:
        for p in procs:
            p.join(timeout=2.0)
            if p.is_alive():
                p.kill()
                p.join()


def _collect(
    spec: LoadSpec,
    barrier: Barrier,
    procs: list[Any],
    pipes: list[Connection],
    server_pids: list[int],
    progress: Callable[[str], None] | None,
) -> Result:
    try:
        barrier.wait(timeout=CONNECT_TIMEOUT + 60 + spec.keys / 20_000)
    except Exception:
        errors = [m["error"] for p in pipes if p.poll(1.0) for m in [p.recv()] if "error" in m]
        raise LoadError(errors[0] if errors else "load processes did not start") from None
    start = time.monotonic()
    server_cpu0: float | None = None
    results: list[dict[str, Any] | None] = [None] * len(pipes)
    ticks: dict[int, list[dict[str, Any]]] = {}
    second = 0
    warm_seconds = 0
    while any(r is None for r in results):
        if server_cpu0 is None and time.monotonic() >= start + spec.warmup:
            server_cpu0 = cpu_seconds(server_pids)
        for i, pipe in enumerate(pipes):
            if results[i] is not None or not pipe.poll(0.02):
                continue
            try:
                msg = pipe.recv()
            except EOFError:
                raise LoadError(f"load process {i} died (exit code {procs[i].exitcode})") from None
            if "error" in msg:
                raise LoadError(f"load process {i}: {msg['error']}")
            if "done" in msg:
                results[i] = msg["done"]
            else:
                ticks.setdefault(i, []).append(msg)
        if progress and ticks and all(len(ticks.get(i, [])) > second for i in range(len(pipes))):
            row = [ticks[i][second] for i in range(len(pipes))]
            hist = merge(decode(t["histogram"]) for t in row if t["histogram"])
            warm = any(t["warm"] for t in row)
            warm_seconds += warm
            progress(
                _progress_line(
                    second + 1 - (0 if warm else warm_seconds),
                    warm,
                    sum(t["ops"] for t in row),
                    sum(t["errors"] for t in row),
                    Latency.of(hist).p99,
                )
            )
            second += 1
    server_cpu1 = cpu_seconds(server_pids)
    if progress:
        progress("\n")
    done = [r for r in results if r is not None]
    ops = sum(r["ops"] for r in done)
    server_us = None
    if server_pids and server_cpu0 is not None and ops:
        server_us = (server_cpu1 - server_cpu0) * 1e6 / ops
    return combine(
        done,
        elapsed_s=max(r["elapsed_s"] for r in done),
        loadgen_cpu_s=sum(r["cpu_s"] for r in done),
        server_cpu_us_per_req=server_us,
        server_pids=server_pids,
    )


def stderr_progress(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def worker_count_hint() -> int:
    return max(1, (os.cpu_count() or 1) // 2)
