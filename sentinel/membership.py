"""Who the sentinels are, who is forgotten, and the quorum and majority that results (sans-I/O).

How it works
- Members are sentinels (this one included, always) and replicas. Each has the time it was last
  heard from. ``sweep(now)`` forgets those silent for more than ``forget_after_ms``, so a
  decommissioned sentinel or replica stops counting without a ``SENTINEL RESET`` on every node.
- Forgetting sentinels shrinks the majority needed to elect a leader, which is dangerous on the
  minority side of a partition (two of five sentinels that forget the other three would elect
  themselves). So a sentinel forgets peers only while it hears from a majority of its *current*
  membership: the isolated side cannot forget, the majority side can, and the two never both
  believe they are a majority. The same guard applies to replicas, so a sentinel cut off from
  everything keeps its view instead of rewriting it.
- ``quorum_status()`` reports what a failover needs: votes = max(quorum, majority of known
  sentinels), and whether that is reachable at all (quorum larger than the sentinels → never).
"""

from __future__ import annotations

import enum

import attrs

from shardgate.topology import NodeAddress

# An hour: long enough that no partition or maintenance window forgets a live member by mistake.
DEFAULT_FORGET_AFTER_MS = 3_600_000


class MemberKind(enum.Enum):
    SENTINEL = "sentinel"
    REPLICA = "replica"


@attrs.frozen(slots=True)
class Member:
    kind: MemberKind
    key: str  # sentinel id, or str(NodeAddress) of a replica
    address: NodeAddress | None
    last_seen_ms: int


@attrs.frozen(slots=True)
class QuorumStatus:
    sentinels: int  # known, this one included
    reachable: int  # heard from within down_after_ms, this one included
    quorum: int
    majority: int
    needed: int  # votes a leader needs: max(quorum, majority)
    can_fail_over: bool  # with everyone up
    reachable_ok: bool  # with the sentinels reachable now
    reason: str

    @classmethod
    def compute(cls, *, sentinels: int, reachable: int, quorum: int) -> QuorumStatus:
        majority = sentinels // 2 + 1
        needed = max(quorum, majority)
        can = needed <= sentinels
        reachable_ok = can and reachable >= needed
        if not can:
            reason = f"cannot fail over: quorum {quorum} is larger than the {sentinels} sentinels"
        elif not reachable_ok:
            reason = f"cannot fail over now: {reachable} of {needed} needed sentinels reachable"
        else:
            reason = f"OK {reachable} usable sentinels; {needed} needed to fail over"
        return cls(sentinels, reachable, quorum, majority, needed, can, reachable_ok, reason)


@attrs.define(slots=True)
class Membership:
    my_id: str
    forget_after_ms: int = DEFAULT_FORGET_AFTER_MS
    _members: dict[tuple[MemberKind, str], Member] = attrs.field(factory=dict, init=False)

    def seen(
        self, kind: MemberKind, key: str, *, now: int, address: NodeAddress | None = None
    ) -> bool:
        """Record that ``key`` was heard from; True if it is new (or came back)."""
        old = self._members.get((kind, key))
        if kind is MemberKind.SENTINEL and key == self.my_id:
            return False
        addr = address if address is not None else (old.address if old else None)
        last = max(now, old.last_seen_ms) if old else now
        self._members[(kind, key)] = Member(kind, key, addr, last)
        return old is None

    def add(self, kind: MemberKind, key: str, *, now: int, address: NodeAddress | None) -> None:
        """Configured or persisted members start as just seen (a full forget period of grace)."""
        self.seen(kind, key, now=now, address=address)

    def remove(self, kind: MemberKind, key: str) -> None:
        self._members.pop((kind, key), None)

    def sentinels(self) -> tuple[Member, ...]:
        found = [m for (k, _), m in self._members.items() if k is MemberKind.SENTINEL]
        return tuple(sorted(found, key=lambda m: m.key))

    def replicas(self) -> tuple[Member, ...]:
        found = [m for (k, _), m in self._members.items() if k is MemberKind.REPLICA]
        return tuple(sorted(found, key=lambda m: m.key))

    def knows(self, kind: MemberKind, key: str) -> bool:
        return (kind, key) in self._members or (kind is MemberKind.SENTINEL and key == self.my_id)

    def sweep(self, now: int, *, down_after_ms: int) -> tuple[Member, ...]:
        """Forget members silent for longer than ``forget_after_ms``; returns the forgotten."""
        gone = [m for m in self._members.values() if now - m.last_seen_ms > self.forget_after_ms]
        if not gone:
            return ()
        status = self.quorum_status(quorum=1, now=now, down_after_ms=down_after_ms)
        if status.reachable < status.majority:
            return ()  # cut off from most sentinels: our silence is not theirs
        forgotten = gone
        for m in forgotten:
            del self._members[(m.kind, m.key)]
        return tuple(sorted(forgotten, key=lambda m: (m.kind.value, m.key)))

    def quorum_status(self, *, quorum: int, now: int, down_after_ms: int) -> QuorumStatus:
        peers = self.sentinels()
        reachable = 1 + sum(1 for m in peers if now - m.last_seen_ms <= down_after_ms)
        return QuorumStatus.compute(sentinels=1 + len(peers), reachable=reachable, quorum=quorum)

    def next_deadline(self, now: int) -> int | None:
        times = [m.last_seen_ms + self.forget_after_ms + 1 for m in self._members.values()]
        future = [t for t in times if t > now]
        return min(future) if future else None
