"""What a sentinel persists, and its msgpack encoding (sans-I/O; the file I/O is ``state_file``).

The persisted state is what makes elections safe across restarts:
- ``current_epoch`` and ``vote`` (the one vote cast in the newest epoch voted in): a restarted
  sentinel never votes twice in an epoch, and never votes in an epoch lower than one it has seen;
- ``topology``: the newest topology this sentinel published or adopted; it never publishes a
  lower epoch after a restart, and it starts from this topology instead of its config file's;
- ``sentinels``: the membership (ids and addresses) it has learned, minus the forgotten;
- ``history``: the last ``MAX_HISTORY`` failovers this sentinel led or watched, for
  ``shardgate sentinel history``.

The shell must write the encoded state (fsync, atomic rename) *before* executing any action
that follows a ``PersistState`` action — in particular before a vote reply leaves the process.
"""

from __future__ import annotations

import attrs
import msgpack

from sentinel.messages import MAX_EPOCH, MessageError, decode_topology, encode_topology
from sentinel.records import FailoverRecord, RecordError
from shardgate.topology import NodeAddress, Topology, TopologyError

STATE_VERSION = 1
# Enough to see the last day of a bad week; each record is well under 1 KB.
MAX_HISTORY = 100
MAX_STATE_BYTES = 16 * 1024 * 1024


class StateError(ValueError):
    """The state file is corrupt or from an incompatible version."""


__all__ = ["FailoverRecord", "PersistedState", "StateError", "Vote", "decode_state", "encode_state"]


@attrs.frozen(slots=True)
class Vote:
    epoch: int
    leader: str
    shard: str


@attrs.frozen(slots=True)
class PersistedState:
    current_epoch: int = 0
    vote: Vote | None = None
    topology: Topology | None = None
    sentinels: tuple[tuple[str, NodeAddress], ...] = ()
    history: tuple[FailoverRecord, ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.current_epoch < 0:
            raise StateError("current_epoch must not be negative")
        if self.vote is not None and self.vote.epoch > self.current_epoch:
            raise StateError("a vote cannot be for an epoch above current_epoch")

    @property
    def topology_epoch(self) -> int:
        return 0 if self.topology is None else self.topology.epoch

    def with_record(self, record: FailoverRecord) -> PersistedState:
        history = (*self.history, record)[-MAX_HISTORY:]
        return attrs.evolve(self, history=history)


def encode_state(state: PersistedState) -> bytes:
    vote = None if state.vote is None else [state.vote.epoch, state.vote.leader, state.vote.shard]
    topo = None if state.topology is None else encode_topology(state.topology)
    doc = {
        "version": STATE_VERSION,
        "current_epoch": state.current_epoch,
        "vote": vote,
        "topology": topo,
        "sentinels": [[sid, str(addr)] for sid, addr in state.sentinels],
        "history": [r.to_list() for r in state.history],
    }
    out: bytes = msgpack.packb(doc, use_bin_type=True)
    return out


def decode_state(data: bytes) -> PersistedState:
    if len(data) > MAX_STATE_BYTES:
        raise StateError(f"state of {len(data)} bytes is larger than {MAX_STATE_BYTES}")
    try:
        doc = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise StateError(f"state file is not msgpack: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
        raise StateError(f"state file: expected version {STATE_VERSION}")
    try:
        epoch = doc["current_epoch"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < MAX_EPOCH:
            raise StateError("current_epoch: expected an epoch")
        raw_vote = doc.get("vote")
        vote = None
        if raw_vote is not None:
            if not (isinstance(raw_vote, list) and len(raw_vote) == 3):
                raise StateError("vote: expected [epoch, leader, shard]")
            if not isinstance(raw_vote[0], int) or not all(
                isinstance(x, str) for x in raw_vote[1:]
            ):
                raise StateError("vote: malformed")
            vote = Vote(raw_vote[0], raw_vote[1], raw_vote[2])
        raw_topo = doc.get("topology")
        topology = None if raw_topo is None else decode_topology(raw_topo)
        sentinels = []
        for item in doc.get("sentinels", []):
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                raise StateError("sentinels: expected [id, address] pairs")
            sentinels.append((item[0], NodeAddress.parse(item[1])))
        history = tuple(FailoverRecord.from_list(r) for r in doc.get("history", []))
        return PersistedState(epoch, vote, topology, tuple(sentinels), history[-MAX_HISTORY:])
    except (KeyError, TypeError, MessageError, RecordError, TopologyError) as exc:
        raise StateError(f"state file: {exc}") from None
