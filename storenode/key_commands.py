"""Generic key commands (DEL, EXPIRE family, TTL family, TYPE, SCAN, KEYS...) as in Redis 7.0."""

from __future__ import annotations

from shardgate.errors import CommandError, syntax_error
from shardgate.resp import SimpleString
from storenode.args import (
    LLONG_MAX,
    LLONG_MIN,
    cstr,
    eq,
    expire_time_error,
    int_arg,
    parse_cursor,
)
from storenode.glob import matcher
from storenode.keyspace import Keyspace

_STRING = SimpleString("string")
_NONE = SimpleString("none")

_NX, _XX, _GT, _LT = 1, 2, 4, 8
_EXPIRE_OPTIONS = {b"nx": _NX, b"xx": _XX, b"gt": _GT, b"lt": _LT}


def _expire_flags(args: list[bytes]) -> int:
    flags = 0
    for opt in args[3:]:
        bit = _EXPIRE_OPTIONS.get(cstr(opt).lower())
        if bit is None:
            text = cstr(opt).decode("utf-8", "replace")
            raise CommandError(f"ERR Unsupported option {text}")
        flags |= bit
    if flags & _NX and flags & (_XX | _GT | _LT):
        raise CommandError("ERR NX and XX, GT or LT options at the same time are not compatible")
    if flags & _GT and flags & _LT:
        raise CommandError("ERR GT and LT options at the same time are not compatible")
    return flags


class KeyCommands:
    ks: Keyspace

    def cmd_del(self, args: list[bytes], now_ms: int) -> object:
        delete = self.ks.delete
        return sum(delete(key, now_ms) for key in args[1:])

    cmd_unlink = cmd_del  # values are freed by refcounting at once; nothing to defer

    def cmd_exists(self, args: list[bytes], now_ms: int) -> object:
        peek = self.ks.peek
        return sum(peek(key, now_ms) is not None for key in args[1:])

    def cmd_touch(self, args: list[bytes], now_ms: int) -> object:
        lookup = self.ks.lookup
        return sum(lookup(key, now_ms) is not None for key in args[1:])

    def cmd_type(self, args: list[bytes], now_ms: int) -> object:
        return _NONE if self.ks.peek(args[1], now_ms) is None else _STRING

    # --- expiry ------------------------------------------------------------------------

    def _expire(self, args: list[bytes], now_ms: int, base_ms: int, seconds: bool) -> int:
        """expireGenericCommand: options, then the number, then the key."""
        name = args[0].decode("ascii", "replace").lower()
        flags = _expire_flags(args)
        when = int_arg(args[2])
        if seconds:
            if when > LLONG_MAX // 1000 or when < -(-LLONG_MIN // 1000):
                raise expire_time_error(name)
            when *= 1000
        if when > LLONG_MAX - base_ms:
            raise expire_time_error(name)
        when += base_ms
        ks = self.ks
        key = args[1]
        e = ks.lookup_write(key, now_ms)
        if e is None:
            return 0
        if flags:
            current = e.expire_at or -1
            if flags & _NX and current != -1:
                return 0
            if flags & _XX and current == -1:
                return 0
            if flags & _GT and (when <= current or current == -1):
                return 0
            if flags & _LT and current != -1 and when >= current:
                return 0
        if when <= now_ms:
            ks.delete(key, now_ms)  # a time already past deletes the key (checkAlreadyExpired)
        else:
            ks.set_expire(key, e, when)
        return 1

    def cmd_expire(self, args: list[bytes], now_ms: int) -> object:
        return self._expire(args, now_ms, now_ms, True)

    def cmd_pexpire(self, args: list[bytes], now_ms: int) -> object:
        return self._expire(args, now_ms, now_ms, False)

    def cmd_expireat(self, args: list[bytes], now_ms: int) -> object:
        return self._expire(args, now_ms, 0, True)

    def cmd_pexpireat(self, args: list[bytes], now_ms: int) -> object:
        return self._expire(args, now_ms, 0, False)

    def _ttl(self, key: bytes, now_ms: int, *, ms: bool, absolute: bool) -> int:
        e = self.ks.peek(key, now_ms)
        if e is None:
            return -2
        if not e.expire_at:
            return -1
        ttl = e.expire_at if absolute else max(e.expire_at - now_ms, 0)
        return ttl if ms else (ttl + 500) // 1000

    def cmd_ttl(self, args: list[bytes], now_ms: int) -> object:
        return self._ttl(args[1], now_ms, ms=False, absolute=False)

    def cmd_pttl(self, args: list[bytes], now_ms: int) -> object:
        return self._ttl(args[1], now_ms, ms=True, absolute=False)

    def cmd_expiretime(self, args: list[bytes], now_ms: int) -> object:
        return self._ttl(args[1], now_ms, ms=False, absolute=True)

    def cmd_pexpiretime(self, args: list[bytes], now_ms: int) -> object:
        return self._ttl(args[1], now_ms, ms=True, absolute=True)

    def cmd_persist(self, args: list[bytes], now_ms: int) -> object:
        ks = self.ks
        e = ks.lookup_write(args[1], now_ms)
        if e is None or not e.expire_at:
            return 0
        ks.persist(args[1], e)
        return 1

    # --- iteration ---------------------------------------------------------------------

    def cmd_scan(self, args: list[bytes], now_ms: int) -> object:
        cursor = parse_cursor(args[1])
        count = 10  # Redis default
        pattern: bytes | None = None
        type_name: bytes | None = None
        i = 2
        argc = len(args)
        while i < argc:
            has_value = argc - i >= 2
            if eq(args[i], b"count") and has_value:
                count = int_arg(args[i + 1])
                if count < 1:
                    raise syntax_error()
            elif eq(args[i], b"match") and has_value:
                pattern = None if args[i + 1] == b"*" else args[i + 1]
            elif eq(args[i], b"type") and has_value:
                type_name = args[i + 1]
            else:
                raise syntax_error()
            i += 2
        next_cursor, keys = self.ks.scan(cursor, count, now_ms)
        if pattern is not None:
            match = matcher(pattern)
            keys = [k for k in keys if match(k)]
        if type_name is not None and cstr(type_name).lower() != b"string":
            keys = []  # every key is a string; Redis 7.0 filters unknown type names silently
        return [b"%d" % next_cursor, keys]

    def cmd_keys(self, args: list[bytes], now_ms: int) -> object:
        keys = self.ks.iter_keys(now_ms)
        if args[1] == b"*":
            return list(keys)
        match = matcher(args[1])
        return [k for k in keys if match(k)]

    def cmd_randomkey(self, args: list[bytes], now_ms: int) -> object:
        return self.ks.random_key(now_ms)
