"""Epochs, votes and leader election (sans-I/O).

How it works
- Epochs are global and only grow. ``current_epoch`` is the highest epoch this sentinel has seen
  (its own attempts, peers' requests, replies and hellos). A topology published by a leader
  carries the epoch that leader was elected in, so two topologies with one epoch are identical.
- Voting (``Elector.handle_request``): a sentinel votes at most once per epoch, first come first
  served, never in an epoch lower than ``current_epoch``, and never for a candidate whose newest
  topology is older than its own (the candidate would publish a change on top of a stale
  topology). A repeated request from the same candidate gets the same answer (idempotent: the
  network may duplicate). The new epoch and the vote are persisted *before* the reply leaves.
- Candidacy: the candidate bumps ``current_epoch``, votes for itself (persisted), and asks every
  known sentinel. It is elected once granted votes reach ``needed = max(quorum, majority of all
  known sentinels)``: quorum says "enough of us think it is down", the majority guarantees two
  candidates can never both win one epoch (two majorities of one set always share a voter, and
  that voter votes once per epoch).
- Timing (``AttemptTimer``): after a shard goes ODOWN, a sentinel waits a random back-off in
  ``[0, max_backoff_ms]`` before asking (so sentinels that saw ODOWN together rarely split the
  vote). A failed attempt, or a vote given to another candidate for that shard, blocks a new
  attempt for ``failover_timeout_ms`` plus a fresh back-off; the retry uses a higher epoch.
  A split vote (every voter answered, and the answers show nobody can reach ``needed``) is the
  exception: the attempt ends at once and is retried after a fresh back-off only, so a
  three-way collision costs a round trip and a back-off instead of two failover timeouts. So
  is a contested one (a rival candidate holds votes in this epoch and the voters still silent
  did not answer within a back-off period): with one voter cut off, a split is never certain.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from sentinel.messages import VoteReply, VoteRequest
from sentinel.state import Vote


class RandomSource(Protocol):
    """What ``random.Random`` provides; injected so tests choose the back-offs."""

    def randrange(self, start: int, stop: int = ..., step: int = ...) -> int: ...


# Redis: SENTINEL_MAX_DESYNC 1000 ms. Ours scales with down_after_ms: on a LAN an election takes
# about one round trip, so a fifth of the down period spreads candidates without slowing the
# failover much (200 ms at down_after_ms = 1000).
MAX_DESYNC_MS = 1000


def max_backoff_ms(down_after_ms: int) -> int:
    return max(10, min(MAX_DESYNC_MS, down_after_ms // 5))


def majority(sentinels: int) -> int:
    return sentinels // 2 + 1


def votes_needed(*, sentinels: int, quorum: int) -> int:
    return max(quorum, majority(sentinels))


@attrs.define(slots=True)
class Elector:
    my_id: str
    current_epoch: int = 0
    vote: Vote | None = None

    def observe_epoch(self, epoch: int) -> bool:
        """Adopt a higher epoch seen anywhere; True when state changed (persist it)."""
        if epoch > self.current_epoch:
            self.current_epoch = epoch
            return True
        return False

    def handle_request(self, req: VoteRequest, *, topology_epoch: int) -> tuple[VoteReply, bool]:
        """Answer a vote request; the bool says the state changed and must be persisted first."""
        if req.epoch < self.current_epoch:
            return VoteReply(self.my_id, req.epoch, None, self.current_epoch), False
        changed = self.observe_epoch(req.epoch)
        if self.vote is not None and self.vote.epoch == req.epoch:
            return VoteReply(self.my_id, req.epoch, self.vote.leader, self.current_epoch), changed
        if req.topology_epoch < topology_epoch:
            return VoteReply(self.my_id, req.epoch, None, self.current_epoch), changed
        self.vote = Vote(req.epoch, req.sender, req.shard)
        return VoteReply(self.my_id, req.epoch, req.sender, self.current_epoch), True

    def start_candidacy(
        self, shard: str, *, topology_epoch: int, now: int, deadline_ms: int
    ) -> tuple[Candidacy, VoteRequest]:
        """Bump the epoch and vote for ourselves (persist before sending the request)."""
        self.current_epoch += 1
        self.vote = Vote(self.current_epoch, self.my_id, shard)
        cand = Candidacy(self.my_id, self.current_epoch, shard, now, deadline_ms)
        return cand, VoteRequest(self.my_id, self.current_epoch, shard, topology_epoch)

    def voted_for(self, epoch: int) -> str | None:
        return self.vote.leader if self.vote is not None and self.vote.epoch == epoch else None


@attrs.define(slots=True)
class Candidacy:
    my_id: str
    epoch: int
    shard: str
    started_ms: int
    deadline_ms: int
    # voter → whom it voted for in this epoch ("" when it refused without a vote).
    answers: dict[str, str] = attrs.field(factory=dict)
    rival_at_ms: int | None = None  # when a reply first showed a vote for another candidate

    def __attrs_post_init__(self) -> None:
        self.answers[self.my_id] = self.my_id

    def on_reply(self, reply: VoteReply, now: int = 0) -> None:
        if reply.epoch == self.epoch:
            self.answers[reply.sender] = reply.leader or ""
            if reply.leader not in (None, "", self.my_id) and self.rival_at_ms is None:
                self.rival_at_ms = now

    def granted(self, members: frozenset[str] | None = None) -> int:
        return sum(
            1
            for voter, leader in self.answers.items()
            if leader == self.my_id and (members is None or voter in members)
        )

    def elected(self, needed: int, members: frozenset[str] | None = None) -> bool:
        return self.granted(members) >= needed

    def split(self, needed: int, members: frozenset[str]) -> bool:
        """Nobody can win this epoch any more: even if every voter still silent voted for the
        best-placed candidate, no candidate would reach ``needed``. Each voter says whom it
        voted for, so this is known for certain, not guessed (a split vote: several sentinels
        asked at the same moment and each voted for itself)."""
        counts: dict[str, int] = {}
        for voter, leader in self.answers.items():
            if voter in members and leader:
                counts[leader] = counts.get(leader, 0) + 1
        silent = len(members - self.answers.keys())
        return max(counts.values(), default=0) + silent < needed

    def contested(self, now: int, grace_ms: int) -> bool:
        """Another candidate holds votes in this epoch, and the voters still silent have had
        ``grace_ms`` to answer since. With a voter cut off (a partitioned minority) ``split``
        can never be sure; waiting out the election timeout instead cost each collision 10 s,
        and two sentinels that time out together collide again (scenario 4 in
        docs/faults.md). Retried like a split vote: a fresh back-off, a higher epoch."""
        return self.rival_at_ms is not None and now >= self.rival_at_ms + grace_ms

    def expired(self, now: int) -> bool:
        return now >= self.deadline_ms

    def votes(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(self.answers.items()))


@attrs.define(slots=True)
class AttemptTimer:
    """When this sentinel may next try to fail each shard over."""

    rng: RandomSource
    max_backoff_ms: int
    failover_timeout_ms: int
    # shard → (earliest attempt time, True when it is a cool-down after a failure or a vote)
    _not_before: dict[str, tuple[int, bool]] = attrs.field(factory=dict, init=False)

    def _backoff(self) -> int:
        return self.rng.randrange(0, self.max_backoff_ms + 1)

    def on_odown(self, shard: str, now: int) -> None:
        """Arm the back-off; a pending back-off or cool-down (even an expired one) stands."""
        if shard not in self._not_before:
            self._not_before[shard] = (now + self._backoff(), False)

    def on_recovered(self, shard: str, now: int) -> None:
        """The primary is up again: drop its back-off, and its cool-down once that is over."""
        entry = self._not_before.get(shard)
        if entry is not None and (not entry[1] or entry[0] <= now):
            del self._not_before[shard]

    def cool_down(self, shard: str, now: int) -> None:
        """After a failed attempt, or after voting for someone else's attempt on ``shard``."""
        until = now + self.failover_timeout_ms + self._backoff()
        old = self._not_before.get(shard)
        if old is None or old[0] < until:
            self._not_before[shard] = (until, True)

    def clear(self, shard: str) -> None:
        """The shard was failed over (by anyone): start from scratch next time."""
        self._not_before.pop(shard, None)

    def ready(self, shard: str, now: int) -> bool:
        entry = self._not_before.get(shard)
        return entry is not None and now >= entry[0]

    def not_before(self, shard: str) -> int | None:
        entry = self._not_before.get(shard)
        return None if entry is None else entry[0]

    def next_deadline(self, now: int) -> int | None:
        future = [t for t, _ in self._not_before.values() if t > now]
        return min(future) if future else None
