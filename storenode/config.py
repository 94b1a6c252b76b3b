"""Store node settings: defaults like Redis's, loaded from TOML and overridden by flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from shardgate.config import (
    ConfigError,
    check_keys,
    load_toml,
    parse_address,
    parse_port,
    parse_size,
)
from shardgate.resp import (
    DEFAULT_MAX_BULK,
    DEFAULT_MAX_INLINE,
    DEFAULT_MAX_MULTIBULK,
    DEFAULT_MAX_QUERYBUF,
    RequestLimits,
)
from storenode.snapshot_file import DEFAULT_SAVE, SavePoints, parse_save_points

POLICIES = (
    "noeviction",
    "allkeys-lru",
    "volatile-lru",
    "allkeys-random",
    "volatile-random",
    "volatile-ttl",
)


@attrs.frozen(slots=True, kw_only=True)
class NodeConfig:
    host: str = "127.0.0.1"
    port: int = 7100
    maxmemory: int = 256 * 1024 * 1024  # the laptop default
    maxmemory_policy: str = "allkeys-lru"  # a cache: evict rather than refuse
    requirepass: str = ""
    metrics_port: int | None = None
    maxclients: int = 10000  # Redis default
    proto_max_bulk_len: int = DEFAULT_MAX_BULK
    max_multibulk: int = DEFAULT_MAX_MULTIBULK
    max_inline: int = DEFAULT_MAX_INLINE
    client_query_buffer_limit: int = DEFAULT_MAX_QUERYBUF
    # A client that has not read its replies for this long while output is pending is dropped
    # (Redis's soft output limit idea); output held per client never exceeds the hard cap.
    client_output_limit: int = 256 * 1024 * 1024
    client_output_stall_seconds: float = 60.0
    hz: int = 10  # Redis default: background cycles per second
    log_format: str = "text"
    # Replication and fencing (docs/replication.md).
    replicaof: str = ""  # host:port of the primary to follow at start
    managed: bool = False  # take no writes until a sentinel assigns a role (SG.ROLE)
    masterauth: str = ""  # password this node uses with its primary (default: requirepass)
    repl_backlog_size: int = 1024 * 1024  # Redis default
    min_replicas_to_write: int = 0  # Redis default: off
    min_replicas_max_lag: float = 10.0  # seconds, Redis default
    sync_replicas: int = 0  # semi-synchronous: acks needed before a write is answered
    sync_timeout_ms: int = 1000
    replica_priority: int = 100  # Redis default; 0 = never promote (read by sentinels)
    announce: str = ""  # host:port to announce to the primary (default: the bound address)
    # Snapshots (docs/node.md, "Persistence"): no dir = no persistence, the default for a cache.
    dir: str = ""
    dbfilename: str = "dump.sg"
    save: str = DEFAULT_SAVE  # Redis's save points; "" = only at shutdown

    def __attrs_post_init__(self) -> None:
        if self.maxmemory_policy not in POLICIES:
            raise ConfigError(
                f"maxmemory-policy: {self.maxmemory_policy!r} is not one of {', '.join(POLICIES)}"
            )
        if self.maxclients < 1:
            raise ConfigError("maxclients: must be at least 1")
        if not 1 <= self.hz <= 500:
            raise ConfigError("hz: must be between 1 and 500")
        if self.proto_max_bulk_len < 1024 * 1024:
            raise ConfigError("proto-max-bulk-len: must be at least 1mb")
        if self.log_format not in ("text", "json"):
            raise ConfigError("log-format: must be text or json")
        for name in ("replicaof", "announce"):
            value = getattr(self, name)
            if value:
                parse_address(value, name=name.replace("_", "-"))
        if self.repl_backlog_size < 16 * 1024:
            raise ConfigError("repl-backlog-size: must be at least 16kb")
        for name in ("min_replicas_to_write", "sync_replicas", "replica_priority"):
            if not 0 <= getattr(self, name) <= 1000:
                raise ConfigError(f"{name.replace('_', '-')}: must be between 0 and 1000")
        if not 0 < self.min_replicas_max_lag <= 3600:
            raise ConfigError("min-replicas-max-lag: must be between 0 and 3600 seconds")
        if not 1 <= self.sync_timeout_ms <= 3_600_000:
            raise ConfigError("sync-timeout-ms: must be between 1 and 3600000")
        if not self.dbfilename or "/" in self.dbfilename or self.dbfilename in (".", ".."):
            raise ConfigError("dbfilename: must be a file name, not a path")
        try:
            parse_save_points(self.save)
        except ValueError as exc:
            raise ConfigError(f'save: {exc} (pairs of seconds and changes, or "")') from None

    @property
    def save_points(self) -> SavePoints:
        return parse_save_points(self.save)

    @property
    def limits(self) -> RequestLimits:
        return RequestLimits(
            max_bulk=self.proto_max_bulk_len,
            max_multibulk=self.max_multibulk,
            max_inline=self.max_inline,
            max_querybuf=self.client_query_buffer_limit,
        )


_SIZES = {
    "maxmemory",
    "proto_max_bulk_len",
    "client_query_buffer_limit",
    "client_output_limit",
}
_INTS = {
    "maxclients",
    "hz",
    "max_multibulk",
    "max_inline",
    "min_replicas_to_write",
    "sync_replicas",
    "sync_timeout_ms",
    "replica_priority",
}
_FLOATS = {"client_output_stall_seconds", "min_replicas_max_lag"}
_SIZES_EXTRA = {"repl_backlog_size"}
_FIELDS = {f.name for f in attrs.fields(NodeConfig)}


def coerce(name: str, value: Any) -> Any:
    """Turn a TOML/flag/CONFIG SET value into the field's type, or raise ConfigError."""
    label = name.replace("_", "-")
    if name in _SIZES or name in _SIZES_EXTRA:
        return parse_size(value, name=label)
    if name == "managed":
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("yes", "true", "1"):
            return True
        if str(value).lower() in ("no", "false", "0"):
            return False
        raise ConfigError(f"{label}: expected yes or no, got {value!r}")
    if name == "save":
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # save = 60 in TOML: every 60 s when anything changed
        if not isinstance(value, str):
            raise ConfigError(f'{label}: expected a string like "3600 1 300 100", got {value!r}')
        try:
            parse_save_points(value)
        except ValueError as exc:
            raise ConfigError(f"{label}: {exc}") from None
        return value
    if name in ("port", "metrics_port"):
        return parse_port(value, name=label)
    if name in _INTS:
        if isinstance(value, bool):
            raise ConfigError(f"{label}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{label}: expected an integer, got {value!r}") from None
    if name in _FLOATS:
        if isinstance(value, bool):
            raise ConfigError(f"{label}: expected a number of seconds, got {value!r}")
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{label}: expected a number of seconds, got {value!r}") from None
        if not 0 < result < 1e9:
            raise ConfigError(f"{label}: must be positive")
        return result
    if not isinstance(value, str):
        raise ConfigError(f"{label}: expected a string, got {value!r}")
    if len(value) > 4096 or "\n" in value or "\r" in value or "\x00" in value:
        raise ConfigError(f"{label}: value is too long or has control characters")
    return value


def load_node_config(path: str | Path | None, overrides: dict[str, Any]) -> NodeConfig:
    """Defaults, then the TOML file (keys with - or _), then flags (``overrides``)."""
    values: dict[str, Any] = {}
    if path is not None:
        table = load_toml(path)
        table = {k.replace("-", "_"): v for k, v in table.items()}
        check_keys(table, _FIELDS, where=str(path))
        values.update(table)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return NodeConfig(**{k: coerce(k, v) for k, v in values.items()})
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
