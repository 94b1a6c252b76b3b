"""Connection and server commands the node answers itself (not data commands).

PING ECHO AUTH HELLO SELECT CLIENT QUIT RESET INFO CONFIG COMMAND TIME, with Redis 7's
replies and error texts.
"""

from __future__ import annotations

import fnmatch
import hmac
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from shardgate import __version__
from shardgate.commands import COMMANDS, CommandSpec
from shardgate.config import ConfigError, parse_address
from shardgate.errors import CommandError, not_integer, syntax_error
from shardgate.logs import log_event
from shardgate.resp import OK, SimpleString, Verbatim, encode_reply
from storenode import persistence_commands, roles
from storenode.config import NodeConfig, coerce
from storenode.info import REDIS_COMPAT_VERSION, render_info
from storenode.keyspace import EvictionPolicy
from storenode.node_types import Deferred, ServeReplica, WaitForAcks
from storenode.roles import Role
from storenode.session import Session
from storenode.snapshot_file import format_save_points

if TYPE_CHECKING:
    from storenode.node import Node

Handler = Callable[["Node", Session, list[bytes]], "bytes | Deferred"]

_PONG = b"+PONG\r\n"


def _ping(node: Node, s: Session, args: list[bytes]) -> bytes:
    if len(args) > 2:
        raise CommandError("ERR wrong number of arguments for 'ping' command")
    if len(args) == 2:
        return encode_reply(args[1], s.resp3)
    return _PONG


def _echo(node: Node, s: Session, args: list[bytes]) -> bytes:
    return encode_reply(args[1], s.resp3)


def _check_password(node: Node, s: Session, user: bytes, password: bytes) -> None:
    """Redis's default user: with no requirepass it has ``nopass``, so any password works
    for user ``default`` (only the one-argument AUTH form complains)."""
    required = node.config.requirepass
    if user != b"default" or (required and not hmac.compare_digest(password, required.encode())):
        raise CommandError("WRONGPASS invalid username-password pair or user is disabled.")
    s.set_authenticated(True)


def _auth(node: Node, s: Session, args: list[bytes]) -> bytes:
    if len(args) > 3:
        raise syntax_error()
    if len(args) == 2:
        if not node.config.requirepass:
            raise CommandError(
                "ERR AUTH <password> called without any password configured for the default "
                "user. Are you sure your configuration is correct?"
            )
        _check_password(node, s, b"default", args[1])
    else:
        _check_password(node, s, args[1], args[2])
    return b"+OK\r\n"


def _hello(node: Node, s: Session, args: list[bytes]) -> bytes:
    resp3 = s.resp3
    i = 1
    if len(args) > 1:
        try:
            ver = int(args[1])
        except ValueError:
            raise CommandError("ERR Protocol version is not an integer or out of range") from None
        if ver not in (2, 3):
            raise CommandError("NOPROTO unsupported protocol version")
        resp3 = ver == 3
        i = 2
    name: bytes | None = None
    while i < len(args):
        opt = args[i].lower()
        if opt == b"auth" and i + 2 < len(args):
            _check_password(node, s, args[i + 1], args[i + 2])
            i += 3
        elif opt == b"setname" and i + 1 < len(args):
            name = _valid_name(args[i + 1])
            i += 2
        else:
            raise CommandError(
                f"ERR Syntax error in HELLO option '{args[i].decode('utf-8', 'replace')}'"
            )
    if not s.authenticated:
        raise CommandError(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time"
        )
    if name is not None:
        s.name = name
    s.resp3 = resp3
    info: dict[str, object] = {
        "server": "redis",
        "version": REDIS_COMPAT_VERSION,
        "proto": 3 if resp3 else 2,
        "id": s.id,
        "mode": "standalone",
        "role": "master",
        "modules": [],
    }
    return encode_reply(info, resp3)


def _select(node: Node, s: Session, args: list[bytes]) -> bytes:
    try:
        db = int(args[1])
    except ValueError:
        raise not_integer() from None
    if db != 0:
        raise CommandError("ERR DB index is out of range")
    return b"+OK\r\n"


def _valid_name(name: bytes) -> bytes:
    if any(c < 33 or c > 126 for c in name):
        raise CommandError(
            "ERR Client names cannot contain spaces, newlines or special characters."
        )
    return name


def _client(node: Node, s: Session, args: list[bytes]) -> bytes:
    sub = args[1].lower()
    now = time.time()
    if sub == b"setname" and len(args) == 3:
        s.name = _valid_name(args[2])
        return b"+OK\r\n"
    if sub == b"getname" and len(args) == 2:
        return encode_reply(s.name or None, s.resp3)
    if sub == b"id" and len(args) == 2:
        return b":%d\r\n" % s.id
    if sub == b"info" and len(args) == 2:
        return encode_reply(Verbatim(s.describe(now) + "\n"), s.resp3)
    if sub == b"list":
        ids: set[int] | None = None
        if len(args) >= 4 and args[2].lower() == b"id":
            try:
                ids = {int(a) for a in args[3:]}
            except ValueError:
                raise CommandError("ERR Invalid client ID") from None
        elif len(args) == 4 and args[2].lower() == b"type":
            if args[3].lower() not in (b"normal", b"master", b"replica", b"pubsub"):
                raise CommandError(
                    f"ERR Unknown client type '{args[3].decode('utf-8', 'replace')}'"
                )
        elif len(args) != 2:
            raise syntax_error()
        lines = [
            c.describe(now) + "\n" for c in node.sessions.values() if ids is None or c.id in ids
        ]
        return encode_reply(Verbatim("".join(lines)), s.resp3)
    if sub == b"setinfo" and len(args) == 4:
        attr = args[2].lower()
        if attr not in (b"lib-name", b"lib-ver"):
            raise CommandError(f"ERR Unrecognized option '{args[2].decode('utf-8', 'replace')}'")
        if any(c < 33 or c > 126 for c in args[3]):
            raise CommandError(
                f"ERR {args[2].decode('utf-8', 'replace')} cannot contain spaces, newlines or special characters."
            )
        if attr == b"lib-name":
            s.lib_name = args[3]
        else:
            s.lib_ver = args[3]
        return b"+OK\r\n"
    if sub == b"kill" and len(args) == 4 and args[2].lower() == b"id":
        try:
            victim = node.sessions.get(int(args[3]))
        except ValueError:
            raise CommandError("ERR client-id should be greater than 0") from None
        if victim is None:
            raise CommandError("ERR No such client")
        victim.kill()
        return b":1\r\n"
    if sub == b"pause" and len(args) in (3, 4):
        try:
            ms = int(args[2])
        except ValueError:
            raise CommandError("ERR timeout is not an integer or out of range") from None
        if ms < 0:
            raise CommandError("ERR timeout is negative")
        if len(args) == 4 and args[3].lower() not in (b"write", b"all"):
            raise syntax_error()
        # Both modes hold writes only: reads on a pausing primary are harmless (docs/node.md).
        node.writes_paused_until = time.monotonic() + ms / 1000
        node.refresh_gates()
        log_event("writes_paused", ms=ms)
        return b"+OK\r\n"
    if sub == b"unpause" and len(args) == 2:
        node.writes_paused_until = 0.0
        node.refresh_gates()
        node.on_unpause()
        return b"+OK\r\n"
    if sub in (b"no-evict", b"no-touch") and len(args) == 3:
        return b"+OK\r\n"
    if sub == b"help":
        return encode_reply(
            ["CLIENT <subcommand> [<arg> ...]. Subcommands are:", "SETNAME", "GETNAME", "ID",
             "INFO", "LIST [TYPE normal|master|replica|pubsub] [ID id ...]", "SETINFO",
             "KILL ID id"], s.resp3)  # fmt: skip
    raise CommandError(
        f"ERR unknown subcommand or wrong number of arguments for '{args[1].decode('utf-8', 'replace')}'. Try CLIENT HELP."
    )


def _quit(node: Node, s: Session, args: list[bytes]) -> bytes:
    s.closing = True
    return b"+OK\r\n"


def _reset(node: Node, s: Session, args: list[bytes]) -> bytes:
    s.resp3 = False
    s.name = b""
    s.set_authenticated(not node.config.requirepass)
    return b"+RESET\r\n"


def _info(node: Node, s: Session, args: list[bytes]) -> bytes:
    sections = [a.decode("utf-8", "replace") for a in args[1:]]
    return encode_reply(Verbatim(render_info(node, sections)), s.resp3)


def _time(node: Node, s: Session, args: list[bytes]) -> bytes:
    now_us = time.time_ns() // 1000
    return encode_reply([b"%d" % (now_us // 1_000_000), b"%d" % (now_us % 1_000_000)], s.resp3)


# --- CONFIG -----------------------------------------------------------------------------------

# CONFIG names (Redis spelling) → NodeConfig fields that may be read and changed at run time.
_RUNTIME = {
    "maxmemory": "maxmemory",
    "maxmemory-policy": "maxmemory_policy",
    "requirepass": "requirepass",
    "maxclients": "maxclients",
    "proto-max-bulk-len": "proto_max_bulk_len",
    "client-query-buffer-limit": "client_query_buffer_limit",
    "hz": "hz",
    "save": "save",  # the save points (docs/node.md, "Persistence")
}
_READONLY = {
    "port": "port",
    "bind": "host",
    "dir": "dir",
    "dbfilename": "dbfilename",
    "appendonly": "",
}
# Redis 7 refuses CONFIG SET of these ("protected configs"): a writable dir is a known exploit.
_PROTECTED = {"dir", "dbfilename"}
# No AOF, only snapshots. redis-benchmark and other tools ask.
_FIXED = {"appendonly": b"no"}


def _config_value(node: Node, name: str) -> bytes:
    if name in _FIXED:
        return _FIXED[name]
    field = _RUNTIME.get(name) or _READONLY[name]
    value = getattr(node.config, field)
    if field == "maxmemory":
        value = node.keyspace.maxmemory
    if field == "save":
        value = format_save_points(node.config.save_points)  # Redis's canonical "S C S C"
    if field == "dir" and value:
        value = os.path.abspath(value)  # Redis reports the absolute path
    return str(value).encode()


def _config(node: Node, s: Session, args: list[bytes]) -> bytes:
    sub = args[1].lower()
    if sub == b"get" and len(args) >= 3:
        found: dict[bytes, bytes] = {}
        names = list(_RUNTIME) + list(_READONLY)
        for pattern in args[2:]:
            pat = pattern.decode("utf-8", "replace").lower()
            for name in names:
                if fnmatch.fnmatchcase(name, pat):
                    found[name.encode()] = _config_value(node, name)
        return encode_reply(found, s.resp3)
    if sub == b"set" and len(args) >= 4 and len(args) % 2 == 0:
        changes: dict[str, Any] = {}
        for raw_name, raw_value in zip(args[2::2], args[3::2]):
            name = raw_name.decode("utf-8", "replace").lower()
            field = _RUNTIME.get(name)
            if name in _PROTECTED:
                raise CommandError(
                    f"ERR CONFIG SET failed (possibly related to argument '{name}') - "
                    "can't set protected config"
                )
            if field is None:
                raise CommandError(
                    f"ERR Unknown option or number of arguments for CONFIG SET - '{name}'"
                )
            if name in changes:
                raise CommandError(f"ERR Duplicate parameter - '{name}'")
            try:
                changes[field] = coerce(field, raw_value.decode("utf-8", "replace"))
            except ConfigError as exc:
                raise CommandError(
                    f"ERR CONFIG SET failed (possibly related to argument '{name}') - {exc}"
                ) from None
        try:
            new = attrs.evolve(node.config, **changes)
        except ConfigError as exc:
            raise CommandError(f"ERR CONFIG SET failed - {exc}") from None
        apply_config(node, new)
        return b"+OK\r\n"
    if sub == b"resetstat" and len(args) == 2:
        for counters in node.stats.command_calls.values():
            counters.calls = counters.failed = 0
            counters.usec = 0.0
        node.stats.error_prefixes.clear()
        node.keyspace.stats.keyspace_hits = node.keyspace.stats.keyspace_misses = 0
        return b"+OK\r\n"
    if sub == b"rewrite" and len(args) == 2:
        raise CommandError("ERR The server is running without a config file")
    raise CommandError(
        f"ERR unknown subcommand or wrong number of arguments for '{args[1].decode('utf-8', 'replace')}'. Try CONFIG HELP."
    )


def apply_config(node: Node, new: NodeConfig) -> None:
    node.config = new
    node.persistence.config = new
    node.keyspace.maxmemory = new.maxmemory
    node.keyspace.policy = EvictionPolicy(new.maxmemory_policy)
    node.executor.proto_max_bulk_len = new.proto_max_bulk_len
    node.refresh_gates()
    limits = new.limits
    for session in node.sessions.values():
        session.parser.limits = limits


# --- COMMAND ----------------------------------------------------------------------------------


def _flags(spec: CommandSpec) -> list[SimpleString]:
    return [SimpleString(f) for f in sorted(spec.flags)]


def command_info(spec: CommandSpec) -> list[object]:
    """Redis 7's COMMAND INFO entry: name, arity, flags, first, last, step, categories, tips,
    key specs, subcommands."""
    categories = [
        SimpleString("@write" if spec.is_write else "@read"),
        SimpleString(f"@{spec.group}"),
    ]
    return [spec.name.encode(), spec.arity, _flags(spec), spec.first_key, spec.last_key,
            spec.step, categories, [], [], []]  # fmt: skip


def command_docs(spec: CommandSpec) -> dict[bytes, object]:
    return {b"summary": spec.summary.encode(), b"since": b"1.0.0", b"group": spec.group.encode(),
            b"complexity": b"O(1)", b"arguments": []}  # fmt: skip


def _command(node: Node, s: Session, args: list[bytes]) -> bytes:
    return encode_reply(command_reply(args, COMMANDS), s.resp3)


def command_reply(args: list[bytes], table: dict[str, CommandSpec]) -> object:
    """COMMAND [COUNT | INFO names | DOCS names | LIST | GETKEYS ...], shared with the proxy."""
    if len(args) == 1:
        return [command_info(spec) for spec in table.values()]
    sub = args[1].lower()
    names = [a.decode("utf-8", "replace").lower() for a in args[2:]]
    if sub == b"count" and len(args) == 2:
        return len(table)
    if sub == b"info":
        specs = [table.get(n) for n in names] if names else list(table.values())
        return [command_info(spec) if spec else None for spec in specs]
    if sub == b"docs":
        chosen = [table[n] for n in names if n in table] if names else list(table.values())
        return {spec.name.encode(): command_docs(spec) for spec in chosen}
    if sub == b"list" and len(args) == 2:
        return [name.encode() for name in table]
    if sub == b"getkeys" and len(args) >= 3:
        spec = table.get(names[0])
        if spec is None:
            raise CommandError("ERR Invalid command specified")
        if not spec.arity_ok(len(args) - 2):
            raise CommandError("ERR Invalid number of arguments specified for command")
        keys = [args[2 + i] for i in spec.key_indexes(len(args) - 2)]
        if not keys:
            raise CommandError("ERR The command has no key arguments")
        return keys
    raise CommandError(
        f"ERR unknown subcommand or wrong number of arguments for '{args[1].decode('utf-8', 'replace')}'. Try COMMAND HELP."
    )


# --- replication and fencing -------------------------------------------------------------


def _replicaof(node: Node, s: Session, args: list[bytes]) -> bytes:
    host, port = args[1].decode("utf-8", "replace"), args[2].decode("utf-8", "replace")
    if host.lower() == "no" and port.lower() == "one":
        if node.roles.role is not Role.PRIMARY:
            node.set_roles(roles.manual(node.roles, Role.PRIMARY))
            log_event("role_change", role="primary", by="REPLICAOF NO ONE")
        return b"+OK\r\n"
    try:
        address = "{}:{}".format(*parse_address(f"{host}:{port}", name="REPLICAOF"))
    except ConfigError:
        raise CommandError("ERR Invalid master port") from None
    if node.roles.role is Role.REPLICA and node.roles.primary == address:
        return encode_reply(SimpleString("OK Already connected to specified master"), s.resp3)
    node.set_roles(roles.manual(node.roles, Role.REPLICA, address))
    log_event("role_change", role="replica", primary=address, by="REPLICAOF")
    return b"+OK\r\n"


def _role(node: Node, s: Session, args: list[bytes]) -> bytes:
    state = node.roles
    repl = node.repl
    if state.role is Role.REPLICA:
        assert state.primary is not None
        host, port = parse_address(state.primary)
        link = "connected" if repl.link_up else ("sync" if repl.sync_in_progress else "connecting")
        return encode_reply([b"slave", host.encode(), port, link.encode(), repl.offset], s.resp3)
    replicas = [
        [
            r.addr.rpartition(":")[0].encode(),
            r.addr.rpartition(":")[2].encode(),
            str(r.ack_offset).encode(),
        ]
        for r in repl.replicas.replicas.values()
    ]
    kind = b"master" if state.role is Role.PRIMARY else b"none"
    return encode_reply([kind, repl.offset, replicas], s.resp3)


def _wait(node: Node, s: Session, args: list[bytes]) -> bytes | Deferred:
    try:
        numreplicas = int(args[1])
        timeout = int(args[2])
    except ValueError:
        raise not_integer() from None
    if timeout < 0:
        raise CommandError("ERR timeout is negative")
    if node.roles.role is Role.REPLICA:
        raise CommandError("ERR WAIT cannot be used with replica instances.")
    return WaitForAcks(numreplicas, timeout, node.repl.offset)


def _sg_sync(node: Node, s: Session, args: list[bytes]) -> bytes | Deferred:
    """SG.SYNC replid offset announce-address: this connection becomes a replica link."""
    if node.roles.role is not Role.PRIMARY:
        raise CommandError("ERR not a primary: cannot serve replicas")
    try:
        offset = int(args[2])
        announce = "{}:{}".format(
            *parse_address(args[3].decode("utf-8", "replace"), name="announce")
        )
    except (ValueError, ConfigError):
        raise syntax_error() from None
    return ServeReplica(args[1].decode("ascii", "replace"), offset, announce)


def _parse_epoch(raw: bytes) -> int:
    try:
        epoch = int(raw)
    except ValueError:
        raise CommandError("ERR epoch is not an integer") from None
    if not 0 <= epoch < 2**63:
        raise CommandError("ERR epoch out of range")
    return epoch


def _sg_role(node: Node, s: Session, args: list[bytes]) -> bytes:
    """SG.ROLE primary EPOCH | SG.ROLE replica EPOCH host:port (from a sentinel)."""
    kind = args[1].lower()
    epoch = _parse_epoch(args[2])
    primary: str | None = None
    if kind == b"primary" and len(args) == 3:
        role = Role.PRIMARY
    elif kind == b"replica" and len(args) == 4:
        role = Role.REPLICA
        try:
            primary = "{}:{}".format(
                *parse_address(args[3].decode("utf-8", "replace"), name="primary")
            )
        except ConfigError as exc:
            raise CommandError(f"ERR {exc}") from None
    else:
        raise syntax_error()
    try:
        new = roles.assign(node.roles, role, epoch, primary)
    except roles.StaleEpoch as exc:
        raise CommandError(exc.message) from None
    changed = (new.role, new.primary) != (node.roles.role, node.roles.primary)
    node.set_roles(new)
    if changed:
        log_event("role_change", role=role.value, epoch=epoch, primary=primary or "", by="SG.ROLE")
    return b"+OK\r\n"


def _sg_fence(node: Node, s: Session, args: list[bytes]) -> bytes:
    """SG.FENCE EPOCH [primary|replica] (from a proxy, once per backend connection)."""
    epoch = _parse_epoch(args[1])
    claimed: Role | None = None
    if len(args) == 3:
        try:
            claimed = Role(args[2].decode("ascii", "replace").lower())
        except ValueError:
            raise syntax_error() from None
    elif len(args) > 3:
        raise syntax_error()
    try:
        new = roles.fence(node.roles, epoch, claimed)
    except roles.StaleEpoch as exc:
        raise CommandError(exc.message) from None
    if new.fenced and not node.roles.fenced:
        log_event("fenced", level="warn", epoch=epoch, role_epoch=new.role_epoch)
    node.set_roles(new)
    return b"+OK\r\n"


HANDLERS: dict[str, Handler] = {
    "replicaof": _replicaof,
    "slaveof": _replicaof,
    "role": _role,
    "wait": _wait,
    "sg.sync": _sg_sync,
    "sg.role": _sg_role,
    "sg.fence": _sg_fence,
    "ping": _ping,
    "echo": _echo,
    "auth": _auth,
    "hello": _hello,
    "select": _select,
    "client": _client,
    "quit": _quit,
    "reset": _reset,
    "info": _info,
    "config": _config,
    "command": _command,
    "time": _time,
    **persistence_commands.HANDLERS,
}

__all__ = ["HANDLERS", "OK", "__version__", "apply_config", "command_reply"]
