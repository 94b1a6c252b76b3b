"""Replica reads: where a read may go, and how stale each replica is (sans-I/O).

How it works
- ``read_from`` (globally, or per shard) is ``primary`` (the default), ``replica`` or
  ``prefer_replica``. Only commands flagged ``readonly`` in the command table may go to a
  replica; everything else goes to the primary.
- **Lag is measured by the proxy itself, in time.** The shell polls ``INFO replication`` of each
  shard's primary and then of its replicas every ``LAG_POLL_SECONDS``. Every primary reading
  ``(t, master_repl_offset)`` is remembered. A replica reading with ``slave_repl_offset = R`` (role
  replica, ``master_link_status:up``, following this shard's primary) proves the replica held
  everything the primary held at the latest remembered ``t`` whose offset is ``<= R``: that ``t``
  is the replica's ``caught_up_at``, and its lag at ``now`` is ``now - caught_up_at``. So the lag
  is an upper bound on how stale a read from it can be, with a resolution of one poll period;
  a replica that stops answering (SIGSTOP, partition) or whose primary cannot be read keeps an
  old ``caught_up_at`` and its lag grows by itself. A replica never seen caught up has no lag
  (unknown) and is not eligible.
- ``eligible(max_lag, now)``: the replicas whose lag is at most ``max_lag`` (0 = no limit: any
  replica that reported being a linked replica of this primary).

Times are seconds from the caller's monotonic clock.
"""

from __future__ import annotations

import enum
from collections import deque

import attrs

from shardgate.topology import NodeAddress

# How often the proxy reads INFO replication from each node of a shard that reads from replicas:
# lag resolution is one period; 10 polls/s per node is negligible load for a node.
LAG_POLL_SECONDS = 0.1
# Primary readings kept per shard (10 s at the poll rate): a replica further behind than that
# has no matching reading and is treated as unknown, i.e. not eligible.
HISTORY = 100


class ReadFrom(enum.Enum):
    PRIMARY = "primary"
    REPLICA = "replica"
    PREFER_REPLICA = "prefer_replica"

    @classmethod
    def parse(cls, text: object, *, where: str = "read_from") -> ReadFrom:
        for member in cls:
            if text == member.value:
                return member
        choices = ", ".join(m.value for m in cls)
        raise ValueError(f"{where}: expected one of {choices}, got {text!r}")


@attrs.frozen(slots=True)
class Replication:
    """The fields of one node's ``INFO replication`` that lag measurement needs."""

    role: str  # "primary" | "replica" | other (unassigned)
    offset: int  # master_repl_offset of a primary, slave_repl_offset of a replica
    link_up: bool  # a replica's master_link_status
    primary: NodeAddress | None  # whom a replica follows


def parse_replication(text: str) -> Replication | None:
    """INFO replication text → ``Replication``; None when the fields are missing or bad."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and not key.startswith("#"):
            info[key.strip()] = value.strip()
    role = info.get("shardgate_role") or {"master": "primary", "slave": "replica"}.get(
        info.get("role", ""), ""
    )
    try:
        if role == "replica":
            return Replication(
                role,
                int(info["slave_repl_offset"]),
                info.get("master_link_status") == "up",
                NodeAddress(info["master_host"], int(info["master_port"])),
            )
        return Replication(role, int(info.get("master_repl_offset", "0")), False, None)
    except (KeyError, ValueError):
        return None


class ShardLag:
    """One shard's replica lag, from the readings the shell passes in."""

    __slots__ = ("_caught_up_at", "_history", "primary", "replicas")

    def __init__(self, primary: NodeAddress, replicas: tuple[NodeAddress, ...]) -> None:
        self.primary = primary
        self.replicas = replicas
        self._history: deque[tuple[float, int]] = deque(maxlen=HISTORY)
        self._caught_up_at: dict[NodeAddress, float] = {}

    def observe(self, node: NodeAddress, reading: Replication | None, now: float) -> None:
        if node == self.primary:
            if reading is not None and reading.role == "primary":
                self._history.append((now, reading.offset))
            return
        if node not in self.replicas:
            return
        ok = (
            reading is not None
            and reading.role == "replica"
            and reading.link_up
            and reading.primary == self.primary
        )
        if not ok:
            self._caught_up_at.pop(node, None)  # not a working replica of ours: unknown
            return
        assert reading is not None
        for t, offset in reversed(self._history):
            if offset <= reading.offset:
                if t > self._caught_up_at.get(node, -1.0):
                    self._caught_up_at[node] = t
                return

    def lag(self, node: NodeAddress, now: float) -> float | None:
        """Seconds of staleness at most, or None when unknown."""
        t = self._caught_up_at.get(node)
        return None if t is None else max(now - t, 0.0)

    def eligible(self, max_lag: float, now: float) -> tuple[NodeAddress, ...]:
        """Replicas a read may go to (``max_lag`` 0: no limit, but known to be replicating)."""
        out = []
        for node in self.replicas:
            lag = self.lag(node, now)
            if lag is not None and (max_lag <= 0 or lag <= max_lag):
                out.append(node)
        return tuple(out)
