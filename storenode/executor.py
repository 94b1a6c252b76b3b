"""The store node's command executor: argument lists in, reply values out, no I/O.

``Executor.execute(args, now_ms)`` looks the command name up in one dict (both the lower- and
upper-case spellings are keys, so the usual cases need no ``.lower()``) and calls the handler.
Handlers live in ``string_commands`` and ``key_commands`` (mixins sharing ``self.ks``); the few
server commands the node answers from the keyspace (DBSIZE, FLUSHDB, FLUSHALL, MEMORY) are here.
Connection and server-state commands (PING, INFO, CONFIG...) belong to the server shell.
"""

from __future__ import annotations

from collections.abc import Callable

from shardgate.errors import CommandError, not_integer, syntax_error, unknown_command
from shardgate.resp import DEFAULT_MAX_BULK, OK, SimpleString
from storenode.args import cstr, eq, parse_ll
from storenode.key_commands import KeyCommands
from storenode.keyspace import Keyspace
from storenode.string_commands import StringCommands

Handler = Callable[[list[bytes], int], object]

_MEMORY_HELP = [
    SimpleString(line)
    for line in (
        "MEMORY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "DOCTOR",
        "    Return memory problems reports.",
        "MALLOC-STATS",
        "    Return internal statistics report from the memory allocator.",
        "PURGE",
        "    Attempt to purge dirty pages for reclamation by the allocator.",
        "STATS",
        "    Return information about the memory usage of the server.",
        "USAGE <key> [SAMPLES <count>]",
        "    Return memory in bytes used by <key> and its value. Nested values are",
        "    sampled up to <count> times (default: 5, 0 means sample all).",
        "HELP",
        "    Prints this help.",
    )
]


class Executor(StringCommands, KeyCommands):
    def __init__(self, keyspace: Keyspace) -> None:
        self.ks = keyspace
        # Redis's proto-max-bulk-len also caps APPEND and SETRANGE results; CONFIG SET may
        # change it.
        self.proto_max_bulk_len = DEFAULT_MAX_BULK
        table: dict[bytes, Handler] = {}
        for attr in dir(self):
            if attr.startswith("cmd_"):
                name = attr[4:].encode()
                handler = getattr(self, attr)
                table[name] = handler
                table[name.upper()] = handler
        self._table = table

    @property
    def command_names(self) -> frozenset[str]:
        """The commands this executor answers (lower case)."""
        return frozenset(k.decode() for k in self._table if k.islower())

    def execute(self, args: list[bytes], now_ms: int) -> object:
        handler = self._table.get(args[0])
        if handler is None:
            handler = self._table.get(args[0].lower())
            if handler is None:
                raise unknown_command(args)
        return handler(args, now_ms)

    # --- server commands backed by the keyspace -----------------------------------------

    def cmd_dbsize(self, args: list[bytes], now_ms: int) -> object:
        return len(self.ks)

    def cmd_flushdb(self, args: list[bytes], now_ms: int) -> object:
        if len(args) > 2 or (
            len(args) == 2 and not (eq(args[1], b"sync") or eq(args[1], b"async"))
        ):
            raise syntax_error()
        self.ks.flush(lazy=len(args) == 2 and eq(args[1], b"async"))
        return OK

    cmd_flushall = cmd_flushdb  # one database: the same thing

    def cmd_memory(self, args: list[bytes], now_ms: int) -> object:
        # Redis finds subcommands in a hash table keyed by the whole argument, so "USAGE\0" is
        # (usually: a hash-bucket collision with "usage" can make it match) unknown.
        sub = args[1].lower()
        if sub == b"usage":
            if len(args) < 3:
                raise CommandError("ERR wrong number of arguments for 'memory|usage' command")
            j = 3
            while j < len(args):
                if eq(args[j], b"samples") and j + 1 < len(args):
                    samples = parse_ll(args[j + 1])
                    if samples is None:
                        raise not_integer()
                    if samples < 0:
                        raise syntax_error()
                    j += 2
                else:
                    raise syntax_error()
            e = self.ks.peek(args[2], now_ms)
            return None if e is None else self.ks.record_size(args[2], e)
        if sub == b"help":
            if len(args) != 2:
                raise CommandError("ERR wrong number of arguments for 'memory|help' command")
            return _MEMORY_HELP
        name = cstr(args[1]).decode("utf-8", "replace")[:128]
        raise CommandError(f"ERR unknown subcommand '{name}'. Try MEMORY HELP.")
