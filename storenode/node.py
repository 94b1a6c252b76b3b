"""The store node's state and command dispatch, independent of sockets.

``Node.execute(session, args)`` turns one parsed command into the bytes of its reply: it checks
the command table (unknown command, arity, authentication, memory), hands data commands to the
pure ``Executor`` and connection/server commands to ``connection_commands``, and translates
``CommandError`` into an error reply in exactly one place.
"""

from __future__ import annotations

import secrets
import time
from bisect import bisect_left
from collections import defaultdict
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

_NOAUTH = encode_error("NOAUTH Authentication required.")
_OOM_TEXT = "OOM command not allowed when used memory > 'maxmemory'."

# Both spellings are looked up by the exact bytes first: clients send lowercase or uppercase.
_SPECS: dict[bytes, CommandSpec] = {}
for _spec in COMMANDS.values():
    _SPECS[_spec.name.encode()] = _spec
    _SPECS[_spec.name.upper().encode()] = _spec
_DENYOOM = frozenset(spec for spec in COMMANDS.values() if "denyoom" in spec.flags)


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
    # name → [calls, usec, failed]
    command_calls: defaultdict[str, list[float]] = attrs.field(
        factory=lambda: defaultdict(lambda: [0, 0.0, 0])
    )
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
        self.sessions: dict[int, Session] = {}
        self.stats = NodeStats()
        self.run_id = secrets.token_hex(20)
        self.started_wall = time.time()
        self.used_memory_peak = 0
        self._next_client_id = 1
        self._local = connection_commands.HANDLERS

    def new_client_id(self) -> int:
        cid = self._next_client_id
        self._next_client_id += 1
        return cid

    def execute(self, session: Session, args: list[bytes]) -> bytes:
        name = args[0]
        spec = _SPECS.get(name) or _SPECS.get(name.lower())
        if spec is None:
            return self._error(unknown_command(args).message)
        argc = len(args)
        if argc != spec.arity and (spec.arity >= 0 or argc < -spec.arity):
            return self._error(wrong_arity(spec.name).message)
        if not session.authenticated and "noauth" not in spec.flags:
            self.stats.error_replies += 1
            return _NOAUTH
        cname = spec.name
        session.last_cmd = cname
        started = perf_counter_ns()
        try:
            local = self._local.get(cname)
            if local is not None:
                reply = local(self, session, args)
            else:
                if (
                    spec in _DENYOOM
                    and self.keyspace.maxmemory
                    and not self.keyspace.evict_if_needed()
                ):
                    return self._error(_OOM_TEXT, cname)
                value = self.executor.execute(args, time_ns() // 1_000_000)
                reply = encode_reply(value, session.resp3)
        except CommandError as exc:
            return self._error(exc.message, cname)
        elapsed = perf_counter_ns() - started
        stats = self.stats
        stats.commands_processed += 1
        entry = stats.command_calls[cname]
        entry[0] += 1
        entry[1] += elapsed / 1000
        # FastHistogram.observe inlined: this runs for every command.
        latency = stats.latency
        latency.counts[bisect_left(latency.bounds_ns, elapsed)] += 1
        latency.total += elapsed / 1e9
        return reply

    def _error(self, message: str, command: str | None = None) -> bytes:
        stats = self.stats
        stats.error_replies += 1
        stats.error_prefixes[message.split(" ", 1)[0]] += 1
        if command is not None:
            stats.commands_processed += 1
            entry = stats.command_calls[command]
            entry[0] += 1
            entry[2] += 1
        return encode_error(message)
