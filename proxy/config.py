"""The proxy's settings (a frozen value built from the command line) and topology loading."""

from __future__ import annotations

import attrs

from shardgate.config import ConfigError
from shardgate.resp import RequestLimits
from shardgate.topology import NodeAddress, Topology, load_topology

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
    limits: RequestLimits = attrs.field(factory=RequestLimits)

    def __attrs_post_init__(self) -> None:
        if (self.config_path is None) == (not self.backends):
            raise ConfigError("give exactly one of --config FILE or --backends host:port,...")
        if self.timeout <= 0:
            raise ConfigError("--timeout-ms must be positive")
        if self.workers < 1 or self.connections_per_backend < 1:
            raise ConfigError("--workers and --backend-connections must be at least 1")

    def load_topology(self) -> Topology:
        """The topology this config names; raises ConfigError when it is invalid."""
        if self.config_path is not None:
            return load_topology(self.config_path)
        return Topology.even(self.backends)

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
        }
