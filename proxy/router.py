"""Command routing: which shard(s) a client command goes to, and how their replies merge.

How it works
- ``Router`` is built from a ``Topology`` and never changes; a reload builds a new one and the
  proxy swaps the reference, so a command is routed by exactly one topology.
- ``route(args)`` returns a decision: an ``int`` shard index (the hot path: forward the request
  whole to that shard's primary and pass its reply through byte for byte), or one of ``Split``,
  ``Fanout``, ``Local`` or ``Reject``.
- A split or fan-out carries a ``merge`` function that turns the per-shard replies (raw RESP
  bytes, in part order) into the one reply the client sees; any part that is an error makes the
  whole reply that error, so a client never mistakes a partial result for success.
- SCAN's proxy cursor is ``node_cursor * nshards + shard_index``: the proxy walks shard 0 to the
  end, then shard 1, …, so a full iteration returns every key that existed throughout exactly as
  often as each node's SCAN does (once, for shardgate nodes and redis-server).

This module is sans-I/O: no clock, no randomness (RANDOMKEY asks every shard and takes the
first key found starting from a shard that rotates per call; each node picks its key at random).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import xxhash

from proxy import merge
from shardgate.commands import COMMANDS, PROXY_ONLY, CommandSpec, Route
from shardgate.errors import wrong_arity
from shardgate.resp import encode_command, encode_error
from shardgate.slots import BRACE, SLOTS, hash_tag, slot_for_key
from shardgate.topology import NodeAddress, Topology

xxh3 = _xxh3 = xxhash.xxh3_64_intdigest
CROSSSLOT = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n"

Merge = Callable[[list[bytes]], bytes]

# Wire name (any case) → spec. Filled lazily per spelling so "GET", "get" and "Get" each cost
# one dict lookup after the first time.
_SPECS: dict[bytes, CommandSpec | None] = {}
_ALL_SPECS = {**COMMANDS, **PROXY_ONLY}
# Wire name → arity, for the commands with exactly one key, at argument 1 (GET, SET, INCR …):
# the hot path routes those with one dict lookup and one hash.
SINGLE_KEY: dict[bytes, int] = {}
_SINGLE_KEY = SINGLE_KEY


def lookup(name: bytes) -> CommandSpec | None:
    try:
        return _SPECS[name]
    except KeyError:
        pass
    try:
        spec = _ALL_SPECS.get(name.decode("ascii").lower())
    except UnicodeDecodeError:
        spec = None
    if len(_SPECS) < 4096:  # bound the cache against clients sending random names
        _SPECS[name] = spec
        if spec is not None and spec.route is Route.KEYED and spec.first_key == spec.last_key == 1:
            _SINGLE_KEY[name] = spec.arity
    return spec


# Both usual spellings of every command known at start, so the hot path's SINGLE_KEY holds them
# before the first request, not only after a command was once routed the slow way.
for _name in _ALL_SPECS:
    lookup(_name.encode())
    lookup(_name.upper().encode())


class Split:
    """Send ``parts`` (shard index, encoded request) and merge the replies in part order."""

    __slots__ = ("merge", "parts")

    def __init__(self, parts: list[tuple[int, bytes]], merge: Merge) -> None:
        self.parts = parts
        self.merge = merge


class Local:
    """Answered by the proxy itself (``proxy.local``)."""

    __slots__ = ("name", "spec")

    def __init__(self, spec: CommandSpec) -> None:
        self.spec = spec
        self.name = spec.name


class Reject:
    """Refused by the proxy with this error reply; nothing is forwarded."""

    __slots__ = ("reply",)

    def __init__(self, reply: bytes) -> None:
        self.reply = reply


Decision = int | Split | Local | Reject


def unsupported(name: bytes) -> Reject:
    text = name.decode("utf-8", "replace")[:128]
    return Reject(encode_error(f"ERR command '{text}' is not supported by the shardgate proxy"))


class Router:
    __slots__ = ("_rotation", "nshards", "primaries", "slot_owner", "topology")

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.slot_owner = topology.slot_owner
        self.primaries: tuple[NodeAddress, ...] = tuple(s.primary for s in topology.shards)
        self.nshards = len(topology.shards)
        self._rotation = 0  # RANDOMKEY's starting shard advances on every call

    @property
    def epoch(self) -> int:
        return self.topology.epoch

    def shard_for_key(self, key: bytes) -> int:
        return self.slot_owner[slot_for_key(key)]

    def route(self, args: list[bytes]) -> Decision:
        arity = _SINGLE_KEY.get(args[0])
        if arity is not None:
            argc = len(args)
            if argc == arity or (arity < 0 and argc >= -arity):
                key = args[1]
                if BRACE in key:
                    key = hash_tag(key)
                return self.slot_owner[_xxh3(key) % SLOTS]
        spec = lookup(args[0])
        if spec is None:
            return unsupported(args[0])
        argc = len(args)
        if not spec.arity_ok(argc):
            return Reject(wrong_arity(spec.name).reply)
        route = spec.route
        if route is Route.KEYED:
            if spec.first_key <= 0:
                return unsupported(args[0])
            if argc == 2 or spec.last_key == spec.first_key:
                return self.slot_owner[slot_for_key(args[spec.first_key])]
            return self._same_slot(args, spec)
        if route is Route.LOCAL:
            return Local(spec)
        if route is Route.SPLIT_MGET:
            return self._split(args, 1, merge.mget)
        if route is Route.SPLIT_SUM:
            return self._split(args, 1, merge.total)
        if route is Route.SPLIT_MSET:
            if argc % 2 == 0:
                return Reject(wrong_arity(spec.name).reply)
            return self._split(args, 2, merge.all_ok)
        if route is Route.FANOUT_SUM:
            return self._fanout(args, merge.total)
        if route is Route.FANOUT_OK:
            return self._fanout(args, merge.all_ok)
        if route is Route.FANOUT_CONCAT:
            return self._fanout(args, merge.concat)
        if route is Route.RANDOMKEY:
            self._rotation += 1
            return self._fanout(args, partial(merge.first_non_null, start=self._rotation))
        if route is Route.SCAN:
            return self._scan(args)
        return unsupported(args[0])

    def _same_slot(self, args: list[bytes], spec: CommandSpec) -> Decision:
        slots = {slot_for_key(args[i]) for i in spec.key_indexes(len(args))}
        if len(slots) != 1:
            return Reject(CROSSSLOT)
        return self.slot_owner[slots.pop()]

    def _split(self, args: list[bytes], step: int, merge_fn: Callable[..., bytes]) -> Decision:
        """Group keys (or key/value pairs) by shard; one shard → forward whole."""
        owner = self.slot_owner
        groups: dict[int, tuple[list[bytes], list[int]]] = {}
        for pos, i in enumerate(range(1, len(args), step)):
            shard = owner[slot_for_key(args[i])]
            group = groups.get(shard)
            if group is None:
                group = groups[shard] = ([args[0]], [])
            group[0].extend(args[i : i + step])
            group[1].append(pos)
        if len(groups) == 1:
            return next(iter(groups))
        parts = [(shard, encode_command(g[0])) for shard, g in groups.items()]
        positions = [g[1] for g in groups.values()]
        return Split(parts, partial(merge_fn, positions=positions))

    def _fanout(self, args: list[bytes], merge_fn: Merge) -> Decision:
        request = encode_command(args)
        if self.nshards == 1:
            return 0
        return Split([(shard, request) for shard in range(self.nshards)], merge_fn)

    def _scan(self, args: list[bytes]) -> Decision:
        try:
            cursor = int(args[1])
        except ValueError:
            return Reject(b"-ERR invalid cursor\r\n")
        if cursor < 0:
            return Reject(b"-ERR invalid cursor\r\n")
        shard, node_cursor = cursor % self.nshards, cursor // self.nshards
        request = encode_command([args[0], b"%d" % node_cursor, *args[2:]])
        return Split(
            [(shard, request)], partial(merge.scan_page, shard=shard, nshards=self.nshards)
        )


# Wire name → may this command be served by a replica (command table flag ``readonly``)?
_READONLY: dict[bytes, bool] = {}


def is_readonly(name: bytes) -> bool:
    try:
        return _READONLY[name]
    except KeyError:
        pass
    spec = lookup(name)
    ok = spec is not None and "readonly" in spec.flags and spec.route is not Route.SCAN
    if len(_READONLY) < 4096:
        _READONLY[name] = ok
    return ok


NO_TOPOLOGY = b"-CLUSTERDOWN no topology yet: waiting for the sentinels\r\n"


class Unrouted:
    """The router before any topology is known (a proxy following sentinels that has not heard
    from one yet): the proxy answers its own commands, everything else gets ``NO_TOPOLOGY``
    rather than a guess."""

    __slots__ = ()
    topology = None
    epoch = 0
    nshards = 0

    def route(self, args: list[bytes]) -> Decision:
        spec = lookup(args[0])
        if spec is None:
            return unsupported(args[0])
        if spec.route is Route.LOCAL:
            if not spec.arity_ok(len(args)):
                return Reject(wrong_arity(spec.name).reply)
            return Local(spec)
        return Reject(NO_TOPOLOGY)


def keyslot_reply(key: bytes) -> bytes:
    """CLUSTER KEYSLOT's reply: the slot as an integer."""
    slot = slot_for_key(key)
    assert 0 <= slot < SLOTS
    return b":%d\r\n" % slot
