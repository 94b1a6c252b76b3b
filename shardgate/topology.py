"""The cluster topology: an epoch, the shards, and which slot ranges each shard owns.

A ``Topology`` is a frozen value, validated when it is built: every one of the 16384 slots is
owned by exactly one shard, shard names are unique, no node address appears twice. It is swapped
as a whole and only for a higher epoch (see ``Topology.supersedes``).

The TOML form (what ``shardgate proxy --config`` reads and sentinels publish)::

    epoch = 3                       # optional; a file without one gets epoch 1
    [[shards]]
    name = "s0"
    primary = "127.0.0.1:7001"
    replicas = ["127.0.0.1:7101"]   # optional
    slots = ["0-8191"]              # ranges "a-b" (inclusive) or single slots
    [[shards]]
    name = "s1"
    primary = "127.0.0.1:7002"
    slots = ["8192-16383"]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import msgpack

from shardgate.config import ConfigError, check_keys, load_toml
from shardgate.slots import SLOTS


class TopologyError(ConfigError):
    """A topology is inconsistent (gaps, overlaps, duplicate names or addresses)."""


def _check_host(_inst: object, _attr: object, value: str) -> None:
    if not value or any(c in value for c in " \t\r\n"):
        raise TopologyError(f"invalid host {value!r}")


def _check_port(_inst: object, _attr: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise TopologyError(f"invalid port {value!r}")


@attrs.frozen(slots=True, order=True)
class NodeAddress:
    host: str = attrs.field(validator=_check_host)
    port: int = attrs.field(validator=_check_port)

    @classmethod
    def parse(cls, text: str) -> NodeAddress:
        """``host:port`` (``[v6]:port`` for IPv6 literals)."""
        if not isinstance(text, str):
            raise TopologyError(f"expected 'host:port', got {text!r}")
        host, sep, port = text.strip().rpartition(":")
        if not sep or not host:
            raise TopologyError(f"expected 'host:port', got {text!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            number = int(port)
        except ValueError:
            raise TopologyError(f"invalid port in {text!r}") from None
        return cls(host, number)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@attrs.frozen(slots=True, order=True)
class SlotRange:
    """Slots ``start`` through ``end`` inclusive, as Redis Cluster writes them."""

    start: int
    end: int

    def __attrs_post_init__(self) -> None:
        if not (0 <= self.start <= self.end < SLOTS):
            raise TopologyError(f"invalid slot range {self.start}-{self.end} (0..{SLOTS - 1})")

    @classmethod
    def parse(cls, text: str | int) -> SlotRange:
        if isinstance(text, int) and not isinstance(text, bool):
            return cls(text, text)
        if not isinstance(text, str):
            raise TopologyError(f"expected a slot range like '0-8191', got {text!r}")
        a, sep, b = text.strip().partition("-")
        try:
            start = int(a)
            end = int(b) if sep else start
        except ValueError:
            raise TopologyError(f"expected a slot range like '0-8191', got {text!r}") from None
        return cls(start, end)

    def __len__(self) -> int:
        return self.end - self.start + 1

    def __str__(self) -> str:
        return f"{self.start}-{self.end}" if self.end != self.start else str(self.start)


def _to_tuple(value: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(value)


@attrs.frozen(slots=True)
class Shard:
    name: str
    primary: NodeAddress
    replicas: tuple[NodeAddress, ...] = attrs.field(default=(), converter=_to_tuple)
    slots: tuple[SlotRange, ...] = attrs.field(default=(), converter=_to_tuple)

    def __attrs_post_init__(self) -> None:
        if not self.name or any(c.isspace() for c in self.name):
            raise TopologyError(f"invalid shard name {self.name!r}")
        if self.primary in self.replicas:
            raise TopologyError(f"shard {self.name}: primary {self.primary} is also a replica")
        if len(set(self.replicas)) != len(self.replicas):
            raise TopologyError(f"shard {self.name}: duplicate replica address")


@attrs.frozen(slots=True)
class Topology:
    epoch: int
    shards: tuple[Shard, ...] = attrs.field(converter=_to_tuple)
    # slot → index into ``shards``; derived, so excluded from equality and repr.
    slot_owner: tuple[int, ...] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if isinstance(self.epoch, bool) or not isinstance(self.epoch, int) or self.epoch < 0:
            raise TopologyError(f"invalid epoch {self.epoch!r}")
        if not self.shards:
            raise TopologyError("a topology needs at least one shard")
        names = [s.name for s in self.shards]
        if len(set(names)) != len(names):
            raise TopologyError(f"duplicate shard name in {names}")
        seen: dict[NodeAddress, str] = {}
        for shard in self.shards:
            for addr in (shard.primary, *shard.replicas):
                if addr in seen:
                    raise TopologyError(f"{addr} is in shard {seen[addr]} and shard {shard.name}")
                seen[addr] = shard.name
        owner = [-1] * SLOTS
        for index, shard in enumerate(self.shards):
            for rng in shard.slots:
                for slot in range(rng.start, rng.end + 1):
                    if owner[slot] >= 0:
                        other = self.shards[owner[slot]].name
                        raise TopologyError(f"slot {slot} is owned by {other} and {shard.name}")
                    owner[slot] = index
        if -1 in owner:
            missing = owner.index(-1)
            raise TopologyError(f"slot {missing} is not owned by any shard (gap in slot ranges)")
        object.__setattr__(self, "slot_owner", tuple(owner))

    def shard_for_slot(self, slot: int) -> Shard:
        return self.shards[self.slot_owner[slot]]

    def supersedes(self, other: Topology) -> bool:
        """True when this topology should replace ``other`` (strictly higher epoch)."""
        return self.epoch > other.epoch

    @classmethod
    def even(cls, primaries: Sequence[NodeAddress], *, epoch: int = 1) -> Topology:
        """Split the slots evenly over one shard per address (``--backends``)."""
        if not primaries:
            raise TopologyError("need at least one backend")
        n = len(primaries)
        shards = []
        for i, addr in enumerate(primaries):
            start = i * SLOTS // n
            end = (i + 1) * SLOTS // n - 1
            shards.append(Shard(f"shard{i}", addr, (), (SlotRange(start, end),)))
        return cls(epoch, tuple(shards))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "topology") -> Topology:
        check_keys(data, {"epoch", "shards", "proxy"}, where=where)
        raw_shards = data.get("shards")
        if not isinstance(raw_shards, list) or not raw_shards:
            raise TopologyError(f"{where}: expected one or more [[shards]] tables")
        shards = []
        for i, item in enumerate(raw_shards):
            here = f"{where}: shards[{i}]"
            if not isinstance(item, dict):
                raise TopologyError(f"{here}: expected a table")
            check_keys(item, {"name", "primary", "replicas", "slots"}, where=here)
            try:
                replicas = item.get("replicas", [])
                slots = item.get("slots", [])
                if not isinstance(replicas, list) or not isinstance(slots, list):
                    raise TopologyError("replicas and slots must be lists")
                shards.append(
                    Shard(
                        name=str(item.get("name", f"shard{i}")),
                        primary=NodeAddress.parse(item.get("primary", "")),
                        replicas=tuple(NodeAddress.parse(r) for r in replicas),
                        slots=tuple(SlotRange.parse(s) for s in slots),
                    )
                )
            except TopologyError as exc:
                raise TopologyError(f"{here}: {exc}") from None
        epoch = data.get("epoch", 1)
        try:
            return cls(epoch, tuple(shards))
        except TopologyError as exc:
            raise TopologyError(f"{where}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "shards": [
                {
                    "name": s.name,
                    "primary": str(s.primary),
                    "replicas": [str(r) for r in s.replicas],
                    "slots": [str(r) for r in s.slots],
                }
                for s in self.shards
            ],
        }

    def to_toml(self) -> str:
        lines = [f"epoch = {self.epoch}"]
        for s in self.shards:
            lines.append("")
            lines.append("[[shards]]")
            lines.append(f'name = "{s.name}"')
            lines.append(f'primary = "{s.primary}"')
            lines.append("replicas = [" + ", ".join(f'"{r}"' for r in s.replicas) + "]")
            lines.append("slots = [" + ", ".join(f'"{r}"' for r in s.slots) + "]")
        return "\n".join(lines) + "\n"


# A topology with many slot ranges is a few KB on the wire; 1 MB is the sentinels' message cap.
MAX_WIRE_BYTES = 1024 * 1024


def topology_to_wire(topology: Topology) -> bytes:
    """The msgpack form sentinels publish (``SG.TOPOLOGY``, channel ``shardgate.topology``)."""
    out: bytes = msgpack.packb(topology.to_dict(), use_bin_type=True)
    return out


def topology_from_wire(blob: bytes) -> Topology:
    """Decode ``topology_to_wire``'s bytes; garbage raises ``TopologyError``, never anything else."""
    if not isinstance(blob, bytes | bytearray) or len(blob) > MAX_WIRE_BYTES:
        raise TopologyError("topology: expected at most 1 MB of msgpack bytes")
    try:
        data = msgpack.unpackb(blob, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise TopologyError(f"topology: not msgpack: {exc}") from None
    if not isinstance(data, dict):
        raise TopologyError("topology: expected a map")
    try:
        return Topology.from_dict(data, where="topology")
    except (ValueError, TypeError) as exc:  # ConfigError is a ValueError
        raise TopologyError(str(exc)) from None


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology TOML file; raises ``ConfigError`` with a clear message."""
    return Topology.from_dict(load_toml(path), where=str(path))
