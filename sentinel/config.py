"""``sentinel.toml``: this sentinel, its peers, the shards it watches, and the timing rules.

Example::

    id = "s1"
    listen = "127.0.0.1:26379"
    quorum = 2
    down_after_ms = 1000           # Redis default 30000
    failover_timeout_ms = 10000    # Redis default 180000
    forget_after_ms = 3600000
    state_file = "s1.state"
    password = "for-clients"       # optional, like Sentinel's requirepass
    node_password = "internal"     # optional, sent with SG.* commands to the store nodes

    [[peers]]
    id = "s2"
    address = "127.0.0.1:26380"

    [[shards]]
    name = "s0"
    primary = "127.0.0.1:7001"
    replicas = ["127.0.0.1:7101", { address = "127.0.0.1:7201", priority = 0 }]
    slots = ["0-8191"]             # optional when no shard names slots: split evenly

Every value is checked; errors name the setting and say what was expected. A quorum larger than
the number of sentinels is accepted (it is how an operator disables automatic failover) and
reported by ``SentinelConfig.warnings``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from sentinel.messages import MAX_EPOCH
from shardgate.config import ConfigError, check_keys, load_toml
from shardgate.slots import SLOTS
from shardgate.topology import NodeAddress, Shard, SlotRange, Topology, TopologyError

# Redis: replica-priority default 100; 0 means "never promote".
DEFAULT_PRIORITY = 100
# Redis defaults are 30 s / 180 s; shardgate targets sub-2 s failover, so ours are shorter.
DEFAULT_DOWN_AFTER_MS = 5000
DEFAULT_FAILOVER_TIMEOUT_MS = 30_000
DEFAULT_FORGET_AFTER_MS = 3_600_000
# Manual failover: writes pause at most this long; the bound is "under one second".
DEFAULT_MANUAL_PAUSE_MS = 500
MAX_MANUAL_PAUSE_MS = 999
# Sanity bounds against typos and hostile files: a day is already absurd for any of these.
MAX_DURATION_MS = 86_400_000
MAX_PRIORITY = 2**31 - 1
MAX_ID_LENGTH = 64
DEFAULT_PORT = 26379  # Redis Sentinel's port

_TOP_KEYS = {
    "id",
    "listen",
    "quorum",
    "down_after_ms",
    "failover_timeout_ms",
    "forget_after_ms",
    "manual_pause_ms",
    "state_file",
    "password",
    "node_password",
    "epoch",
    "peers",
    "shards",
}


def _check_id(text: object, *, where: str) -> str:
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{where}: expected a non-empty string id, got {text!r}")
    if len(text) > MAX_ID_LENGTH:
        raise ConfigError(f"{where}: id longer than {MAX_ID_LENGTH} characters")
    if not all((c.isascii() and c.isalnum()) or c in "-_." for c in text):
        raise ConfigError(f"{where}: id {text!r} may only use letters, digits, '-', '_' and '.'")
    return text


def _int(value: object, *, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name}: {value} is out of range ({low}..{high})")
    return value


def _address(value: object, *, where: str) -> NodeAddress:
    try:
        return NodeAddress.parse(value)  # type: ignore[arg-type]
    except TopologyError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _secret(value: object, *, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or any(c in value for c in "\r\n\0"):
        raise ConfigError(f"{name}: expected a non-empty single-line string")
    return value


@attrs.frozen(slots=True)
class PeerConfig:
    id: str
    address: NodeAddress


@attrs.frozen(slots=True)
class SentinelConfig:
    id: str
    listen: NodeAddress
    peers: tuple[PeerConfig, ...]
    topology: Topology
    quorum: int
    priorities: tuple[tuple[NodeAddress, int], ...] = ()
    down_after_ms: int = DEFAULT_DOWN_AFTER_MS
    failover_timeout_ms: int = DEFAULT_FAILOVER_TIMEOUT_MS
    forget_after_ms: int = DEFAULT_FORGET_AFTER_MS
    manual_pause_ms: int = DEFAULT_MANUAL_PAUSE_MS
    state_file: str = ""
    password: str | None = attrs.field(default=None, repr=False)
    node_password: str | None = attrs.field(default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        _check_id(self.id, where="id")
        _int(self.quorum, name="quorum", low=1, high=1000)
        _int(self.down_after_ms, name="down_after_ms", low=1, high=MAX_DURATION_MS)
        _int(self.failover_timeout_ms, name="failover_timeout_ms", low=1, high=MAX_DURATION_MS)
        _int(self.manual_pause_ms, name="manual_pause_ms", low=1, high=MAX_MANUAL_PAUSE_MS)
        _int(self.forget_after_ms, name="forget_after_ms", low=1, high=MAX_DURATION_MS)
        if self.forget_after_ms <= self.down_after_ms:
            raise ConfigError("forget_after_ms must be larger than down_after_ms")
        ids = [self.id, *(p.id for p in self.peers)]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ConfigError(f"peers: duplicate sentinel id(s) {', '.join(dup)}")
        addrs = [self.listen, *(p.address for p in self.peers)]
        dup_addr = sorted({str(a) for a in addrs if addrs.count(a) > 1})
        if dup_addr:
            raise ConfigError(f"peers: duplicate sentinel address(es) {', '.join(dup_addr)}")
        nodes = {a for s in self.topology.shards for a in (s.primary, *s.replicas)}
        clash = sorted(str(a) for a in set(addrs) & nodes)
        if clash:
            raise ConfigError(f"{', '.join(clash)} is both a sentinel and a store node")

    @property
    def sentinel_count(self) -> int:
        return 1 + len(self.peers)

    @property
    def ping_period_ms(self) -> int:
        """Ping several times per down period (10 times), at most once a second like Redis."""
        return max(10, min(1000, self.down_after_ms // 10))

    def priority(self, node: NodeAddress) -> int:
        return dict(self.priorities).get(node, DEFAULT_PRIORITY)

    @property
    def warnings(self) -> tuple[str, ...]:
        out = []
        if self.quorum > self.sentinel_count:
            out.append(
                f"cannot fail over: quorum {self.quorum} is larger than the "
                f"{self.sentinel_count} sentinels"
            )
        if self.sentinel_count < 3:
            out.append(f"only {self.sentinel_count} sentinel(s): a failure loses the majority")
        return tuple(out)


def _parse_replicas(raw: object, *, where: str) -> list[tuple[NodeAddress, int]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: replicas must be a list")
    out = []
    for j, item in enumerate(raw):
        here = f"{where}.replicas[{j}]"
        if isinstance(item, dict):
            check_keys(item, {"address", "priority"}, where=here)
            addr = _address(item.get("address"), where=here)
            prio = _int(
                item.get("priority", DEFAULT_PRIORITY),
                name=f"{here}.priority",
                low=0,
                high=MAX_PRIORITY,
            )
        else:
            addr, prio = _address(item, where=here), DEFAULT_PRIORITY
        out.append((addr, prio))
    return out


def _parse_shards(
    raw: object, *, epoch: int
) -> tuple[Topology, tuple[tuple[NodeAddress, int], ...]]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError("shards: expected one or more [[shards]] tables")
    entries = []
    priorities: list[tuple[NodeAddress, int]] = []
    for i, item in enumerate(raw):
        where = f"shards[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a table")
        check_keys(item, {"name", "primary", "replicas", "slots"}, where=where)
        name = item.get("name", f"shard{i}")
        if not isinstance(name, str):
            raise ConfigError(f"{where}.name: expected a string")
        primary = _address(item.get("primary"), where=f"{where}.primary")
        replicas = _parse_replicas(item.get("replicas"), where=where)
        priorities.extend(replicas)
        slots = item.get("slots")
        if slots is not None and not isinstance(slots, list):
            raise ConfigError(f"{where}.slots: expected a list of ranges")
        entries.append((name, primary, tuple(a for a, _ in replicas), slots))
    if all(slots is None for *_, slots in entries):
        n = len(entries)
        spans: list[list[Any]] = [
            [f"{i * SLOTS // n}-{(i + 1) * SLOTS // n - 1}"] for i in range(n)
        ]
    elif any(slots is None for *_, slots in entries):
        raise ConfigError("shards: either every shard names its slots or none does")
    else:
        spans = [slots for *_, slots in entries if slots is not None]
    try:
        shards = tuple(
            Shard(name, primary, replicas, tuple(SlotRange.parse(s) for s in span))
            for (name, primary, replicas, _), span in zip(entries, spans, strict=True)
        )
        return Topology(epoch, shards), tuple(priorities)
    except TopologyError as exc:
        raise ConfigError(f"shards: {exc}") from None


def parse_config(data: dict[str, Any], *, base_dir: Path | None = None) -> SentinelConfig:
    check_keys(data, _TOP_KEYS, where="sentinel config")
    sid = _check_id(data.get("id"), where="id")
    listen = _address(data.get("listen", f"127.0.0.1:{DEFAULT_PORT}"), where="listen")
    raw_peers = data.get("peers", [])
    if not isinstance(raw_peers, list):
        raise ConfigError("peers: expected [[peers]] tables")
    peers = []
    for i, item in enumerate(raw_peers):
        where = f"peers[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a table with id and address")
        check_keys(item, {"id", "address"}, where=where)
        peers.append(
            PeerConfig(
                _check_id(item.get("id"), where=f"{where}.id"),
                _address(item.get("address"), where=f"{where}.address"),
            )
        )
    if "quorum" not in data:
        raise ConfigError("quorum: missing (how many sentinels must agree a primary is down)")
    epoch = _int(data.get("epoch", 1), name="epoch", low=0, high=MAX_EPOCH - 1)
    topology, priorities = _parse_shards(data.get("shards"), epoch=epoch)
    state_file = data.get("state_file", f"sentinel-{sid}.state")
    if not isinstance(state_file, str) or not state_file or "\0" in state_file:
        raise ConfigError("state_file: expected a file path")
    if base_dir is not None and not Path(state_file).is_absolute():
        state_file = str(base_dir / state_file)

    def dur(name: str, default: int) -> int:
        return _int(data.get(name, default), name=name, low=1, high=MAX_DURATION_MS)

    return SentinelConfig(
        id=sid,
        listen=listen,
        peers=tuple(peers),
        topology=topology,
        quorum=_int(data["quorum"], name="quorum", low=1, high=1000),
        priorities=priorities,
        down_after_ms=dur("down_after_ms", DEFAULT_DOWN_AFTER_MS),
        failover_timeout_ms=dur("failover_timeout_ms", DEFAULT_FAILOVER_TIMEOUT_MS),
        forget_after_ms=dur("forget_after_ms", DEFAULT_FORGET_AFTER_MS),
        manual_pause_ms=_int(
            data.get("manual_pause_ms", DEFAULT_MANUAL_PAUSE_MS),
            name="manual_pause_ms",
            low=1,
            high=MAX_MANUAL_PAUSE_MS,
        ),
        state_file=state_file,
        password=_secret(data.get("password"), name="password"),
        node_password=_secret(data.get("node_password"), name="node_password"),
    )


def load_config(path: str | Path) -> SentinelConfig:
    """Read and validate ``sentinel.toml``; relative state files live next to the config."""
    p = Path(path)
    try:
        return parse_config(load_toml(p), base_dir=p.parent)
    except ConfigError as exc:
        if str(exc).startswith(str(p)):
            raise
        raise ConfigError(f"{p}: {exc}") from None
