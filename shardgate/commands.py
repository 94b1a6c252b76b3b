"""The command table: one spec per command, shared by the store node, the proxy and the tests.

Arity, flags and key positions follow Redis 7's ``COMMAND INFO`` (negative arity means "at least").
``route`` tells the proxy what to do with the command; the node ignores it.
"""

from __future__ import annotations

import enum

import attrs


class Route(enum.Enum):
    KEYED = "keyed"  # all keys must hash to one slot; forwarded whole to that shard
    SPLIT_MGET = "split-mget"  # one key per element; replies concatenated in client order
    SPLIT_MSET = "split-mset"  # key/value pairs; +OK when every shard said OK
    SPLIT_SUM = "split-sum"  # one key per element; integer replies summed
    FANOUT_SUM = "fanout-sum"  # every shard; integers summed (DBSIZE)
    FANOUT_OK = "fanout-ok"  # every shard; +OK when all said OK (FLUSHDB)
    FANOUT_CONCAT = "fanout-concat"  # every shard; arrays concatenated (KEYS)
    SCAN = "scan"  # shard-by-shard cursor
    RANDOMKEY = "randomkey"
    LOCAL = "local"  # answered by the proxy itself
    UNSUPPORTED = "unsupported"  # known to the node but refused by the proxy


@attrs.frozen(slots=True)
class CommandSpec:
    name: str
    arity: int
    flags: frozenset[str]
    first_key: int = 0
    last_key: int = 0
    step: int = 0
    route: Route = Route.KEYED
    group: str = "string"
    summary: str = ""

    @property
    def is_write(self) -> bool:
        return "write" in self.flags

    def arity_ok(self, argc: int) -> bool:
        return argc == self.arity if self.arity >= 0 else argc >= -self.arity

    def key_indexes(self, argc: int) -> range:
        """Indexes of the key arguments in a command of ``argc`` arguments."""
        if self.first_key <= 0:
            return range(0)
        last = self.last_key if self.last_key >= 0 else argc + self.last_key
        return range(self.first_key, last + 1, self.step)


def _c(
    name: str,
    arity: int,
    flags: str,
    keys: tuple[int, int, int] = (0, 0, 0),
    route: Route = Route.KEYED,
    group: str = "string",
    summary: str = "",
) -> CommandSpec:
    first, last, step = keys
    return CommandSpec(
        name=name,
        arity=arity,
        flags=frozenset(flags.split()),
        first_key=first,
        last_key=last,
        step=step,
        route=route,
        group=group,
        summary=summary,
    )


_ONE = (1, 1, 1)
_ALL = (1, -1, 1)
_PAIRS = (1, -1, 2)
_L = Route.LOCAL
_U = Route.UNSUPPORTED
_G = "generic"
_C = "connection"
_S = "server"

COMMANDS: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        # strings
        _c("get", 2, "readonly fast", _ONE, summary="Get the value of a key"),
        _c("set", -3, "write denyoom", _ONE, summary="Set the string value of a key"),
        _c("setnx", 3, "write denyoom fast", _ONE, summary="Set a key only if it does not exist"),
        _c("setex", 4, "write denyoom", _ONE, summary="Set a key with an expiry in seconds"),
        _c("psetex", 4, "write denyoom", _ONE, summary="Set a key with an expiry in ms"),
        _c("getset", 3, "write denyoom fast", _ONE, summary="Set a key, return the old value"),
        _c("getdel", 2, "write fast", _ONE, summary="Get a key and delete it"),
        _c("getex", -2, "write fast", _ONE, summary="Get a key and set its expiry"),
        _c("mget", -2, "readonly fast", _ALL, Route.SPLIT_MGET, summary="Get many keys"),
        _c("mset", -3, "write denyoom", _PAIRS, Route.SPLIT_MSET, summary="Set many keys"),
        _c("msetnx", -3, "write denyoom", _PAIRS, summary="Set many keys if none exists"),
        _c("incr", 2, "write denyoom fast", _ONE, summary="Increment an integer by one"),
        _c("decr", 2, "write denyoom fast", _ONE, summary="Decrement an integer by one"),
        _c("incrby", 3, "write denyoom fast", _ONE, summary="Increment an integer"),
        _c("decrby", 3, "write denyoom fast", _ONE, summary="Decrement an integer"),
        _c("incrbyfloat", 3, "write denyoom fast", _ONE, summary="Increment a float"),
        _c("append", 3, "write denyoom fast", _ONE, summary="Append to a string"),
        _c("strlen", 2, "readonly fast", _ONE, summary="Length of a string"),
        _c("getrange", 4, "readonly", _ONE, summary="Substring of a string"),
        _c("setrange", 4, "write denyoom", _ONE, summary="Overwrite part of a string"),
        # keys
        _c("del", -2, "write", _ALL, Route.SPLIT_SUM, _G, "Delete keys"),
        _c("unlink", -2, "write fast", _ALL, Route.SPLIT_SUM, _G, "Delete keys"),
        _c("exists", -2, "readonly fast", _ALL, Route.SPLIT_SUM, _G, "Count existing keys"),
        _c("touch", -2, "readonly fast", _ALL, Route.SPLIT_SUM, _G, "Touch keys"),
        _c("expire", -3, "write fast", _ONE, group=_G, summary="Set a TTL in seconds"),
        _c("pexpire", -3, "write fast", _ONE, group=_G, summary="Set a TTL in ms"),
        _c("expireat", -3, "write fast", _ONE, group=_G, summary="Set expiry (unix s)"),
        _c("pexpireat", -3, "write fast", _ONE, group=_G, summary="Set expiry (unix ms)"),
        _c("ttl", 2, "readonly fast", _ONE, group=_G, summary="TTL in seconds"),
        _c("pttl", 2, "readonly fast", _ONE, group=_G, summary="TTL in ms"),
        _c("expiretime", 2, "readonly fast", _ONE, group=_G, summary="Expiry (unix s)"),
        _c("pexpiretime", 2, "readonly fast", _ONE, group=_G, summary="Expiry (unix ms)"),
        _c("persist", 2, "write fast", _ONE, group=_G, summary="Remove a key's TTL"),
        _c("type", 2, "readonly fast", _ONE, group=_G, summary="Type of a key"),
        _c("scan", -2, "readonly", route=Route.SCAN, group=_G, summary="Iterate keys"),
        _c("keys", 2, "readonly", route=Route.FANOUT_CONCAT, group=_G, summary="Find keys"),
        _c("randomkey", 1, "readonly", route=Route.RANDOMKEY, group=_G, summary="A random key"),
        # server
        _c("dbsize", 1, "readonly fast", route=Route.FANOUT_SUM, group=_S, summary="Key count"),
        _c("flushdb", -1, "write", route=Route.FANOUT_OK, group=_S, summary="Remove all keys"),
        _c("flushall", -1, "write", route=Route.FANOUT_OK, group=_S, summary="Remove all keys"),
        _c("info", -1, "loading stale", route=_L, group=_S, summary="Server information"),
        _c("config", -2, "admin noscript loading stale", route=_L, group=_S, summary="Settings"),
        _c("command", -1, "loading stale", route=_L, group=_S, summary="Command table"),
        _c("time", 1, "loading stale fast", route=_L, group=_S, summary="Server time"),
        _c("memory", -2, "readonly", (2, 2, 1), Route.UNSUPPORTED, _S, "Memory usage"),
        # connection
        _c("ping", -1, "fast stale", route=_L, group=_C, summary="Ping the server"),
        _c("echo", 2, "fast stale", route=_L, group=_C, summary="Echo a message"),
        _c("auth", -2, "noauth fast stale loading", route=_L, group=_C, summary="Authenticate"),
        _c("hello", -1, "noauth fast stale loading", route=_L, group=_C, summary="Handshake"),
        _c("select", 2, "loading stale fast", route=_L, group=_C, summary="Select database 0"),
        _c("client", -2, "loading stale", route=_L, group=_C, summary="Client connection"),
        _c("quit", -1, "noauth fast stale loading", route=_L, group=_C, summary="Close"),
        _c("reset", 1, "noauth fast stale loading", route=_L, group=_C, summary="Reset"),
        # replication and fencing (the proxy never forwards these)
        _c("replicaof", 3, "admin noscript stale", route=_U, group=_S, summary="Follow a primary"),
        _c("slaveof", 3, "admin noscript stale", route=_U, group=_S, summary="Old REPLICAOF"),
        _c(
            "role", 1, "noscript loading stale fast", route=_U, group=_S, summary="Replication role"
        ),
        _c("wait", 3, "noscript", route=_U, group=_G, summary="Wait for replica acks"),
        _c("sg.sync", 4, "admin noscript", route=_U, group=_S, summary="Replica handshake"),
        _c("sg.role", -3, "admin noscript stale fast", route=_U, group=_S, summary="Assign a role"),
        _c("sg.fence", -2, "noscript stale fast", route=_U, group=_S, summary="Announce an epoch"),
        # persistence (storenode/persistence.py); the proxy never forwards these
        _c("save", 1, "admin noscript", route=_U, group=_S, summary="Write a snapshot now"),
        _c("bgsave", -1, "admin noscript", route=_U, group=_S, summary="Snapshot in a child"),
        _c("lastsave", 1, "loading stale fast", route=_U, group=_S, summary="Last save time"),
        _c("shutdown", -1, "admin noscript loading stale", route=_U, group=_S, summary="Stop"),
    )
}

# The proxy answers CLUSTER KEYSLOT itself; the node does not know CLUSTER.
PROXY_ONLY: dict[str, CommandSpec] = {
    "cluster": _c("cluster", -2, "loading stale", route=_L, group="cluster", summary="Slots"),
}


def lookup(name: bytes) -> CommandSpec | None:
    """The spec for a command name as it arrives on the wire (any case)."""
    try:
        return COMMANDS[name.decode("ascii").lower()]
    except (UnicodeDecodeError, KeyError):
        return None
