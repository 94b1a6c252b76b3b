"""Client request reading for the proxy: a fast path for well-formed multibulk commands.

How it works
- Most traffic is complete multibulk commands with small arguments. ``RequestReader`` scans
  those itself in one tight loop and hands back each command's arguments *and its raw bytes*,
  so a command that goes whole to one shard is forwarded without re-encoding.
- Anything else — inline commands, malformed frames, lengths over the fast-path limits, an
  incomplete command longer than ``FAST_TAIL`` — is handed, from the first byte of the command
  on, to the project's ``RequestParser``, which enforces every limit and raises the right
  ``ProtocolError``. The reader returns to the fast path as soon as that parser has finished a
  command and holds nothing more.
- The fast path never half-consumes: an incomplete command stays in the buffer untouched.

Sans-I/O: bytes in, commands out.
"""

from __future__ import annotations

from shardgate.resp import UNAUTH_MAX_BULK, UNAUTH_MAX_MULTIBULK, RequestLimits, RequestParser

FAST_TAIL = 64 * 1024  # an incomplete command longer than this is gathered by RequestParser
FAST_MAX_ARGS = 1024  # more arguments than this: RequestParser (it checks the limits)
FAST_MAX_BULK = 1024 * 1024  # a larger argument: RequestParser (chunked gathering)

# Lengths as they appear on the wire, pre-parsed: a dict lookup is cheaper than validating and
# converting, and only canonical spellings are in it ("007", "+7", " 7" and "1_0" are not).
_LENGTHS = {b"%d" % i: i for i in range(64 * 1024)}


def _length(text: bytes) -> int:
    """A canonical non-negative decimal, or -1."""
    value = _LENGTHS.get(text)
    if value is not None:
        return value
    if text.isdigit() and text[0] != 48 and len(text) <= 19:
        return int(text)
    return -1


class RequestReader:
    __slots__ = ("_buf", "_fast", "_pos", "_slow", "authenticated")

    def __init__(self, limits: RequestLimits, *, authenticated: bool) -> None:
        self._slow = RequestParser(limits, authenticated=authenticated)
        self._buf = b""
        self._pos = 0
        self._fast = True
        self.authenticated = authenticated

    def set_authenticated(self, value: bool) -> None:
        self.authenticated = value
        self._slow.authenticated = value

    def feed(self, data: bytes) -> None:
        if self._fast:
            if self._pos < len(self._buf):
                self._buf = self._buf[self._pos :] + data
            else:
                self._buf = data
            self._pos = 0
        else:
            self._slow.feed(data)

    def next(self) -> tuple[list[bytes], bytes | None] | None:
        """The next complete command and its raw bytes (None when only the args are known);
        None when more data is needed. Raises ProtocolError for a broken stream."""
        if self._fast:
            cmd = self._scan()
            if cmd is not None:
                return cmd
            if self._fast:
                return None
        args = self._slow.next_command()
        if args is None:
            return None
        if self._slow.buffered == 0:
            self._fast = True  # at a command boundary with nothing held: back to the fast path
            self._buf = b""
            self._pos = 0
        return args, None

    def _to_slow(self, pos: int) -> None:
        rest = self._buf[pos:]
        self._buf = b""
        self._pos = 0
        self._fast = False
        if rest:
            self._slow.feed(rest)

    def _scan(self) -> tuple[list[bytes], bytes] | None:
        buf = self._buf
        pos = self._pos
        n = len(buf)
        if pos >= n:
            return None
        if buf[pos] != 42:  # not '*': inline or garbage
            self._to_slow(pos)
            return None
        nl = buf.find(b"\r\n", pos)
        if nl < 0:
            if n - pos > FAST_TAIL:
                self._to_slow(pos)
            return None
        count = _length(buf[pos + 1 : nl])
        max_args = FAST_MAX_ARGS if self.authenticated else UNAUTH_MAX_MULTIBULK
        max_bulk = FAST_MAX_BULK if self.authenticated else UNAUTH_MAX_BULK
        if count <= 0 or count > max_args:
            self._to_slow(pos)
            return None
        p = nl + 2
        args = []
        for _ in range(count):
            if p >= n:
                break
            if buf[p] != 36:  # '$'
                self._to_slow(pos)
                return None
            nl = buf.find(b"\r\n", p)
            if nl < 0:
                break
            size = _LENGTHS.get(buf[p + 1 : nl])
            if size is None:
                size = _length(buf[p + 1 : nl])
            if size < 0 or size > max_bulk:
                self._to_slow(pos)
                return None
            start = nl + 2
            end = start + size
            if end + 2 > n:
                break
            if buf[end] != 13 or buf[end + 1] != 10:
                self._to_slow(pos)
                return None
            args.append(buf[start:end])
            p = end + 2
        else:
            self._pos = p
            return args, buf[pos:p]
        if n - pos > FAST_TAIL:  # incomplete and large: let RequestParser gather it
            self._to_slow(pos)
        return None
