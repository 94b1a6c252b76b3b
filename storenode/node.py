"""The store node's state and command dispatch, independent of sockets.

``Node.execute(session, args)`` turns one parsed command into the bytes of its reply: it checks
the command table (unknown command, arity, authentication, memory), hands data commands to the
pure ``Executor`` and connection/server commands to ``connection_commands``, and translates
``CommandError`` into an error reply in exactly one place.

Dispatch is one dict lookup: ``_routes`` maps both spellings of each name (lower and upper
case, what clients send) to a ``_Route`` holding the handler and the checks, precomputed from
the command table, so a GET costs no per-call flag parsing.

Writes are gated by the node's role (``roles.RoleState``: replicas and fenced primaries answer
``-READONLY``) and by ``min_replicas_to_write``; after a write the keys it named are sent to the
replication stream as their new state (``replication.py``). WAIT and SG.SYNC cannot be answered
at once: ``execute`` returns a ``Deferred`` for the connection loop to complete.
"""

from __future__ import annotations

import secrets
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator
from time import monotonic, perf_counter_ns, time_ns

import attrs

from shardgate.commands import COMMANDS, CommandSpec
from shardgate.errors import CommandError, unknown_command, wrong_arity
from shardgate.metrics import FastHistogram
from shardgate.resp import OK, OK_BYTES, encode_error, encode_reply
from storenode import connection_commands, roles
from storenode.config import NodeConfig
from storenode.executor import Executor
from storenode.keyspace import EvictionPolicy, Keyspace
from storenode.node_types import Deferred, LinkSink, PausedWrite
from storenode.persistence import Persistence
from storenode.replication import (
    FLUSH_EFFECT,
    ReplicaTable,
    ReplicationBacklog,
    del_effect,
    put_effect,
)
from storenode.roles import Role, RoleState
from storenode.session import Session

Handler = Callable[["Node", Session, list[bytes]], "bytes | Deferred"]
DataHandler = Callable[[list[bytes], int], object]

_NOAUTH = encode_error("NOAUTH Authentication required.")
_OOM_TEXT = "OOM command not allowed when used memory > 'maxmemory'."
_READONLY_REPLICA = "READONLY You can't write against a read only replica."
_NOREPLICAS = "NOREPLICAS Not enough good replicas to write."
_FLUSHES = frozenset({"flushdb", "flushall"})
# The background tick runs every 1/hz (100 ms); a gap this long means the process was stopped.
STALL_SECONDS = 1.0


@attrs.define(slots=True)
class ReplicationState:
    replid: str
    replid2: str = "0" * 40  # the previous primary's replid, for partial resync after failover
    second_offset: int = -1  # up to where replid2's history is ours
    backlog: ReplicationBacklog | None = None  # created when the first replica connects
    offset: int = 0  # master_repl_offset (primary) or the applied offset (replica)
    # replid/offset name a real point of a primary's stream (after a sync or a snapshot load),
    # even at offset 0: SG.SYNC then asks to continue instead of sending "?".
    history: bool = False
    replicas: ReplicaTable = attrs.field(factory=ReplicaTable)
    links: dict[int, LinkSink] = attrs.field(factory=dict)
    link_up: bool = False  # replica: connected to the primary and streaming
    link_down_since: float = 0.0  # replica: monotonic time the link went down (0: never up)
    sync_in_progress: bool = False
    last_io: float = 0.0  # replica: monotonic time of the last byte from the primary
    full_syncs: int = 0  # primary: snapshots served (INFO sync_full)
    partial_syncs: int = 0  # primary: partial resyncs accepted (INFO sync_partial_ok)
    partial_refused: int = 0  # primary: partial resyncs refused (INFO sync_partial_err)


class CommandCounters:
    """What INFO commandstats shows for one command."""

    __slots__ = ("calls", "failed", "usec")

    def __init__(self) -> None:
        self.calls = 0
        self.usec = 0.0
        self.failed = 0

    def __iter__(self) -> Iterator[float]:
        return iter((self.calls, self.usec, self.failed))


class _Route:
    """Everything dispatch needs about one command."""

    __slots__ = (
        "arity",
        "counters",
        "data",
        "denyoom",
        "flush",
        "local",
        "name",
        "noauth",
        "spec",
        "write",
    )

    def __init__(self, spec: CommandSpec, local: Handler | None, data: DataHandler | None) -> None:
        self.spec = spec
        self.name = spec.name
        self.arity = spec.arity
        self.local = local
        self.data = data
        self.denyoom = "denyoom" in spec.flags
        self.noauth = "noauth" in spec.flags
        self.write = "write" in spec.flags
        self.flush = spec.name in _FLUSHES
        self.counters = CommandCounters()


@attrs.define(slots=True)
class NodeStats:
    connections_received: int = 0
    commands_processed: int = 0
    net_input_bytes: int = 0
    net_output_bytes: int = 0
    rejected_connections: int = 0
    error_replies: int = 0
    protocol_errors: int = 0
    output_limit_disconnections: int = 0
    command_calls: dict[str, CommandCounters] = attrs.field(factory=dict)
    error_prefixes: defaultdict[str, int] = attrs.field(factory=lambda: defaultdict(int))
    latency: FastHistogram = attrs.field(factory=FastHistogram)


class Node:
    def __init__(self, config: NodeConfig, *, config_file: str | None = None) -> None:
        self.config = config
        self.config_file = config_file
        self.port = config.port
        self.keyspace = Keyspace(
            maxmemory=config.maxmemory, policy=EvictionPolicy(config.maxmemory_policy)
        )
        self.executor = Executor(self.keyspace)
        self.executor.proto_max_bulk_len = config.proto_max_bulk_len
        self.sessions: dict[int, Session] = {}
        self.stats = NodeStats()
        self.run_id = secrets.token_hex(20)
        self.started_wall = time.time()
        self.used_memory_peak = 0
        self._next_client_id = 1
        # CLIENT PAUSE ms WRITE: writes wait until this monotonic time (a manual failover).
        self.writes_paused_until = 0.0
        self.on_unpause: Callable[[], None] = lambda: None
        # Stall detection for min-replicas: the server's background loop stamps last_tick.
        self.last_tick = monotonic()
        self.woke_at = 0.0
        self.roles = RoleState(role=Role.UNASSIGNED if config.managed else Role.PRIMARY)
        if config.replicaof:
            self.roles = roles.manual(self.roles, Role.REPLICA, config.replicaof)
        self.repl = ReplicationState(replid=secrets.token_hex(20))
        self.persistence = Persistence(config)  # snapshots on disk (storenode/persistence.py)
        if config.sync_replicas:
            # Semi-sync counts writes by offset, so the stream must exist before any replica.
            self.ensure_backlog()
        # Called after every role change; the server (re)starts or stops the replica link.
        self.on_role_change: Callable[[], None] = lambda: None
        self.keyspace.on_delete = self._on_keyspace_delete
        self._latency = self.stats.latency
        self.write_gate_open = True
        self.propagating = False
        self.memory_limited = False
        self.refresh_gates()
        self._routes: dict[bytes, _Route] = {}
        for spec in COMMANDS.values():
            local = connection_commands.HANDLERS.get(spec.name)
            data = None if local else getattr(self.executor, f"cmd_{spec.name}", None)
            if local is None and data is None:
                raise RuntimeError(f"no handler for {spec.name}")  # a command-table bug
            route = _Route(spec, local, data)
            self.stats.command_calls[spec.name] = route.counters
            self._routes[spec.name.encode()] = route
            self._routes[spec.name.upper().encode()] = route

    def new_client_id(self) -> int:
        cid = self._next_client_id
        self._next_client_id += 1
        return cid

    def refresh_gates(self) -> None:
        """Recompute the booleans the hot path checks, after any change they depend on (role,
        backlog, pause, config): one attribute read per write instead of a chain of checks."""
        self.write_gate_open = (
            self.roles.writable
            and not self.config.min_replicas_to_write
            and not self.writes_paused_until
        )
        self.propagating = self.repl.backlog is not None and self.roles.role is Role.PRIMARY
        self.memory_limited = self.keyspace.maxmemory > 0

    def execute(self, session: Session, args: list[bytes]) -> bytes | Deferred:
        route = self._routes.get(args[0]) or self._routes.get(args[0].lower())
        if route is None:
            return self._error(unknown_command(args).message)
        argc = len(args)
        arity = route.arity
        if argc != arity and (arity >= 0 or argc < -arity):
            return self._error(wrong_arity(route.name).message)
        if not session.authenticated and not route.noauth:
            self.stats.error_replies += 1
            return _NOAUTH
        session.last_cmd = route.name
        started = perf_counter_ns()
        data = route.data
        reply: bytes | Deferred
        try:
            if data is None:
                reply = route.local(self, session, args)  # type: ignore[misc]
            else:
                write = route.write
                if write and not self.write_gate_open:
                    held = self._gate(route, args)
                    if held is not None:
                        return held
                if route.denyoom and self.memory_limited and not self.keyspace.evict_if_needed():
                    return self._error(_OOM_TEXT, route)
                now_ms = time_ns() // 1_000_000
                value = data(args, now_ms)
                if write and self.propagating:
                    self._propagate(route, args, now_ms)
                cls = value.__class__
                if cls is bytes:  # GET and friends: skip the generic encoder
                    reply = b"$%d\r\n%b\r\n" % (len(value), value)  # type: ignore[arg-type,str-format]
                elif value is OK:
                    reply = OK_BYTES
                elif cls is int:
                    reply = b":%d\r\n" % value  # type: ignore[str-format]
                else:
                    reply = encode_reply(value, session.resp3)
        except CommandError as exc:
            return self._error(exc.message, route)
        elapsed = perf_counter_ns() - started
        self.stats.commands_processed += 1
        counters = route.counters
        counters.calls += 1
        counters.usec += elapsed / 1000
        # FastHistogram.observe inlined: this runs for every command.
        latency = self._latency
        latency.counts[bisect_left(latency.bounds_ns, elapsed)] += 1
        latency.total += elapsed / 1e9
        return reply

    def _gate(self, route: _Route, args: list[bytes]) -> bytes | Deferred | None:
        """The slow path of a write: paused, refused, or allowed after all."""
        if self.writes_paused_until:
            if monotonic() < self.writes_paused_until:
                return PausedWrite(tuple(args))
            self.writes_paused_until = 0.0
            self.refresh_gates()
        refusal = self._refuse_write()
        if refusal is not None:
            return self._error(refusal, route)
        return None

    # --- replication ----------------------------------------------------------------------

    def _refuse_write(self) -> str | None:
        state = self.roles
        if not state.writable:
            if state.role is Role.REPLICA:
                return _READONLY_REPLICA
            if state.role is Role.UNASSIGNED:
                return "READONLY This node has no role yet (managed: waiting for SG.ROLE)."
            return (
                f"READONLY This primary was superseded in epoch {state.epoch}; "
                "refresh the topology."
            )
        need = self.config.min_replicas_to_write
        if need:
            now = monotonic()
            if now - self.last_tick > STALL_SECONDS:
                # The background tick (every 100 ms) has not run for a while: the process was
                # stopped (SIGSTOP, a VM pause). Whoever followed us then may follow someone else
                # now; only acks sent after waking count (docs/replication.md).
                self.woke_at = now
                self.last_tick = now
            if self.repl.replicas.good(now, self.config.min_replicas_max_lag, self.woke_at) < need:
                return _NOREPLICAS
        return None

    def _propagate(self, route: _Route, args: list[bytes], now_ms: int) -> None:
        """Send the new state of every key the write named to the replication stream."""
        if route.flush:
            self.emit(FLUSH_EFFECT)
            return
        peek = self.keyspace.peek
        parts = []
        for i in route.spec.key_indexes(len(args)):
            key = args[i]
            e = peek(key, now_ms)
            if e is None:
                parts.append(del_effect(key))
            else:
                parts.append(put_effect(key, e.value, e.expire_at))
        self.emit(parts[0] if len(parts) == 1 else b"".join(parts))

    def _on_keyspace_delete(self, key: bytes, reason: str) -> None:
        # Expiry and eviction on a primary replicate as deletes; a replica's own lazy expiry
        # is local (its primary's DEL will follow, and applying it twice is harmless).
        if self.repl.backlog is not None and self.roles.role is Role.PRIMARY:
            self.emit(del_effect(key))

    def emit(self, data: bytes) -> None:
        repl = self.repl
        assert repl.backlog is not None
        repl.backlog.append(data)
        repl.offset = repl.backlog.end_offset
        for link in repl.links.values():
            link.push(data)

    def ensure_backlog(self) -> ReplicationBacklog:
        repl = self.repl
        if repl.backlog is None:
            repl.backlog = ReplicationBacklog(self.config.repl_backlog_size, repl.offset)
            self.refresh_gates()
        return repl.backlog

    def set_roles(self, state: RoleState) -> None:
        """Adopt a new role state; a promotion keeps the history for partial resyncs."""
        old = self.roles
        self.roles = state
        self.refresh_gates()
        if state.role is not old.role or state.primary != old.primary:
            repl = self.repl
            if state.role is Role.PRIMARY and old.role is not Role.PRIMARY:
                # Redis's replid2: replicas of our old primary may continue from our offset.
                repl.replid2 = repl.replid
                repl.second_offset = repl.offset
                repl.replid = secrets.token_hex(20)
                self.ensure_backlog()
            self.on_role_change()

    def _error(self, message: str, route: _Route | None = None) -> bytes:
        stats = self.stats
        stats.error_replies += 1
        stats.error_prefixes[message.split(" ", 1)[0]] += 1
        if route is not None:
            stats.commands_processed += 1
            route.counters.calls += 1
            route.counters.failed += 1
        return encode_error(message)
