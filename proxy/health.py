"""Backend connection health: a small state machine with the transitions in one table.

How it works
- A backend connection starts CONNECTING. A successful handshake (AUTH if configured, PING)
  makes it UP; only an UP connection is given requests. Anything else fails fast: the request
  gets ``-ERR … down`` at once instead of waiting for a timeout.
- An UP connection goes DOWN when its socket fails, or after ``fail_after`` consecutive request
  timeouts (a reply in between resets the count). Going DOWN fails every request still waiting on
  that connection, since replies are matched by position and the positions are now unknowable.
- A DOWN connection retries no sooner than ``interval`` seconds after its previous attempt began
  (at most one attempt per second per backend by default).

Sans-I/O: times are passed in.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"
    RETIRED = "retired"  # removed by a config reload; drains, then closes


TRANSITIONS: dict[State, frozenset[State]] = {
    State.CONNECTING: frozenset({State.UP, State.DOWN, State.RETIRED}),
    State.UP: frozenset({State.DOWN, State.RETIRED}),
    State.DOWN: frozenset({State.CONNECTING, State.RETIRED}),
    State.RETIRED: frozenset(),
}


class IllegalTransition(Exception):
    pass


class Health:
    __slots__ = (
        "consecutive_timeouts",
        "fail_after",
        "interval",
        "last_attempt",
        "last_error",
        "since",
        "state",
    )

    def __init__(self, *, fail_after: int, interval: float) -> None:
        self.state = State.DOWN
        self.fail_after = fail_after
        self.interval = interval
        self.last_attempt: float | None = None
        self.since = 0.0
        self.consecutive_timeouts = 0
        self.last_error = "none"

    def _to(self, state: State, now: float) -> None:
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self.state.value} -> {state.value}")
        self.state = state
        self.since = now

    def next_attempt_at(self) -> float:
        """The earliest time a connection attempt may start."""
        return 0.0 if self.last_attempt is None else self.last_attempt + self.interval

    def attempt(self, now: float) -> None:
        if now < self.next_attempt_at():
            raise IllegalTransition("reconnect attempted before the backoff elapsed")
        self.last_attempt = now
        self._to(State.CONNECTING, now)

    def connected(self, now: float) -> None:
        self.consecutive_timeouts = 0
        self._to(State.UP, now)

    def failed(self, now: float, reason: str) -> None:
        """The connection attempt or the live connection failed."""
        self.last_error = reason
        self._to(State.DOWN, now)

    def retire(self, now: float) -> None:
        self._to(State.RETIRED, now)

    def replied(self) -> None:
        self.consecutive_timeouts = 0

    def timed_out(self, count: int = 1) -> bool:
        """Record request timeouts; True when the connection should be dropped."""
        self.consecutive_timeouts += count
        return self.consecutive_timeouts >= self.fail_after
