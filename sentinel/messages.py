"""Sentinel-to-sentinel messages and their msgpack encoding (sans-I/O).

Five messages, each a frozen value:
- ``Hello``: periodic announcement: who I am, my current epoch, and the epoch of the newest
  topology I hold. A peer holding a newer topology answers with ``TopologyNews``; that (and the
  news a leader broadcasts when it publishes) is how sentinels converge after a failover they
  missed (a partition, a restart). Hellos stay small: a topology is only sent when it is news.
- ``TopologyNews``: a whole topology, with the record of the failover that produced it (so
  ``sentinel history`` on any sentinel shows every failover, votes and ranking included).
- ``DownReport``: "at topology epoch E, I (do not) hold shard S's primary P down". Pushed on
  every change and refreshed periodically; it is what ODOWN counts.
- ``VoteRequest`` / ``VoteReply``: the election (see ``sentinel.election``).

On the wire a message is a msgpack array ``[kind, field, ...]``. Decoding checks every type and
bound and raises ``MessageError``, so a hostile or corrupted peer costs one rejected message.
"""

from __future__ import annotations

from typing import Any

import attrs
import msgpack

from sentinel.records import FailoverRecord, RecordError
from shardgate.topology import NodeAddress, Topology, TopologyError

# A message is a few hundred bytes; a topology with many slot ranges a few KB. 1 MB is absurd.
MAX_MESSAGE_BYTES = 1024 * 1024
# Epochs and offsets above this are refused, so a hostile or corrupt peer cannot push a sentinel
# to an epoch it could never increment again (a billion failovers a second for 146 years).
MAX_EPOCH = 2**62


class MessageError(ValueError):
    """A peer message could not be decoded or failed validation."""


def _nonneg(_inst: object, attr: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_EPOCH:
        raise MessageError(f"{attr.name}: expected a non-negative integer, got {value!r}")


def _name(_inst: object, attr: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value or len(value) > 256:
        raise MessageError(f"{attr.name}: expected a non-empty string, got {value!r}")


@attrs.frozen(slots=True)
class Hello:
    sender: str = attrs.field(validator=_name)
    address: NodeAddress
    current_epoch: int = attrs.field(validator=_nonneg)
    topology_epoch: int = attrs.field(validator=_nonneg)


@attrs.frozen(slots=True)
class TopologyNews:
    sender: str = attrs.field(validator=_name)
    topology: Topology
    record: FailoverRecord | None = None  # the failover that made it, when the sender has it


@attrs.frozen(slots=True)
class DownReport:
    sender: str = attrs.field(validator=_name)
    shard: str = attrs.field(validator=_name)
    primary: NodeAddress
    epoch: int = attrs.field(validator=_nonneg)  # the sender's topology epoch
    down: bool


@attrs.frozen(slots=True)
class VoteRequest:
    sender: str = attrs.field(validator=_name)
    epoch: int = attrs.field(validator=_nonneg)  # the election epoch asked for
    shard: str = attrs.field(validator=_name)
    topology_epoch: int = attrs.field(validator=_nonneg)  # the candidate's newest topology


@attrs.frozen(slots=True)
class VoteReply:
    sender: str = attrs.field(validator=_name)
    epoch: int = attrs.field(validator=_nonneg)  # the election epoch answered
    leader: str | None  # whom the sender voted for in that epoch (None: nobody / refused)
    current_epoch: int = attrs.field(validator=_nonneg)  # so a stale candidate catches up


Message = Hello | TopologyNews | DownReport | VoteRequest | VoteReply


def _addr(value: Any) -> NodeAddress:
    if not isinstance(value, str):
        raise MessageError(f"expected an address string, got {value!r}")
    try:
        return NodeAddress.parse(value)
    except TopologyError as exc:
        raise MessageError(str(exc)) from None


def encode_topology(topology: Topology) -> dict[str, Any]:
    return topology.to_dict()


def decode_topology(data: Any) -> Topology:
    if not isinstance(data, dict):
        raise MessageError("topology: expected a map")
    try:
        return Topology.from_dict(data, where="topology")
    except (TopologyError, ValueError, TypeError) as exc:
        raise MessageError(str(exc)) from None


def encode_message(msg: Message) -> bytes:
    fields: list[Any]
    if isinstance(msg, Hello):
        fields = ["hello", msg.sender, str(msg.address), msg.current_epoch, msg.topology_epoch]
    elif isinstance(msg, TopologyNews):
        record = None if msg.record is None else msg.record.to_list()
        fields = ["topology", msg.sender, encode_topology(msg.topology), record]
    elif isinstance(msg, DownReport):
        fields = ["down", msg.sender, msg.shard, str(msg.primary), msg.epoch, msg.down]
    elif isinstance(msg, VoteRequest):
        fields = ["vote?", msg.sender, msg.epoch, msg.shard, msg.topology_epoch]
    else:
        fields = ["vote", msg.sender, msg.epoch, msg.leader, msg.current_epoch]
    out: bytes = msgpack.packb(fields, use_bin_type=True)
    return out


_ARITY = {"hello": 5, "topology": 4, "down": 6, "vote?": 5, "vote": 5}


def decode_message(data: bytes) -> Message:
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message of {len(data)} bytes is larger than {MAX_MESSAGE_BYTES}")
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise MessageError(f"not msgpack: {exc}") from None
    if not isinstance(raw, list) or not raw or raw[0] not in _ARITY:
        raise MessageError("expected [kind, ...] with a known kind")
    kind = raw[0]
    if len(raw) != _ARITY[kind]:
        raise MessageError(f"{kind}: expected {_ARITY[kind]} fields, got {len(raw)}")
    try:
        if kind == "hello":
            return Hello(raw[1], _addr(raw[2]), raw[3], raw[4])
        if kind == "topology":
            if not isinstance(raw[1], str):
                raise MessageError("topology: sender must be a string")
            try:
                record = None if raw[3] is None else FailoverRecord.from_list(raw[3])
            except RecordError as exc:
                raise MessageError(str(exc)) from None
            return TopologyNews(raw[1], decode_topology(raw[2]), record)
        if kind == "down":
            if not isinstance(raw[5], bool):
                raise MessageError("down: flag must be a boolean")
            return DownReport(raw[1], raw[2], _addr(raw[3]), raw[4], raw[5])
        if kind == "vote?":
            return VoteRequest(raw[1], raw[2], raw[3], raw[4])
        if raw[3] is not None and not isinstance(raw[3], str):
            raise MessageError("vote: leader must be a string or nil")
        return VoteReply(raw[1], raw[2], raw[3], raw[4])
    except TypeError as exc:
        raise MessageError(str(exc)) from None
