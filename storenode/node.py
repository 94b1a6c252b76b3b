"""The store node's state and command dispatch, independent of sockets.

``Node.execute(session, args)`` turns one parsed command into the bytes of its reply: it checks
the command table (unknown command, arity, authentication, memory), hands data commands to the
pure ``Executor`` and connection/server commands to ``connection_commands``, and translates
``CommandError`` into an error reply in exactly one place.

Dispatch is one dict lookup: ``_routes`` maps both spellings of each name (lower and upper
case, what clients send) to a ``_Route`` holding the handler and the checks, precomputed from
the command table, so a GET costs no per-call flag parsing.
"""

from __future__ import annotations

import secrets
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator
from time import perf_counter_ns, time_ns

import attrs

from shardgate.commands import COMMANDS, CommandSpec
from shardgate.errors import CommandError, unknown_command, wrong_arity
from shardgate.metrics import FastHistogram
from shardgate.resp import encode_error, encode_reply
from storenode import connection_commands
from storenode.config import NodeConfig
from storenode.executor import Executor
from storenode.keyspace import EvictionPolicy, Keyspace
from storenode.session import Session

Handler = Callable[["Node", Session, list[bytes]], bytes]
DataHandler = Callable[[list[bytes], int], object]

_NOAUTH = encode_error("NOAUTH Authentication required.")
_OOM_TEXT = "OOM command not allowed when used memory > 'maxmemory'."


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

    __slots__ = ("arity", "counters", "data", "denyoom", "local", "name", "noauth", "spec")

    def __init__(self, spec: CommandSpec, local: Handler | None, data: DataHandler | None) -> None:
        self.spec = spec
        self.name = spec.name
        self.arity = spec.arity
        self.local = local
        self.data = data
        self.denyoom = "denyoom" in spec.flags
        self.noauth = "noauth" in spec.flags
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

    def execute(self, session: Session, args: list[bytes]) -> bytes:
        route = self._routes.get(args[0]) or self._routes.get(args[0].lower())
        if route is None:
            return self._error(unknown_command(args).message)
        argc = len(args)
        if argc != route.arity and (route.arity >= 0 or argc < -route.arity):
            return self._error(wrong_arity(route.name).message)
        if not session.authenticated and not route.noauth:
            self.stats.error_replies += 1
            return _NOAUTH
        session.last_cmd = route.name
        started = perf_counter_ns()
        try:
            data = route.data
            if data is not None:
                ks = self.keyspace
                if route.denyoom and ks.maxmemory and not ks.evict_if_needed():
                    return self._error(_OOM_TEXT, route)
                value = data(args, time_ns() // 1_000_000)
                if value.__class__ is bytes:  # GET and friends: skip the generic encoder
                    reply = b"$%d\r\n%b\r\n" % (len(value), value)
                else:
                    reply = encode_reply(value, session.resp3)
            else:
                reply = route.local(self, session, args)  # type: ignore[misc]
        except CommandError as exc:
            return self._error(exc.message, route)
        elapsed = perf_counter_ns() - started
        stats = self.stats
        stats.commands_processed += 1
        counters = route.counters
        counters.calls += 1
        counters.usec += elapsed / 1000
        # FastHistogram.observe inlined: this runs for every command.
        latency = stats.latency
        latency.counts[bisect_left(latency.bounds_ns, elapsed)] += 1
        latency.total += elapsed / 1e9
        return reply

    def _error(self, message: str, route: _Route | None = None) -> bytes:
        stats = self.stats
        stats.error_replies += 1
        stats.error_prefixes[message.split(" ", 1)[0]] += 1
        if route is not None:
            stats.commands_processed += 1
            route.counters.calls += 1
            route.counters.failed += 1
        return encode_error(message)
