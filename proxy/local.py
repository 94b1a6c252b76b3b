"""Commands the proxy answers itself: connection state, INFO, COMMAND, CLUSTER KEYSLOT, CONFIG.

Sans-I/O: the caller passes the session, the wall-clock time and a snapshot of what INFO and CONFIG
GET show; the result is the reply bytes plus an action the shell must carry out (close the
connection after the reply, reload the config).
"""

from __future__ import annotations

import enum
import fnmatch
import hmac
from collections.abc import Callable, Mapping

import attrs

from proxy.router import keyslot_reply, lookup
from shardgate.commands import COMMANDS, PROXY_ONLY, CommandSpec
from shardgate.errors import CommandError, syntax_error, wrong_arity
from shardgate.resp import OK_BYTES, SimpleString, Verbatim, encode_reply

VERSION = "7.0.0"  # the Redis version we answer as (HELLO, INFO): what clients feature-check
NOAUTH = b"-NOAUTH Authentication required.\r\n"
WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"


class Action(enum.Enum):
    NONE = "none"
    CLOSE = "close"  # QUIT: close after this reply is written
    RELOAD = "reload"  # CONFIG RELOAD: the shell reloads and replies


class Session:
    """Per-connection state that local commands read and change."""

    __slots__ = ("authenticated", "id", "name", "resp3")

    def __init__(self, client_id: int, *, authenticated: bool) -> None:
        self.id = client_id
        self.name = b""
        self.resp3 = False
        self.authenticated = authenticated


@attrs.frozen
class LocalContext:
    """What the proxy knows about itself, gathered by the shell when a local command runs."""

    requirepass: str | None
    now: float  # wall clock, for TIME
    info: Callable[[], Mapping[str, Mapping[str, object]]]  # section → field → value
    config: Mapping[str, str]  # CONFIG GET's parameters


def _check_password(ctx: LocalContext, password: bytes) -> bool:
    if ctx.requirepass is None:
        return False
    return hmac.compare_digest(password, ctx.requirepass.encode())


def execute(
    args: list[bytes], spec: CommandSpec, s: Session, ctx: LocalContext
) -> tuple[bytes, Action]:
    try:
        return _dispatch(args, spec, s, ctx)
    except CommandError as exc:
        return exc.reply, Action.NONE


def _dispatch(
    args: list[bytes], spec: CommandSpec, s: Session, ctx: LocalContext
) -> tuple[bytes, Action]:
    name = spec.name
    r3 = s.resp3
    none = Action.NONE
    if name == "ping":
        if len(args) > 2:
            raise wrong_arity("ping")
        return (encode_reply(args[1], r3) if len(args) == 2 else b"+PONG\r\n"), none
    if name == "echo":
        return encode_reply(args[1], r3), none
    if name == "quit":
        return OK_BYTES, Action.CLOSE
    if name == "auth":
        return _auth(args, s, ctx), none
    if name == "hello":
        return _hello(args, s, ctx), none
    if name == "reset":
        s.resp3 = False
        s.name = b""
        s.authenticated = ctx.requirepass is None
        return b"+RESET\r\n", none
    if name == "time":
        sec = int(ctx.now)
        return encode_reply([b"%d" % sec, b"%d" % int((ctx.now - sec) * 1e6)], r3), none
    if name == "select":
        if args[1] != b"0":
            try:
                int(args[1])
            except ValueError:
                raise CommandError("ERR value is not an integer or out of range") from None
            raise CommandError("ERR DB index is out of range")
        return OK_BYTES, none
    if name == "client":
        return _client(args, s), none
    if name == "command":
        return _command(args, r3), none
    if name == "info":
        return _info(args, r3, ctx), none
    if name == "cluster":
        sub = args[1].lower()
        if sub == b"keyslot" and len(args) == 3:
            return keyslot_reply(args[2]), none
        if sub == b"keyslot":
            raise wrong_arity("cluster|keyslot")
        raise CommandError("ERR the shardgate proxy supports only CLUSTER KEYSLOT")
    if name == "config":
        return _config(args, r3, ctx)
    raise CommandError(f"ERR command '{name}' is not supported by the shardgate proxy")


def _auth(args: list[bytes], s: Session, ctx: LocalContext) -> bytes:
    if len(args) > 3:
        raise syntax_error()
    if ctx.requirepass is None:
        raise CommandError(
            "ERR AUTH <password> called without any password configured for the default user. "
            "Are you sure your configuration is correct?"
        )
    if len(args) == 3 and args[1] != b"default":
        return WRONGPASS
    if not _check_password(ctx, args[-1]):
        return WRONGPASS
    s.authenticated = True
    return OK_BYTES


def _hello(args: list[bytes], s: Session, ctx: LocalContext) -> bytes:
    proto = 2 if not s.resp3 else 3
    i = 1
    if len(args) > 1:
        try:
            proto = int(args[1])
        except ValueError:
            raise CommandError("ERR Protocol version is not an integer or out of range") from None
        if proto not in (2, 3):
            return b"-NOPROTO unsupported protocol version\r\n"
        i = 2
    name = None
    while i < len(args):
        opt = args[i].lower()
        if opt == b"auth" and i + 2 < len(args):
            if ctx.requirepass is None or not _check_password(ctx, args[i + 2]):
                return WRONGPASS
            if args[i + 1] != b"default":
                return WRONGPASS
            s.authenticated = True
            i += 3
        elif opt == b"setname" and i + 1 < len(args):
            name = args[i + 1]
            i += 2
        else:
            raise CommandError(
                f"ERR Syntax error in HELLO option '{args[i].decode('utf-8', 'replace')}'"
            )
    if not s.authenticated:
        return b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n"
    if name is not None:
        _check_name(name)
        s.name = name
    s.resp3 = proto == 3
    return encode_reply(
        {
            "server": "redis",
            "version": VERSION,
            "proto": proto,
            "id": s.id,
            "mode": "standalone",
            "role": "master",
            "modules": [],
        },
        s.resp3,
    )


def _check_name(name: bytes) -> None:
    if any(c <= 32 or c >= 127 for c in name):
        raise CommandError(
            "ERR Client names cannot contain spaces, newlines or special characters."
        )


def _client(args: list[bytes], s: Session) -> bytes:
    sub = args[1].lower()
    if sub == b"setname" and len(args) == 3:
        _check_name(args[2])
        s.name = args[2]
        return OK_BYTES
    if sub == b"getname" and len(args) == 2:
        return encode_reply(s.name or None, s.resp3)
    if sub == b"id" and len(args) == 2:
        return b":%d\r\n" % s.id
    if sub == b"setinfo" and len(args) == 4:
        return OK_BYTES  # redis-py sends LIB-NAME / LIB-VER on connect
    if sub in (b"setname", b"getname", b"id", b"setinfo"):
        raise wrong_arity(f"client|{sub.decode()}")
    raise CommandError(
        "ERR the shardgate proxy supports only CLIENT SETNAME, GETNAME, ID and SETINFO"
    )


def _command_info(spec: CommandSpec) -> list[object]:
    flags = [SimpleString(f) for f in sorted(spec.flags)]
    return [spec.name.encode(), spec.arity, flags, spec.first_key, spec.last_key, spec.step]


def _command(args: list[bytes], r3: bool) -> bytes:
    specs = {**COMMANDS, **PROXY_ONLY}
    if len(args) == 1:
        return encode_reply([_command_info(s) for s in specs.values()], r3)
    sub = args[1].lower()
    if sub == b"count":
        return b":%d\r\n" % len(specs)
    if sub == b"info":
        out: list[object] = []
        for name in args[2:] or [n.encode() for n in specs]:
            spec = lookup(name)
            out.append(_command_info(spec) if spec else None)
        return encode_reply(out, r3)
    if sub == b"docs":
        docs: dict[bytes, object] = {}
        for name in args[2:] or [n.encode() for n in specs]:
            spec = lookup(name)
            if spec is not None:
                docs[spec.name.encode()] = {
                    b"summary": spec.summary.encode(),
                    b"group": spec.group.encode(),
                }
        return encode_reply(docs, r3)
    if sub == b"list":
        return encode_reply([n.encode() for n in specs], r3)
    raise CommandError("ERR the shardgate proxy supports COMMAND, COMMAND COUNT|INFO|DOCS|LIST")


def _info(args: list[bytes], r3: bool, ctx: LocalContext) -> bytes:
    sections = ctx.info()
    wanted = {a.decode("utf-8", "replace").lower() for a in args[1:]}
    if not wanted or wanted & {"all", "everything", "default"}:
        wanted = {k.lower() for k in sections}
    lines: list[str] = []
    for title, fields in sections.items():
        if title.lower() not in wanted:
            continue
        if lines:
            lines.append("")
        lines.append(f"# {title}")
        lines.extend(f"{k}:{v}" for k, v in fields.items())
    return encode_reply(Verbatim("\r\n".join(lines) + "\r\n"), r3)


def _config(args: list[bytes], r3: bool, ctx: LocalContext) -> tuple[bytes, Action]:
    sub = args[1].lower()
    if sub == b"reload" and len(args) == 2:
        return b"", Action.RELOAD
    if sub == b"get" and len(args) >= 3:
        found: dict[bytes, bytes] = {}
        for pattern in args[2:]:
            pat = pattern.decode("utf-8", "replace").lower()
            for key, value in ctx.config.items():
                if fnmatch.fnmatchcase(key, pat):
                    found[key.encode()] = value.encode()
        return encode_reply(found, r3), Action.NONE
    if sub in (b"reload", b"get"):
        raise wrong_arity(f"config|{sub.decode('utf-8', 'replace')}")
    raise CommandError("ERR the shardgate proxy supports only CONFIG GET and CONFIG RELOAD")
