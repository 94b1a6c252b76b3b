"""The proxy's settings (a frozen value built from the command line) and the cluster file.

The cluster file (``--config``) is a topology TOML (``shardgate/topology.py``) plus the proxy's
own keys, which are taken out before the topology is validated::

    sentinels = ["127.0.0.1:26379", "127.0.0.1:26380"]   # follow these sentinels
    sentinel_password = "pw"                             # optional
    read_from = "prefer_replica"                         # primary | replica | prefer_replica
    max_replica_lag_ms = 1000                            # 0 = no limit
    [[shards]]                                           # optional when sentinels are given
    name = "s0"
    read_from = "replica"                                # per shard, overrides the global one
    ...

Flags given on the command line win over the file.
"""

from __future__ import annotations

from typing import Any

import attrs

from proxy.replicas import ReadFrom
from shardgate.config import ConfigError, load_toml
from shardgate.resp import RequestLimits
from shardgate.topology import NodeAddress, Topology, TopologyError

# Redis defaults: maxclients 10000.
DEFAULT_MAX_CLIENTS = 10000
# Replies a client may have outstanding (sent, not yet written back) before the proxy stops
# reading its socket; TCP then pushes back on the client. Bounds memory per client.
DEFAULT_MAX_OUTSTANDING = 4096
# Unsent reply bytes per client before the proxy stops reading it (a slow reader).
DEFAULT_MAX_OUTPUT = 64 * 1024 * 1024
# Requests in flight on one backend connection; beyond it a request gets -ERR busy at once.
# With ~300 bytes per queued request this caps a stalled backend at ~20 MB.
DEFAULT_MAX_BACKEND_QUEUE = 65536
# Consecutive timeouts on one backend connection before it is declared down (fail fast).
DEFAULT_FAIL_AFTER = 3
# At most one (re)connection attempt per second per backend (issue 3).
DEFAULT_RECONNECT_INTERVAL = 1.0
# A replica more than this far behind its primary is not read from (consistency.md).
DEFAULT_MAX_REPLICA_LAG_MS = 1000

_PROXY_KEYS = ("sentinels", "sentinel_password", "read_from", "max_replica_lag_ms")


@attrs.frozen
class ClusterSettings:
    """What the proxy runs by: the config file merged with the command line."""

    topology: Topology | None  # None: no slot map of our own, the sentinels provide it
    sentinels: tuple[NodeAddress, ...] = ()
    sentinel_password: str | None = None
    read_from: ReadFrom = ReadFrom.PRIMARY
    shard_read_from: tuple[tuple[str, ReadFrom], ...] = ()  # (shard name, mode) overrides
    max_replica_lag_ms: int = DEFAULT_MAX_REPLICA_LAG_MS

    def read_mode(self, shard: str) -> ReadFrom:
        for name, mode in self.shard_read_from:
            if name == shard:
                return mode
        return self.read_from


def _parse_cluster_file(path: str) -> tuple[Topology | None, dict[str, Any], dict[str, ReadFrom]]:
    data = load_toml(path)
    options = {k: data.pop(k) for k in _PROXY_KEYS if k in data}
    shard_modes: dict[str, ReadFrom] = {}
    shards = data.get("shards")
    if isinstance(shards, list):
        for i, item in enumerate(shards):
            if isinstance(item, dict) and "read_from" in item:
                mode = item.pop("read_from")
                try:
                    shard_modes[str(item.get("name", f"shard{i}"))] = ReadFrom.parse(
                        mode, where=f"{path}: shards[{i}].read_from"
                    )
                except ValueError as exc:
                    raise ConfigError(str(exc)) from None
    topology = None
    if "shards" in data or not options.get("sentinels"):
        topology = Topology.from_dict(data, where=path)
    elif set(data) - {"epoch"}:
        Topology.from_dict(data, where=path)  # unknown keys: the topology's error message
    return topology, options, shard_modes


@attrs.frozen
class ProxyConfig:
    host: str = "127.0.0.1"
    port: int = 7000
    config_path: str | None = None
    backends: tuple[NodeAddress, ...] = ()
    workers: int = 1
    requirepass: str | None = None
    backend_password: str | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    timeout: float = 1.0  # seconds per request
    connections_per_backend: int = 1
    max_clients: int = DEFAULT_MAX_CLIENTS
    max_outstanding: int = DEFAULT_MAX_OUTSTANDING
    max_output: int = DEFAULT_MAX_OUTPUT
    max_backend_queue: int = DEFAULT_MAX_BACKEND_QUEUE
    fail_after: int = DEFAULT_FAIL_AFTER
    reconnect_interval: float = DEFAULT_RECONNECT_INTERVAL
    reuse_port: bool = False
    worker: bool = False  # one of --workers N processes: CONFIG RELOAD reaches its siblings too
    limits: RequestLimits = attrs.field(factory=RequestLimits)
    # Following sentinels and replica reads; None means "as the cluster file says".
    sentinels: tuple[NodeAddress, ...] = ()
    sentinel_password: str | None = None
    name: str | None = None  # reported to sentinels (SG.PROXYEPOCH); default host:port
    read_from: ReadFrom | None = None
    max_replica_lag_ms: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.config_path is not None and self.backends:
            raise ConfigError("give only one of --config FILE or --backends host:port,...")
        if self.config_path is None and not self.backends and not self.sentinels:
            raise ConfigError(
                "give --config FILE, --backends host:port,... or --sentinels host:port,..."
            )
        if self.backends and self.sentinels:
            raise ConfigError("--backends is a static topology: use --config with --sentinels")
        if self.max_replica_lag_ms is not None and self.max_replica_lag_ms < 0:
            raise ConfigError("--max-replica-lag-ms must not be negative")
        if self.timeout <= 0:
            raise ConfigError("--timeout-ms must be positive")
        if self.workers < 1 or self.connections_per_backend < 1:
            raise ConfigError("--workers and --backend-connections must be at least 1")

    @property
    def proxy_name(self) -> str:
        return self.name or f"{self.host}:{self.port}"

    def load_settings(self) -> ClusterSettings:
        """The cluster file merged with the flags; raises ConfigError when it is invalid."""
        if self.config_path is None:
            topology = Topology.even(self.backends) if self.backends else None
            options: dict[str, Any] = {}
            shard_modes: dict[str, ReadFrom] = {}
        else:
            topology, options, shard_modes = _parse_cluster_file(self.config_path)
        where = self.config_path or "flags"
        try:
            sentinels = self.sentinels or tuple(
                NodeAddress.parse(a) for a in _list(options.get("sentinels", []), "sentinels")
            )
            password = self.sentinel_password or options.get("sentinel_password")
            if password is not None and not isinstance(password, str):
                raise ConfigError("sentinel_password: expected a string")
            read_from = self.read_from or ReadFrom.parse(
                options.get("read_from", ReadFrom.PRIMARY.value)
            )
            lag = self.max_replica_lag_ms
            if lag is None:
                lag = options.get("max_replica_lag_ms", DEFAULT_MAX_REPLICA_LAG_MS)
            if isinstance(lag, bool) or not isinstance(lag, int) or lag < 0:
                raise ConfigError(f"max_replica_lag_ms: expected milliseconds >= 0, got {lag!r}")
        except (TopologyError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if topology is None and not sentinels:
            raise ConfigError(f"{where}: no [[shards]] and no sentinels to learn them from")
        return ClusterSettings(
            topology=topology,
            sentinels=sentinels,
            sentinel_password=password,
            read_from=read_from,
            shard_read_from=tuple(sorted(shard_modes.items())),
            max_replica_lag_ms=lag,
        )

    def load_topology(self) -> Topology | None:
        """The slot map of the file or ``--backends`` (None when only sentinels give one)."""
        return self.load_settings().topology

    def params(self) -> dict[str, str]:
        """What CONFIG GET shows (never the passwords)."""
        return {
            "bind": self.host,
            "port": str(self.port),
            "maxclients": str(self.max_clients),
            "timeout-ms": str(round(self.timeout * 1000)),
            "cluster-config-file": self.config_path or "",
            "proxy-workers": str(self.workers),
            "backend-connections": str(self.connections_per_backend),
            "backend-queue-limit": str(self.max_backend_queue),
            "client-outstanding-limit": str(self.max_outstanding),
            "proto-max-bulk-len": str(self.limits.max_bulk),
            "client-query-buffer-limit": str(self.limits.max_querybuf),
            "requirepass": "" if self.requirepass is None else "(set)",
            "sentinels": ",".join(str(a) for a in self.sentinels),
            "proxy-name": self.proxy_name,
        }


def _list(value: object, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{name}: expected a list of host:port strings")
    return value
