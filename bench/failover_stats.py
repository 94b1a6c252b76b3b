"""The arithmetic of ``bench failover`` (pure): blackouts, lost writes, percentiles, the table.

- A write is *acknowledged* when its reply was ``+OK`` (and, in ``--sync`` mode against Redis,
  ``WAIT 1`` then reported a replica); errors and timeouts are not acknowledged.
- The *blackout* of one kill through one path is the time from the SIGKILL to the first
  acknowledged write that was *sent* after it. Writes already in flight do not count: their
  reply may have left the old primary before it died.
- A write is *lost* when it was acknowledged but its key is missing once the shard has settled
  under its new primary.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import attrs

from bench.markdown import table


@attrs.frozen(slots=True)
class Write:
    key: bytes
    sent: float  # monotonic seconds
    acked: float | None  # None: error or timeout


def blackout(writes: Iterable[Write], kill_at: float) -> float | None:
    """Seconds from ``kill_at`` to the first acknowledged write sent at or after it."""
    acks = [w.acked for w in writes if w.acked is not None and w.sent >= kill_at]
    return min(acks) - kill_at if acks else None


def lost_keys(acknowledged: Iterable[bytes], present: Iterable[bytes]) -> list[bytes]:
    keep = set(present)
    return [k for k in acknowledged if k not in keep]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a small sample; the sample's max at q=100."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@attrs.frozen(slots=True)
class Kill:
    """One kill: which node, and per path the blackout (None: no write got through in time)."""

    victim: str
    blackouts: Mapping[str, float | None]
    acked: int  # acknowledged writes checked for this kill (the killed shard's)
    lost: int


@attrs.frozen(slots=True)
class Summary:
    path: str
    kills: int
    recovered: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None


def summarize(kills: Sequence[Kill]) -> list[Summary]:
    paths: list[str] = []
    for k in kills:
        paths += [p for p in k.blackouts if p not in paths]
    out = []
    for p in paths:
        values = [v for k in kills if (v := k.blackouts.get(p)) is not None]
        if values:
            ms = [v * 1000 for v in values]
            out.append(
                Summary(p, len(kills), len(ms), percentile(ms, 50), percentile(ms, 99), max(ms))
            )
        else:
            out.append(Summary(p, len(kills), 0, None, None, None))
    return out


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def render(system: str, mode: str, kills: Sequence[Kill]) -> str:
    """A markdown table: one row per path, and the lost writes over every kill."""
    rows = [
        [
            f"{system}, {mode}, {s.path}",
            f"{s.recovered}/{s.kills}",
            _ms(s.p50_ms),
            _ms(s.p99_ms),
            _ms(s.max_ms),
        ]
        for s in summarize(kills)
    ]
    lost = sum(k.lost for k in kills)
    acked = sum(k.acked for k in kills)
    for r in rows:
        r.append(f"{lost:,} of {acked:,}")
    header = [
        "system, writes, path",
        "recovered",
        "p50 ms",
        "p99 ms",
        "max ms",
        "acked writes lost",
    ]
    return table(header, rows)
