"""A failover's record, as ``sentinel history`` shows it; travels in the state file and with
``TopologyNews`` so every sentinel can show every failover (sans-I/O)."""

from __future__ import annotations

from typing import Any

import attrs


class RecordError(ValueError):
    """A failover record could not be decoded."""


@attrs.frozen(slots=True)
class FailoverRecord:
    """One failover attempt, as ``sentinel history`` shows it. Times are the leader's ms."""

    epoch: int
    shard: str
    leader: str
    manual: bool
    old_primary: str
    new_primary: str | None
    outcome: str  # "done" or the abort reason's value
    # (step name, at_ms): sdown, odown, election, elected, promote, promoted, published, ...
    timeline: tuple[tuple[str, int], ...] = ()
    votes: tuple[tuple[str, str], ...] = ()  # (voter, voted for)
    ranking: tuple[tuple[str, str], ...] = ()  # (replica, "rank N ..." or why it was skipped)

    def duration_ms(self) -> int | None:
        if len(self.timeline) < 2:
            return None
        return self.timeline[-1][1] - self.timeline[0][1]

    def to_list(self) -> list[Any]:
        return [
            self.epoch,
            self.shard,
            self.leader,
            self.manual,
            self.old_primary,
            self.new_primary,
            self.outcome,
            [list(t) for t in self.timeline],
            [list(v) for v in self.votes],
            [list(r) for r in self.ranking],
        ]

    @classmethod
    def from_list(cls, raw: Any) -> FailoverRecord:
        if not isinstance(raw, list) or len(raw) != 10:
            raise RecordError("history record: expected 10 fields")
        epoch, shard, leader, manual, old, new, outcome, timeline, votes, ranking = raw

        def pairs(value: Any, second: type) -> tuple[tuple[Any, Any], ...]:
            if not isinstance(value, list):
                raise RecordError("history record: expected a list of pairs")
            out = []
            for item in value:
                ok = isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                if not ok or not isinstance(item[1], second) or isinstance(item[1], bool):
                    raise RecordError("history record: malformed pair")
                out.append((item[0], item[1]))
            return tuple(out)

        if not (isinstance(epoch, int) and isinstance(shard, str) and isinstance(leader, str)):
            raise RecordError("history record: malformed header")
        if not (isinstance(old, str) and (new is None or isinstance(new, str))):
            raise RecordError("history record: malformed primaries")
        return cls(
            epoch,
            shard,
            leader,
            bool(manual),
            old,
            new,
            str(outcome),
            pairs(timeline, int),
            pairs(votes, str),
            pairs(ranking, str),
        )
