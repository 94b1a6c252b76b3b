"""Replica reads, the shell: which connection a read goes to, and the INFO polls behind it.

How it works
- ``ShardReads`` is one shard's read plan, rebuilt on every topology swap: its mode, its primary
  connection, and ``candidates``, the replica connections currently within the lag limit.
  ``pick`` (called by client tasks, never awaits) round-robins over the candidates that are up;
  with none, ``prefer_replica`` falls back to the primary and ``replica`` refuses the read.
- ``ReplicaMonitor`` polls ``INFO replication`` of every node of the shards that read from
  replicas, one task per node every ``LAG_POLL_SECONDS`` (a stopped node delays only its own
  task), feeds the readings to ``proxy.replicas.ShardLag`` and refreshes every shard's
  ``candidates`` each period. The lag rules themselves are in ``proxy/replicas.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from proxy.backend import BackendConn
from proxy.control import ControlClient, ControlError
from proxy.replicas import LAG_POLL_SECONDS, ReadFrom, ShardLag, parse_replication
from shardgate.logs import log_event
from shardgate.topology import NodeAddress, Shard


class ShardReads:
    __slots__ = (
        "candidates",
        "fallbacks",
        "lag",
        "max_lag",
        "mode",
        "name",
        "no_replica",
        "primary",
        "refused",
        "replica_conns",
        "replica_reads",
        "rr",
    )

    def __init__(
        self,
        shard: Shard,
        mode: ReadFrom,
        primary: BackendConn,
        replica_conns: dict[NodeAddress, BackendConn],
        lag: ShardLag,
        max_lag: float,
    ) -> None:
        self.name = shard.name
        self.mode = mode
        self.primary = primary
        self.replica_conns = replica_conns
        self.lag = lag
        self.max_lag = max_lag
        self.candidates: list[BackendConn] = []
        self.rr = 0
        self.replica_reads = 0  # reads served by a replica
        self.fallbacks = 0  # prefer_replica reads that went to the primary
        self.refused = 0  # read_from=replica reads refused: no replica qualified
        self.no_replica = (
            f"-ERR no replica of shard {shard.name} is usable "
            f"(down, or lag over max_replica_lag_ms {round(max_lag * 1000)})\r\n"
        ).encode()

    def refresh(self, now: float) -> None:
        """Recompute the candidates from the lag tracker (every poll period, and on swap)."""
        self.candidates = [self.replica_conns[a] for a in self.lag.eligible(self.max_lag, now)]

    def pick(self) -> BackendConn | None:
        """The connection a read goes to; None when it must be refused."""
        cands = self.candidates
        n = len(cands)
        for _ in range(n):
            self.rr += 1
            conn = cands[self.rr % n]
            if conn.up and len(conn.waiters) < conn.max_queue:
                self.replica_reads += 1
                return conn
        if self.mode is ReadFrom.PREFER_REPLICA:
            self.fallbacks += 1
            return self.primary
        self.refused += 1
        return None


class ReplicaMonitor:
    """Polls the nodes of replica-reading shards; see the module docstring."""

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        password: str | None,
        timeout: float,
        on_period: Callable[[float], None],
    ) -> None:
        self.nursery = nursery
        self.password = password
        self.timeout = timeout
        self.on_period = on_period  # refreshes every shard's candidates
        self.lags: dict[tuple[NodeAddress, tuple[NodeAddress, ...]], ShardLag] = {}
        self._tasks: dict[NodeAddress, trio.CancelScope] = {}
        self._ticker: trio.CancelScope | None = None

    def lag_for(self, shard: Shard) -> ShardLag:
        """The tracker of a shard with this primary and these replicas (kept across swaps)."""
        key = (shard.primary, shard.replicas)
        lag = self.lags.get(key)
        if lag is None:
            lag = self.lags[key] = ShardLag(shard.primary, shard.replicas)
        return lag

    def sync(self, shards: list[Shard]) -> None:
        """Poll exactly the nodes of ``shards`` (the replica-reading ones) from now on."""
        keys = {(s.primary, s.replicas) for s in shards}
        self.lags = {k: v for k, v in self.lags.items() if k in keys}
        nodes = {a for s in shards for a in (s.primary, *s.replicas)}
        for addr in [a for a in self._tasks if a not in nodes]:
            self._tasks.pop(addr).cancel()
        for addr in nodes:
            if addr not in self._tasks:
                scope = trio.CancelScope()
                self._tasks[addr] = scope
                self.nursery.start_soon(self._poll, addr, scope)
        if nodes and self._ticker is None:
            self._ticker = trio.CancelScope()
            self.nursery.start_soon(self._tick, self._ticker)
        elif not nodes and self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    async def _tick(self, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                await trio.sleep(LAG_POLL_SECONDS)
                self.on_period(trio.current_time())

    async def _poll(self, addr: NodeAddress, scope: trio.CancelScope) -> None:
        client: ControlClient | None = None
        failing = False  # log once per change, not 10 times a second
        with scope:
            try:
                while True:
                    reading = None
                    try:
                        with trio.fail_after(self.timeout):
                            if client is None:
                                client = await ControlClient.connect(
                                    addr.host, addr.port, password=self.password
                                )
                            text = await client.call(b"INFO", b"replication")
                        if isinstance(text, bytes):
                            reading = parse_replication(text.decode("utf-8", "replace"))
                    except (OSError, ControlError, trio.TooSlowError) as exc:
                        if client is not None:
                            await client.aclose()
                            client = None
                        if not failing:
                            log_event("replica_poll_failed", "warn", node=str(addr), reason=exc)
                        failing = True
                    else:
                        if failing:
                            log_event("replica_poll_ok", node=str(addr))
                        failing = False
                    now = trio.current_time()
                    for lag in list(self.lags.values()):
                        lag.observe(addr, reading, now)
                    await trio.sleep(LAG_POLL_SECONDS)
            finally:
                if client is not None:
                    with trio.CancelScope(shield=True):
                        await client.aclose()
