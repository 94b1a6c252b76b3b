"""TILT: stop voting and acting while this sentinel's own clock or loop cannot be trusted (sans-I/O).

How it works
- The shell calls ``tick(now)`` from its timer loop (about every 100 ms). If more than
  ``TILT_TRIGGER_MS`` passed since the previous tick, the process was stalled (SIGSTOP, swap, a
  paused VM); if ``now`` went backwards the clock is wrong. Either way every down timer measured
  across the gap is meaningless: a stalled sentinel would see every node "silent" for the length
  of the stall and fail everything over.
- It then stays in TILT for ``TILT_PERIOD_MS`` after the *last* anomaly (Redis restarts the
  period on every new one), during which the sentinel neither votes nor starts or continues a
  failover; it keeps monitoring so its views are fresh when it leaves TILT.
"""

from __future__ import annotations

import enum

import attrs

from sentinel.detector import IllegalTransition

# Redis sentinel.c: SENTINEL_TILT_TRIGGER 2000, SENTINEL_TILT_PERIOD (SENTINEL_PING_PERIOD*30).
TILT_TRIGGER_MS = 2000
TILT_PERIOD_MS = 30_000


class TiltState(enum.Enum):
    NORMAL = "normal"
    TILT = "tilt"


TRANSITIONS: dict[TiltState, frozenset[TiltState]] = {
    TiltState.NORMAL: frozenset({TiltState.TILT}),
    # TILT → TILT: a new anomaly during TILT restarts the period.
    TiltState.TILT: frozenset({TiltState.NORMAL, TiltState.TILT}),
}


@attrs.frozen(slots=True)
class TiltChange:
    new: TiltState
    at_ms: int
    reason: str

    @property
    def event(self) -> str:
        return "+tilt" if self.new is TiltState.TILT else "-tilt"


@attrs.define(slots=True)
class TiltGuard:
    last_tick_ms: int
    trigger_ms: int = TILT_TRIGGER_MS
    period_ms: int = TILT_PERIOD_MS
    state: TiltState = TiltState.NORMAL
    since_ms: int = 0

    def _move(self, new: TiltState, now: int) -> None:
        if new not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"tilt {self.state.name} -> {new.name}")
        self.state = new
        self.since_ms = now

    def tick(self, now: int) -> TiltChange | None:
        delta = now - self.last_tick_ms
        self.last_tick_ms = now
        if delta < 0 or delta > self.trigger_ms:
            reason = "clock went backwards" if delta < 0 else f"{delta} ms between ticks"
            entered = self.state is TiltState.NORMAL
            self._move(TiltState.TILT, now)
            return TiltChange(TiltState.TILT, now, reason) if entered else None
        if self.state is TiltState.TILT and now - self.since_ms >= self.period_ms:
            self._move(TiltState.NORMAL, now)
            return TiltChange(TiltState.NORMAL, now, "tilt period over")
        return None

    @property
    def tilted(self) -> bool:
        return self.state is TiltState.TILT

    def ends_at(self) -> int | None:
        return self.since_ms + self.period_ms if self.tilted else None
