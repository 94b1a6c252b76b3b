"""One benchmark client as a sans-I/O state machine: ``fill(now)`` says what to send,
``feed(data, now)`` takes reply bytes; the caller owns the socket and the clock.

How it works
- Every request sent is remembered in a FIFO with its *intended* send time; replies come back
  in order (RESP), so each reply pops the oldest entry and its latency is ``now - intended``.
- Closed loop (no rate): when every reply of the previous batch is in, the next ``pipeline``
  requests go out at once, intended now (redis-benchmark's ``-P``).
- Open loop (``rate``): request i of this client is due at ``start + i / rate``. ``fill`` sends
  every request that is due, at most ``pipeline`` in flight. A request held back by a slow
  server keeps its due time, so the wait is charged to it: coordinated omission corrected.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import hiredis

from bench.loadstats import Recorder

RequestSource = Callable[[], tuple[bytes, bool, int]]  # (bytes, is_read, keys read)


class ClientLoad:
    def __init__(
        self,
        requests: RequestSource,
        recorder: Recorder,
        *,
        pipeline: int,
        rate: float | None = None,
        start: float = 0.0,
    ) -> None:
        self._requests = requests
        self.recorder = recorder
        self._pipeline = pipeline
        self._interval = None if rate is None else 1.0 / rate
        self.next_due = start
        self.inflight: deque[tuple[float, bool, int]] = deque()
        self._reader = hiredis.Reader()
        self.sent = 0
        self.budget: int | None = None  # requests left to send; None = unlimited

    def fill(self, now: float) -> bytes:
        """The requests to send now (possibly none)."""
        out: list[bytes] = []
        if self._interval is None:
            if self.inflight:
                return b""
            n = self._pipeline
            if self.budget is not None:
                n = min(n, self.budget)
            for _ in range(n):
                self._push(out, now)
        else:
            while self.next_due <= now and len(self.inflight) < self._pipeline:
                if self.budget is not None and self.budget <= 0:
                    break
                self._push(out, self.next_due)
                self.next_due += self._interval
        return b"".join(out)

    def _push(self, out: list[bytes], intended: float) -> None:
        data, is_read, keys = self._requests()
        out.append(data)
        self.inflight.append((intended, is_read, keys))
        self.sent += 1
        if self.budget is not None:
            self.budget -= 1

    def feed(self, data: bytes, now: float) -> None:
        """Reply bytes from the server; every complete reply is counted and timed."""
        rec = self.recorder
        self._reader.feed(data)
        group_t = -1.0
        group_n = 0
        while True:
            reply = self._reader.gets()
            if reply is False:
                break
            intended, is_read, keys = self.inflight.popleft()
            if isinstance(reply, hiredis.ReplyError):
                rec.error(now)
                continue
            if is_read:
                rec.reads += 1
                rec.read_keys += keys
                if isinstance(reply, list):
                    rec.hits += sum(1 for v in reply if v is not None)
                elif reply is not None:
                    rec.hits += 1
            if intended == group_t:
                group_n += 1
                continue
            if group_n:
                rec.record(now - group_t, now, group_n)
            group_t, group_n = intended, 1
        if group_n:
            rec.record(now - group_t, now, group_n)

    def lost(self, now: float) -> int:
        """The connection broke: every request in flight is an error. Returns how many."""
        n = len(self.inflight)
        if n:
            self.recorder.error(now, n)
        self.inflight.clear()
        self._reader = hiredis.Reader()
        return n
