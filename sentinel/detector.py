"""The failure detector: SDOWN from missing replies, ODOWN from a quorum of sentinels (sans-I/O).

How it works
- Every monitored thing (a primary, a replica, a peer sentinel) has a ``Watch``: the time of its
  last *valid* reply (Redis's ``last_avail_time``: +PONG, -LOADING and -MASTERDOWN count, other
  errors do not), the ``Health`` state and the topology epoch at which the watch was (re)set.
- ``tick(now)`` moves a watch UP → SDOWN once ``now - last_valid_reply > down_after_ms`` (the
  strict ``>`` is Redis's ``sentinelCheckSubjectivelyDown``). A valid reply moves it back to UP.
- A primary in SDOWN goes ODOWN when ``quorum`` sentinels, this one included, say it is down.
  Peer reports count only while they are fresh (``report_fresh_ms``, Redis: 5 times the 1 s ask
  period) and only when stamped with the **same topology epoch** as the watch: a report made
  before a failover, about whatever was primary then, can never count against the node that was
  promoted since. ``reset`` (called when the topology changes a node's role) also restarts the
  down timer and drops all reports, so a freshly promoted primary gets a full ``down_after_ms``.
  This is the fix for Redis Sentinel's spurious second failover, where a health check that
  raced the down timer failed over a healthy, just-promoted primary.

The states and their transitions are one table (``TRANSITIONS``); anything else raises.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import attrs

from shardgate.topology import NodeAddress

# Either a store node's address or a peer sentinel's id.
Key = NodeAddress | str

# Redis: is-master-down-by-addr replies are considered for SENTINEL_ASK_PERIOD*5 (5 s).
DEFAULT_REPORT_FRESH_MS = 5000


class Health(enum.Enum):
    UP = "up"
    SDOWN = "sdown"
    ODOWN = "odown"


class NodeKind(enum.Enum):
    PRIMARY = "primary"
    REPLICA = "replica"
    SENTINEL = "sentinel"


# ODOWN is only reachable through SDOWN: a sentinel never agrees a primary is down when it can
# itself still reach it (Redis does the same).
TRANSITIONS: dict[Health, frozenset[Health]] = {
    Health.UP: frozenset({Health.SDOWN}),
    Health.SDOWN: frozenset({Health.UP, Health.ODOWN}),
    Health.ODOWN: frozenset({Health.SDOWN, Health.UP}),
}


class IllegalTransition(RuntimeError):
    """A state machine was asked for a transition its table does not allow (a bug)."""


@attrs.frozen(slots=True)
class HealthChange:
    """One state change, reported to the caller (and from there to logs and ``+sdown`` etc.)."""

    key: Key
    kind: NodeKind
    old: Health
    new: Health
    at_ms: int

    @property
    def event(self) -> str:
        """The Redis Sentinel event name: ``+sdown``, ``-sdown``, ``+odown``, ``-odown``."""
        if self.new is Health.ODOWN:
            return "+odown"
        if self.old is Health.ODOWN:
            return "-odown" if self.new is Health.SDOWN else "-sdown"
        return "+sdown" if self.new is Health.SDOWN else "-sdown"


@attrs.frozen(slots=True)
class PeerReport:
    down: bool
    epoch: int
    at_ms: int


@attrs.define(slots=True)
class Watch:
    kind: NodeKind
    epoch: int
    last_valid_reply_ms: int
    state: Health = Health.UP
    since_ms: int = 0
    down_since_ms: int | None = None  # when it last left UP (Redis's s_down_since_time)
    reports: dict[str, PeerReport] = attrs.field(factory=dict)

    def move(self, new: Health, now: int) -> None:
        if new not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"health {self.state.name} -> {new.name}")
        if self.state is Health.UP:
            self.down_since_ms = now
        elif new is Health.UP:
            self.down_since_ms = None
        self.state = new
        self.since_ms = now


def _positive(_inst: object, attr: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{attr.name} must be a positive integer, got {value!r}")


@attrs.define(slots=True)
class FailureDetector:
    down_after_ms: int = attrs.field(validator=_positive)
    quorum: int = attrs.field(validator=_positive)
    report_fresh_ms: int = attrs.field(default=DEFAULT_REPORT_FRESH_MS, validator=_positive)
    _watches: dict[Key, Watch] = attrs.field(factory=dict, init=False)

    # -- membership of the watch list -------------------------------------------------------

    def watch(self, key: Key, kind: NodeKind, *, epoch: int, now: int) -> None:
        """Start watching ``key``; a new watch gets a full ``down_after_ms`` (Redis does too)."""
        if key not in self._watches:
            self._watches[key] = Watch(kind, epoch, now, since_ms=now)
        else:
            self.reset(key, kind, epoch=epoch, now=now)

    def unwatch(self, key: Key) -> None:
        self._watches.pop(key, None)

    def reset(self, key: Key, kind: NodeKind, *, epoch: int, now: int) -> tuple[HealthChange, ...]:
        """The topology gave ``key`` a new role at ``epoch``: forget evidence about the old one.

        Peer reports are dropped (they were about the node's previous role). A node that became
        primary also gets a fresh down timer and starts UP, like Redis's reset of a switched
        master; a demoted node keeps its timer (a dead old primary stays SDOWN) but cannot stay
        ODOWN, which only primaries can be.
        """
        w = self._watches.get(key)
        if w is None:
            self.watch(key, kind, epoch=epoch, now=now)
            return ()
        changes = []
        if kind is NodeKind.PRIMARY:
            w.last_valid_reply_ms = max(w.last_valid_reply_ms, now)
            if w.state is not Health.UP:
                changes.append(HealthChange(key, w.kind, w.state, Health.UP, now))
                w.move(Health.UP, now)
        elif w.state is Health.ODOWN:
            changes.append(HealthChange(key, w.kind, w.state, Health.SDOWN, now))
            w.move(Health.SDOWN, now)
        w.kind, w.epoch = kind, epoch
        w.reports.clear()
        return tuple(changes)

    def restamp(self, key: Key, *, epoch: int, now: int) -> tuple[HealthChange, ...]:
        """A new topology epoch that left ``key``'s role alone: keep its timer, drop reports
        (they were stamped with the old epoch), and fall back from ODOWN to SDOWN until peers
        report again under the new epoch."""
        w = self._watches.get(key)
        if w is None or w.epoch == epoch:
            return ()
        w.epoch = epoch
        w.reports.clear()
        if w.state is Health.ODOWN:
            w.move(Health.SDOWN, now)
            return (HealthChange(key, w.kind, Health.ODOWN, Health.SDOWN, now),)
        return ()

    def keys(self) -> Iterable[Key]:
        return self._watches.keys()

    # -- observations -----------------------------------------------------------------------

    def on_reply(self, key: Key, *, now: int, valid: bool = True) -> tuple[HealthChange, ...]:
        """A reply to a PING (or any message from a peer). Invalid replies prove nothing."""
        w = self._watches.get(key)
        if w is None or not valid:
            return ()
        w.last_valid_reply_ms = max(w.last_valid_reply_ms, now)
        if w.state is Health.UP:
            return ()
        change = HealthChange(key, w.kind, w.state, Health.UP, now)
        w.move(Health.UP, now)
        return (change,)

    def on_peer_report(
        self, peer: str, key: Key, *, down: bool, epoch: int, now: int
    ) -> tuple[HealthChange, ...]:
        """A peer's view of a primary, stamped with the topology epoch it judged under."""
        w = self._watches.get(key)
        if w is None or w.kind is not NodeKind.PRIMARY or epoch != w.epoch:
            return ()  # about another role of this node, or from a sentinel on another epoch
        w.reports[peer] = PeerReport(down, epoch, now)
        return self._check_odown(key, w, now)

    def forget_peer(self, peer: str) -> None:
        """A forgotten sentinel's reports stop counting at once."""
        for w in self._watches.values():
            w.reports.pop(peer, None)

    # -- time -------------------------------------------------------------------------------

    def tick(self, now: int) -> tuple[HealthChange, ...]:
        changes: list[HealthChange] = []
        for key, w in self._watches.items():
            if w.state is Health.UP and now - w.last_valid_reply_ms > self.down_after_ms:
                changes.append(HealthChange(key, w.kind, Health.UP, Health.SDOWN, now))
                w.move(Health.SDOWN, now)
            changes.extend(self._check_odown(key, w, now))
        return tuple(changes)

    def next_deadline(self, now: int) -> int | None:
        """The earliest time at which ``tick`` could change something (for a precise shell)."""
        best: int | None = None
        for w in self._watches.values():
            candidates = []
            if w.state is Health.UP:
                candidates.append(w.last_valid_reply_ms + self.down_after_ms + 1)
            elif w.state is Health.ODOWN:
                fresh = [r.at_ms for r in w.reports.values() if r.down]
                candidates.extend(at + self.report_fresh_ms + 1 for at in fresh)
            for c in candidates:
                if c > now and (best is None or c < best):
                    best = c
        return best

    def _check_odown(self, key: Key, w: Watch, now: int) -> tuple[HealthChange, ...]:
        if w.kind is not NodeKind.PRIMARY or w.state is Health.UP:
            return ()
        enough = self.votes_down(key, now) >= self.quorum
        if w.state is Health.SDOWN and enough:
            w.move(Health.ODOWN, now)
            return (HealthChange(key, w.kind, Health.SDOWN, Health.ODOWN, now),)
        if w.state is Health.ODOWN and not enough:
            w.move(Health.SDOWN, now)
            return (HealthChange(key, w.kind, Health.ODOWN, Health.SDOWN, now),)
        return ()

    # -- queries ----------------------------------------------------------------------------

    def votes_down(self, key: Key, now: int) -> int:
        """How many sentinels (this one included) currently hold ``key`` down."""
        w = self._watches.get(key)
        if w is None:
            return 0
        own = 1 if w.state is not Health.UP else 0
        return own + sum(
            1
            for r in w.reports.values()
            if r.down and r.epoch == w.epoch and now - r.at_ms <= self.report_fresh_ms
        )

    def peer_views(self, key: Key, now: int) -> dict[str, Health]:
        """Each peer's fresh opinion of a primary (for status); stale or absent → not listed."""
        w = self._watches.get(key)
        if w is None:
            return {}
        return {
            peer: Health.SDOWN if r.down else Health.UP
            for peer, r in sorted(w.reports.items())
            if r.epoch == w.epoch and now - r.at_ms <= self.report_fresh_ms
        }

    def state(self, key: Key) -> Health:
        w = self._watches.get(key)
        return Health.UP if w is None else w.state

    def is_down(self, key: Key) -> bool:
        return self.state(key) is not Health.UP

    def since(self, key: Key) -> int | None:
        w = self._watches.get(key)
        return None if w is None else w.since_ms

    def down_since(self, key: Key) -> int | None:
        w = self._watches.get(key)
        return None if w is None else w.down_since_ms

    def last_reply(self, key: Key) -> int | None:
        w = self._watches.get(key)
        return None if w is None else w.last_valid_reply_ms

    def epoch_of(self, key: Key) -> int | None:
        w = self._watches.get(key)
        return None if w is None else w.epoch
