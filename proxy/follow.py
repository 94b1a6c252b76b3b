"""The timing rules for following sentinels: reconnect backoff and refresh rate limit (sans-I/O).

- ``Backoff``: a sentinel link that fails waits ``INITIAL`` seconds, doubling per failure up to
  ``MAXIMUM``; a successful connection resets it. A down sentinel costs one connection attempt
  per backoff period and never blocks the other links.
- ``RefreshLimiter``: a ``-STALE`` or ``-READONLY`` reply asks for a topology refresh at once,
  but a storm of them (every request to a fenced primary) makes at most one refresh per
  ``interval``; a request inside the interval is deferred to its end, never dropped.

Times are seconds from the caller's monotonic clock.
"""

from __future__ import annotations

# Reconnect backoff for sentinel links: the node's replica link uses 100 ms doubling to 1 s;
# sentinels are fewer and the subscription matters more than the cost of a connect, so 2 s cap.
INITIAL = 0.1
MAXIMUM = 2.0
# At most one STALE/READONLY-triggered refresh per 100 ms: a failover takes ~1 s to publish, so
# this is 10 looks per failover, and a fenced primary answering thousands of writes a second
# does not turn into thousands of SG.TOPOLOGY calls.
REFRESH_INTERVAL = 0.1
# SG.PROXYEPOCH report period (issue 5: proxies report the epoch they route by).
REPORT_INTERVAL = 1.0


class Backoff:
    __slots__ = ("delay", "initial", "maximum")

    def __init__(self, *, initial: float = INITIAL, maximum: float = MAXIMUM) -> None:
        self.initial = initial
        self.maximum = maximum
        self.delay = 0.0

    def failed(self) -> float:
        """Seconds to wait before the next attempt."""
        self.delay = self.initial if self.delay == 0 else min(self.delay * 2, self.maximum)
        return self.delay

    def succeeded(self) -> None:
        self.delay = 0.0


class RefreshLimiter:
    __slots__ = ("interval", "last", "pending")

    def __init__(self, *, interval: float = REFRESH_INTERVAL) -> None:
        self.interval = interval
        self.last: float | None = None
        self.pending = False

    def request(self, now: float) -> float:
        """Ask for a refresh; returns the time it may run (``now`` or the interval's end)."""
        self.pending = True
        return self.due_at(now)

    def due_at(self, now: float) -> float:
        if self.last is None:
            return now
        return max(now, self.last + self.interval)

    def take(self, now: float) -> bool:
        """True when a requested refresh may run now (and records that it ran)."""
        if not self.pending or now < self.due_at(now):
            return False
        self.pending = False
        self.last = now
        return True
