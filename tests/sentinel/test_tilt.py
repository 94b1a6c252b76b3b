"""TILT: > 2000 ms between ticks or a clock going backwards; 30 s with no new anomaly to leave."""

from __future__ import annotations

import pytest

from sentinel.detector import IllegalTransition
from sentinel.tilt import TiltGuard, TiltState


def test_regular_ticks_and_a_gap_of_exactly_the_trigger_do_not_tilt() -> None:
    g = TiltGuard(last_tick_ms=0)
    assert g.tick(100) is None
    assert g.tick(2100) is None  # exactly 2000 ms: Redis uses a strict >
    assert not g.tilted


def test_a_stall_enters_tilt_for_exactly_the_period() -> None:
    g = TiltGuard(last_tick_ms=0)
    change = g.tick(2001)
    assert change is not None and change.new is TiltState.TILT and change.event == "+tilt"
    assert change.reason == "2001 ms between ticks"
    assert g.ends_at() == 32_001
    t = 2001
    while t < 31_901:
        t += 100
        assert g.tick(t) is None and g.tilted
    assert g.tick(32_000) is None  # 29 999 ms after the anomaly
    out = g.tick(32_001)
    assert out is not None and out.new is TiltState.NORMAL and out.event == "-tilt"
    assert not g.tilted and g.ends_at() is None


def test_the_clock_going_backwards_tilts() -> None:
    g = TiltGuard(last_tick_ms=5000)
    change = g.tick(4999)
    assert change is not None and change.reason == "clock went backwards"


def test_a_new_anomaly_during_tilt_restarts_the_period() -> None:
    g = TiltGuard(last_tick_ms=0)
    g.tick(3000)
    assert g.tick(10_000) is None  # another stall: still tilted, period restarts silently
    assert g.ends_at() == 40_000
    assert g.tick(33_000) is None or g.tilted


def test_the_transition_table_is_enforced() -> None:
    g = TiltGuard(last_tick_ms=0)
    with pytest.raises(IllegalTransition):
        g._move(TiltState.NORMAL, 1)
