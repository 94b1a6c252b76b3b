"""String commands (GET, SET and friends) with Redis 7.0's options, replies and error texts.

Every handler takes the raw argument list (``args[0]`` is the command name) and ``now_ms``, and
returns a reply value for ``shardgate.resp.encode_reply`` or raises ``CommandError``. The
arity was checked by the caller. The option parsing follows t_string.c's
``parseExtendedStringArgumentsOrReply`` and ``getExpireMillisecondsOrReply`` rule for rule,
since the order of checks decides which error a client sees.
"""

from __future__ import annotations

from shardgate.errors import CommandError, not_integer, syntax_error, wrong_arity
from shardgate.resp import OK
from storenode.args import LLONG_MAX, LLONG_MIN, cstr, expire_time_error, int_arg, parse_ll
from storenode.keyspace import Entry, Keyspace, value_cost
from storenode.longdouble import Infinite, format_ld, parse_ld, round_ld

# Option bits, as in t_string.c.
_NX, _XX, _GET, _KEEPTTL, _PERSIST = 1, 2, 4, 8, 16
_EX, _PX, _EXAT, _PXAT = 32, 64, 128, 256
_ANY_EXPIRE = _EX | _PX | _EXAT | _PXAT
_RELATIVE = _EX | _PX
_SECONDS = _EX | _EXAT
_EXPIRE_FLAGS = {b"ex": _EX, b"px": _PX, b"exat": _EXAT, b"pxat": _PXAT}

_OVERFLOW = "ERR increment or decrement would overflow"
_NOT_FLOAT = "ERR value is not a valid float"


def _parse_options(args: list[bytes], *, for_set: bool) -> tuple[int, bytes | None]:
    """SET's (from index 3) or GETEX's (from index 2) options: flag bits and the expire arg."""
    flags = 0
    expire: bytes | None = None
    j = 3 if for_set else 2
    argc = len(args)
    while j < argc:
        opt = cstr(args[j]).lower()
        has_next = j + 1 < argc
        if opt == b"nx" and for_set and not flags & _XX:
            flags |= _NX
        elif opt == b"xx" and for_set and not flags & _NX:
            flags |= _XX
        elif opt == b"get" and for_set:
            flags |= _GET
        elif opt == b"keepttl" and for_set and not flags & (_PERSIST | _ANY_EXPIRE):
            flags |= _KEEPTTL
        elif opt == b"persist" and not for_set and not flags & (_ANY_EXPIRE | _KEEPTTL):
            flags |= _PERSIST
        elif (
            opt in _EXPIRE_FLAGS
            and has_next
            and not flags & (_KEEPTTL | _PERSIST | (_ANY_EXPIRE & ~_EXPIRE_FLAGS[opt]))
        ):
            flags |= _EXPIRE_FLAGS[opt]  # repeating the same one is allowed: the last wins
            j += 1
            expire = args[j]
        else:
            raise syntax_error()
        j += 1
    return flags, expire


def _expire_ms(arg: bytes, flags: int, now_ms: int, command: str) -> int:
    """Absolute expiry in ms for an EX/PX/EXAT/PXAT argument (getExpireMillisecondsOrReply)."""
    ms = int_arg(arg)
    seconds = flags & _SECONDS
    if ms <= 0 or (seconds and ms > LLONG_MAX // 1000):
        raise expire_time_error(command)
    if seconds:
        ms *= 1000
    if flags & _RELATIVE:
        ms += now_ms
        if ms > LLONG_MAX:  # signed overflow in C wraps negative, which Redis then rejects
            raise expire_time_error(command)
    return ms


class StringCommands:
    ks: Keyspace
    proto_max_bulk_len: int

    def _string(self, key: bytes, now_ms: int) -> bytes | None:
        e = self.ks.lookup(key, now_ms)
        if e is None:
            return None
        v = e.value
        return v if v.__class__ is bytes else self._freeze(e)

    def _freeze(self, e: Entry) -> bytes:
        """Turn a value grown by APPEND/SETRANGE back into bytes when it is read: one copy now
        instead of one per read, and bytes are smaller (no growth headroom)."""
        frozen = bytes(e.value)
        self.ks.replace_value(e, frozen)
        return frozen

    def _check_length(self, size: int) -> None:
        if size > self.proto_max_bulk_len:
            raise CommandError("ERR string exceeds maximum allowed size (proto-max-bulk-len)")

    def cmd_get(self, args: list[bytes], now_ms: int) -> object:
        e = self.ks.lookup(args[1], now_ms)
        if e is None:
            return None
        v = e.value
        return v if v.__class__ is bytes else self._freeze(e)

    def cmd_set(self, args: list[bytes], now_ms: int) -> object:
        if len(args) == 3:  # the hot path: no options
            self.ks.set(args[1], args[2], now_ms)
            return OK
        flags, expire = _parse_options(args, for_set=True)
        return self._set_generic(args[1], args[2], flags, expire, now_ms, "set", OK, None)

    def _set_generic(
        self,
        key: bytes,
        value: bytes,
        flags: int,
        expire: bytes | None,
        now_ms: int,
        command: str,
        ok_reply: object,
        abort_reply: object,
    ) -> object:
        expire_at = 0
        if expire is not None:
            expire_at = _expire_ms(expire, flags, now_ms, command)
        old = None
        if flags & _GET:
            old = self._string(key, now_ms)
        ks = self.ks
        found = ks.lookup_write(key, now_ms) is not None
        if (flags & _NX and found) or (flags & _XX and not found):
            return old if flags & _GET else abort_reply
        if flags & _KEEPTTL:
            ks.set_keep_ttl(key, value, now_ms)
        else:
            ks.set(key, value, now_ms, expire_at)
        return old if flags & _GET else ok_reply

    def cmd_setnx(self, args: list[bytes], now_ms: int) -> object:
        return self._set_generic(args[1], args[2], _NX, None, now_ms, "setnx", 1, 0)

    def cmd_setex(self, args: list[bytes], now_ms: int) -> object:
        return self._set_generic(args[1], args[3], _EX, args[2], now_ms, "setex", OK, None)

    def cmd_psetex(self, args: list[bytes], now_ms: int) -> object:
        return self._set_generic(args[1], args[3], _PX, args[2], now_ms, "psetex", OK, None)

    def cmd_getset(self, args: list[bytes], now_ms: int) -> object:
        old = self._string(args[1], now_ms)
        self.ks.set(args[1], args[2], now_ms)
        return old

    def cmd_getdel(self, args: list[bytes], now_ms: int) -> object:
        old = self._string(args[1], now_ms)
        if old is not None:
            self.ks.delete(args[1], now_ms)
        return old

    def cmd_getex(self, args: list[bytes], now_ms: int) -> object:
        flags, expire = _parse_options(args, for_set=False)
        key = args[1]
        ks = self.ks
        e = ks.lookup(key, now_ms)
        if e is None:
            return None
        expire_at = 0
        if expire is not None:
            expire_at = _expire_ms(expire, flags, now_ms, "getex")
        v = e.value
        reply = v if v.__class__ is bytes else bytes(v)
        if flags & (_EXAT | _PXAT) and expire_at <= now_ms:
            ks.delete(key, now_ms)  # an absolute time already past deletes the key
        elif expire is not None:
            ks.set_expire(key, e, expire_at)
        elif flags & _PERSIST:
            ks.persist(key, e)
        return reply

    def cmd_mget(self, args: list[bytes], now_ms: int) -> object:
        string = self._string
        return [string(key, now_ms) for key in args[1:]]

    def cmd_mset(self, args: list[bytes], now_ms: int) -> object:
        if len(args) % 2 == 0:
            raise wrong_arity("mset")
        ks = self.ks
        for j in range(1, len(args), 2):
            ks.set(args[j], args[j + 1], now_ms)
        return OK

    def cmd_msetnx(self, args: list[bytes], now_ms: int) -> object:
        if len(args) % 2 == 0:
            raise wrong_arity("msetnx")
        ks = self.ks
        for j in range(1, len(args), 2):
            if ks.lookup_write(args[j], now_ms) is not None:
                return 0
        for j in range(1, len(args), 2):
            ks.set(args[j], args[j + 1], now_ms)
        return 1

    # --- counters ----------------------------------------------------------------------

    def _incr_by(self, key: bytes, incr: int, now_ms: int) -> int:
        ks = self.ks
        e = ks.lookup_write(key, now_ms)
        if e is None:
            value = 0
        else:
            parsed = parse_ll(e.value)
            if parsed is None:
                raise not_integer()
            value = parsed
        if (incr < 0 and value < 0 and incr < LLONG_MIN - value) or (
            incr > 0 and value > 0 and incr > LLONG_MAX - value
        ):
            raise CommandError(_OVERFLOW)
        value += incr
        if e is None:
            ks.set(key, b"%d" % value, now_ms)
        else:
            ks.replace_value(e, b"%d" % value)  # INCR keeps the TTL
        return value

    def cmd_incr(self, args: list[bytes], now_ms: int) -> object:
        return self._incr_by(args[1], 1, now_ms)

    def cmd_decr(self, args: list[bytes], now_ms: int) -> object:
        return self._incr_by(args[1], -1, now_ms)

    def cmd_incrby(self, args: list[bytes], now_ms: int) -> object:
        return self._incr_by(args[1], int_arg(args[2]), now_ms)

    def cmd_decrby(self, args: list[bytes], now_ms: int) -> object:
        incr = int_arg(args[2])
        if incr == LLONG_MIN:  # negating it would overflow
            raise CommandError("ERR decrement would overflow")
        return self._incr_by(args[1], -incr, now_ms)

    def cmd_incrbyfloat(self, args: list[bytes], now_ms: int) -> object:
        ks = self.ks
        key = args[1]
        e = ks.lookup_write(key, now_ms)
        infinite = False
        try:
            current = parse_ld(e.value) if e is not None else parse_ld(b"0")
        except Infinite:
            current, infinite = parse_ld(b"0"), True
        if current is None:
            raise CommandError(_NOT_FLOAT)
        try:
            incr = parse_ld(args[2])
        except Infinite:
            incr, infinite = parse_ld(b"0"), True
        if incr is None:
            raise CommandError(_NOT_FLOAT)
        try:
            if infinite:
                raise Infinite
            text = format_ld(round_ld(current + incr))
        except Infinite:
            raise CommandError("ERR increment would produce NaN or Infinity") from None
        if e is None:
            ks.set(key, text, now_ms)
        else:
            ks.replace_value(e, text)
        return text

    # --- byte ranges -------------------------------------------------------------------

    def cmd_append(self, args: list[bytes], now_ms: int) -> object:
        ks = self.ks
        key, tail = args[1], args[2]
        e = ks.lookup_write(key, now_ms)
        if e is None:
            ks.set(key, tail, now_ms)
            return len(tail)
        value = e.value
        self._check_length(len(value) + len(tail))
        # A bytearray grows in place (amortised O(len(tail))), as an sds string does in Redis;
        # bytes would copy the whole value on every APPEND.
        if isinstance(value, bytearray):
            before = value_cost(value)
            value += tail
            ks.replace_value(e, value, before)
        else:
            ks.replace_value(e, bytearray(value) + tail)
        return len(e.value)

    def cmd_strlen(self, args: list[bytes], now_ms: int) -> object:
        e = self.ks.lookup(args[1], now_ms)
        return 0 if e is None else len(e.value)

    def cmd_getrange(self, args: list[bytes], now_ms: int) -> object:
        start = int_arg(args[2])
        end = int_arg(args[3])
        e = self.ks.lookup(args[1], now_ms)
        if e is None:
            return b""
        value = e.value
        n = len(value)
        if start < 0 and end < 0 and start > end:
            return b""
        if start < 0:
            start += n
        if end < 0:
            end += n
        start = max(start, 0)
        end = max(end, 0)
        end = min(end, n - 1)
        if start > end or n == 0:
            return b""
        return bytes(value[start : end + 1])

    def cmd_setrange(self, args: list[bytes], now_ms: int) -> object:
        offset = int_arg(args[2])
        patch = args[3]
        if offset < 0:
            raise CommandError("ERR offset is out of range")
        ks = self.ks
        key = args[1]
        e = ks.lookup_write(key, now_ms)
        if e is None:
            if not patch:
                return 0
            self._check_length(offset + len(patch))
            value = bytearray(offset) + patch
            ks.set(key, bytes(value), now_ms)
            return len(value)
        if not patch:
            return len(e.value)
        self._check_length(offset + len(patch))
        before = value_cost(e.value)
        buf = e.value if isinstance(e.value, bytearray) else bytearray(e.value)
        if len(buf) < offset:
            buf.extend(bytes(offset - len(buf)))
        buf[offset : offset + len(patch)] = patch
        ks.replace_value(e, buf, before)
        return len(buf)
