"""RESP requests, sans-I/O: the incremental parser clients' bytes go through, with its limits.

How it works
- ``RequestParser`` takes bytes with ``feed`` and hands back complete commands (lists of bytes)
  from ``next_command``; it returns ``None`` for "need more data" and raises ``ProtocolError``
  for a stream that cannot be resynchronised. It never half-consumes: an incomplete command stays
  buffered whole. Declared lengths are checked against the limits before anything is allocated,
  and a large bulk is gathered in a list of chunks, joined once, so a 512 MB value costs one copy.
  Error texts and the order of checks are Redis 7's (networking.c); the one deliberate difference
  is that a bulk not followed by CRLF is an error. Pipelined small commands take a fast path
  (one ``split`` per window of the buffer, see ``RequestParser._split_batch``).
- ``split_inline`` splits an inline command like Redis's sdssplitargs.

``shardgate.resp`` re-exports all of this, so callers import the codec from one place.
"""

from __future__ import annotations

import functools
import re
from itertools import accumulate
from operator import add

import attrs

CRLF = b"\r\n"

# Redis defaults (src/server.h): proto-max-bulk-len 512 MB, PROTO_INLINE_MAX_SIZE 64 KB,
# client-query-buffer-limit 1 GB; unauthenticated clients may send at most 10 arguments of at
# most 16 KB each (Redis 7 networking.c).
DEFAULT_MAX_BULK = 512 * 1024 * 1024
DEFAULT_MAX_MULTIBULK = 2**31 - 1
DEFAULT_MAX_INLINE = 64 * 1024
DEFAULT_MAX_QUERYBUF = 1024 * 1024 * 1024
UNAUTH_MAX_MULTIBULK = 10
UNAUTH_MAX_BULK = 16 * 1024

# What one parsed argument costs in Python beyond its bytes (object header + list slot); the
# query-buffer limit counts parsed-but-incomplete arguments at this price so a flood of tiny
# arguments cannot grow memory 5x past the limit.
ARG_OVERHEAD = 41

# Redis's string2ll accepts at most 20 characters (LONG_STR_SIZE 21, util.c) and a signed 64-bit
# value; multibulk counts must also fit an int (INT_MAX).
_LLONG_MAX = 2**63 - 1
_INT_MAX = 2**31 - 1

# The digits of small lengths, pre-parsed: most headers are looked up here instead of being
# validated and converted one by one.
_SMALL_LENGTHS = {b"%d" % i: i for i in range(1024)}
# The batch fast path: whole header tokens, and how much of a buffer it will split at once.
_FAST_MAX = 1023


@functools.lru_cache(maxsize=16)
def _header_table(prefix: bytes, lowest: int, highest: int) -> dict[bytes, int]:
    """``{b"*1": 1, ...}``: the header tokens the fast path takes, and their values."""
    return {prefix + b"%d" % i: i for i in range(lowest, highest + 1)}


# The fast path splits a window of the buffer at a time: it grows while the stream suits the
# fast path and shrinks when it does not (big values, which the careful parser skips over by
# their length while a split scans every byte), so a mismatch costs one small split per feed.
_WINDOW_MIN = 1024
_WINDOW_MAX = 64 * 1024
_BACKOFF_MAX = 16  # feeds

# A browser or HTTP client on a RESP port: its first line is a request line. (Redis itself
# replies to that line and closes on the "Host:" header that follows; we close without a reply.)
_HTTP_REQUEST_LINE = re.compile(rb"[A-Z]+ \S+ HTTP/\d\.\d")
# Redis's securityWarningCommand: these "commands" close the connection silently.
_HTTP_WORDS = (b"host:", b"post")


# RequestParser._want when the parser waits for the end of a line rather than a byte count.
_WANT_LF = -1  # inline command: a "\n"
_WANT_CRLF = -2  # multibulk or bulk length header: a "\r\n"


class ProtocolError(Exception):
    """The stream is broken; reply with the message (unless silent) and close the connection."""

    def __init__(self, message: str, *, silent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.silent = silent

    @property
    def reply(self) -> bytes:
        return b"-ERR Protocol error: " + self.message.encode() + CRLF


@attrs.frozen(slots=True)
class RequestLimits:
    max_bulk: int = DEFAULT_MAX_BULK
    max_multibulk: int = DEFAULT_MAX_MULTIBULK
    max_inline: int = DEFAULT_MAX_INLINE
    max_querybuf: int = DEFAULT_MAX_QUERYBUF


def _string2ll(text: bytes) -> int | None:
    """Redis's string2ll: optional '-', no '+', spaces or leading zeros, fits a signed 64 bits."""
    if len(text) > 20:
        return None
    if text.isdigit():  # ASCII digits only, non-empty
        if text[0] == 48 and len(text) > 1:
            return None
        value = int(text)
        return value if value <= _LLONG_MAX else None
    if len(text) > 1 and text[0] == 45 and text[1] != 48 and text[1:].isdigit():
        value = -int(text[1:])
        return value if value >= -_LLONG_MAX - 1 else None
    return None


class Run:
    """Commands of one shape parsed ahead at once: the proxy's fast lane (``next_item``).

    ``count`` commands, each ``stride`` tokens of ``toks`` (``*N``, then ``$len`` and value in
    turn), all with the same name; command i's exact bytes are
    ``buf[offsets[i]:offsets[i + 1]]`` (canonical RESP, forwarded as they came). A plain slotted
    class, not attrs: one is made per client read on the hot path.
    """

    __slots__ = ("buf", "count", "offsets", "stride", "toks")

    def __init__(
        self, buf: bytes, toks: list[bytes], stride: int, count: int, offsets: range | list[int]
    ) -> None:
        self.buf = buf
        self.toks = toks
        self.stride = stride
        self.count = count
        self.offsets = offsets

    def frame(self, index: int) -> bytes:
        """Command ``index``'s exact bytes."""
        return self.buf[self.offsets[index] : self.offsets[index + 1]]

    def args(self, index: int) -> list[bytes]:
        """Command ``index`` as a list of arguments."""
        start = index * self.stride
        return self.toks[start + 2 : start + self.stride : 2]


class Batch:
    """Plain commands of any shapes parsed ahead at once, with their exact bytes: what the
    proxy takes when a window is not one ``Run`` (a pipeline of GETs and SETs mixed). Command
    i is ``commands[i]`` and its bytes are ``buf[offsets[i]:offsets[i + 1]]``."""

    __slots__ = ("buf", "commands", "count", "offsets")

    def __init__(self, buf: bytes, commands: list[list[bytes]], offsets: list[int]) -> None:
        self.buf = buf
        self.commands = commands
        self.count = len(commands)
        self.offsets = offsets

    def frame(self, index: int) -> bytes:
        """Command ``index``'s exact bytes."""
        return self.buf[self.offsets[index] : self.offsets[index + 1]]

    def args(self, index: int) -> list[bytes]:
        return self.commands[index]


class RequestParser:
    """Incremental parser for client requests (multibulk or inline).

    Buffer discipline: ``_buf[_pos:]`` holds unparsed bytes. A multibulk whose arguments arrive
    over several feeds keeps its finished arguments in ``_args`` (``_remaining`` more to come)
    and leaves ``_pos`` at the start of the first unfinished argument, whose header is parsed
    again next time. When that argument's body is known to need ``_want`` bytes from ``_pos``,
    feeds are only collected in ``_chunks`` until that many arrived and then joined once, so a
    large value is never re-joined per chunk. Likewise an unfinished line (inline command or
    length header) is joined only when a feed brings its end, so a line dribbled in byte by byte
    costs linear time, not a copy and a rescan per byte.

    Two paths: ``_split_batch`` takes runs of plain pipelined commands (small multibulks) a
    window at a time and queues them in ``_batch`` (or, for a parser made with ``runs=True``,
    hands a window of same-shaped commands over whole as a ``Run``); everything else, and the first command it
    does not take, goes through the careful loop in ``next_command``, which checks what Redis
    checks in Redis's order. Both give the same commands and errors for any input and chunking.
    """

    __slots__ = (
        "_args",
        "_authenticated",
        "_backoff",
        "_batch",
        "_buf",
        "_chunks",
        "_chunks_len",
        "_fast_counts",
        "_fast_sizes",
        "_first",
        "_fresh",
        "_limits",
        "_pending_cost",
        "_pos",
        "_remaining",
        "_run",
        "_runs",
        "_skip",
        "_want",
        "_window",
    )

    def __init__(
        self,
        limits: RequestLimits | None = None,
        *,
        authenticated: bool = True,
        runs: bool = False,
    ) -> None:
        self._limits = limits or RequestLimits()
        self._runs = runs  # the caller takes same-shaped commands as a Run (next_item)
        self._run: Run | Batch | None = None
        self._authenticated = authenticated
        self._set_fast_limits()
        self._buf = b""
        self._pos = 0
        self._chunks: list[bytes] = []
        self._chunks_len = 0
        self._want = 0  # bytes needed from _pos, or _WANT_LF / _WANT_CRLF, or 0: just parse
        self._args: list[bytes] = []
        self._remaining = 0  # bulks still expected in the current multibulk
        self._pending_cost = 0  # what the finished arguments in _args cost
        self._first = True  # nothing parsed yet on this connection (HTTP detection)
        self._fresh = False  # new bytes since the last batch split
        self._batch: list[list[bytes]] = []  # commands parsed ahead, last first
        self._window = _WINDOW_MIN  # bytes the next batch split may cover
        self._backoff = 0  # feeds to skip after the next fruitless batch split
        self._skip = 0  # feeds still to skip

    @property
    def limits(self) -> RequestLimits:
        return self._limits

    @limits.setter
    def limits(self, limits: RequestLimits) -> None:
        self._limits = limits
        self._set_fast_limits()

    @property
    def authenticated(self) -> bool:
        """Whether the client may send big requests (Redis's authRequired() is false)."""
        return self._authenticated

    @authenticated.setter
    def authenticated(self, value: bool) -> None:
        self._authenticated = value
        self._set_fast_limits()

    def _set_fast_limits(self) -> None:
        # The fast path takes what no limit can refuse; anything bigger goes the careful way.
        # Commands parsed ahead under the old limits are parsed again under the new ones.
        if getattr(self, "_batch", None) or getattr(self, "_run", None):
            self._unparse_batch()
        limits = self._limits
        count = limits.max_multibulk
        if not self._authenticated:
            count = min(count, UNAUTH_MAX_MULTIBULK)
        size = min(limits.max_bulk, _FAST_MAX)  # < UNAUTH_MAX_BULK, so allowed unauthenticated
        self._fast_counts = _header_table(b"*", 1, min(count, _FAST_MAX))
        self._fast_sizes = _header_table(b"$", 0, size)

    @property
    def buffered(self) -> int:
        """Bytes held for commands not yet complete (query buffer)."""
        return len(self._buf) - self._pos + self._chunks_len + self._pending_cost

    @property
    def idle(self) -> bool:
        """Nothing buffered, parsed ahead or half-parsed: the next bytes start a new command."""
        return (
            self._pos >= len(self._buf)
            and not self._batch
            and self._run is None
            and not self._chunks
            and not self._remaining
        )

    def single(self, data: bytes) -> list[bytes] | None:
        """The command, when ``data`` (just received) is exactly one whole plain multibulk and
        nothing is buffered: a client that waits for each reply sends one command per read.
        One split, no buffering, no run or batch. Otherwise None and nothing is consumed:
        ``feed`` it as usual. Where it gives a command, ``feed`` then ``next_item`` give the
        same one (the tests check it), since only what the fast tables accept is taken."""
        if (
            data[:1] != b"*"
            or self._pos < len(self._buf)
            or self._chunks
            or self._remaining
            or self._batch
            or self._run is not None
            or len(data) > self._limits.max_querybuf
        ):
            return None
        toks = data.split(CRLF)
        count = self._fast_counts.get(toks[0])
        if count is None or len(toks) != 2 * count + 2 or toks[-1]:
            return None
        sizes = self._fast_sizes.get
        for j in range(1, 2 * count, 2):
            if sizes(toks[j]) != len(toks[j + 1]):  # None (not a small header) never equals
                return None
        self._first = False
        return toks[2::2]

    def commands_taken_elsewhere(self) -> None:
        """The caller answered complete multibulk commands from this stream without the parser
        (the store node's fast path) while it was ``idle``: the stream has started."""
        self._first = False

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if self._skip:
            self._skip -= 1
        else:
            self._fresh = True
        want = self._want
        if want or self._chunks:
            # Waiting for a body or a line end: collect chunks, join once when they can help.
            chunks = self._chunks
            chunks.append(data)
            self._chunks_len += len(data)
            held = len(self._buf) - self._pos + self._chunks_len
            if held + self._pending_cost > self._limits.max_querybuf:
                raise ProtocolError("query buffer limit exceeded", silent=True)
            if want > 0:
                if held < want:
                    return
            elif want == _WANT_LF:
                if b"\n" not in data:
                    return
            elif b"\r\n" not in data and not (data[0] == 10 and self._last_byte() == 13):
                return
            if len(chunks) == 1:
                self._buf = self._buf[self._pos :] + data if self._pos < len(self._buf) else data
                chunks.clear()
            else:
                chunks.insert(0, self._buf[self._pos :])
                self._buf = b"".join(chunks)
                chunks.clear()
            self._chunks_len = 0
            self._pos = 0
            self._want = 0
            return
        if self._pos >= len(self._buf):
            self._buf = data
        else:
            self._buf = self._buf[self._pos :] + data
        self._pos = 0
        if len(self._buf) + self._pending_cost > self._limits.max_querybuf:
            raise ProtocolError("query buffer limit exceeded", silent=True)

    def _last_byte(self) -> int:
        """The byte fed just before the newest chunk (chunks are never empty)."""
        if len(self._chunks) > 1:
            return self._chunks[-2][-1]
        return self._buf[-1] if len(self._buf) > self._pos else -1

    def _line_too_long(self) -> None:
        """Raise Redis's error if the unfinished line waiting in chunks is over the limit."""
        if len(self._buf) - self._pos + self._chunks_len <= self._limits.max_inline:
            return
        if self._remaining:
            raise ProtocolError("too big bulk count string")
        first = self._buf[self._pos : self._pos + 1] or self._chunks[0][:1]
        if first == b"*":
            raise ProtocolError("too big mbulk count string")
        raise ProtocolError("too big inline request")

    def next_item(self) -> list[bytes] | Run | Batch | None:
        """``next_command`` for a parser made with ``runs=True``: the next commands as one
        ``Run`` when they are all of one shape, or as a ``Batch`` of plain commands with their
        bytes, else the next command, else None. A run or batch the caller does not take whole
        goes back with ``give_back``."""
        batch = self._batch
        if batch:
            return batch.pop()
        run = self._run
        if run is not None:
            self._run = None
            return run
        if self._fresh and not self._remaining and not self._chunks:
            self._fresh = False
            if self._split_batch():
                run = self._run
                if run is not None:
                    self._run = None
                    return run
                return self._batch.pop()
        if self._pos >= len(self._buf) and not self._chunks:
            return None  # all taken: the common end of a read, without the careful loop's call
        return self._careful()

    def give_back(self, run: Run | Batch) -> None:
        """A run the caller will not take whole: its commands come out one by one."""
        self._run = run
        self._unrun()

    def next_command(self) -> list[bytes] | None:
        """Return the next complete command, or None when more data is needed."""
        batch = self._batch
        if batch:
            return batch.pop()
        if self._run is not None:
            self._unrun()
            return self._batch.pop()
        if self._fresh and not self._remaining and not self._chunks:
            self._fresh = False
            if self._split_batch():
                if self._run is not None:
                    self._unrun()
                return self._batch.pop()
        return self._careful()

    def _careful(self) -> list[bytes] | None:
        # The careful parser. The order of checks follows Redis's processMultibulkBuffer, so
        # every malformed input gets Redis's error text.
        while True:
            buf = self._buf
            pos = self._pos
            end = len(buf)
            if self._chunks:
                if self._want < 0:
                    self._line_too_long()
                return None
            if pos >= end:
                return None
            remaining = self._remaining
            if remaining == 0:
                if buf[pos] != 42:  # not '*': inline command
                    cmd = self._inline(buf, pos)
                    if cmd is None:
                        return None
                    if not cmd:
                        continue  # empty line
                    return cmd
                nl = buf.find(CRLF, pos)
                if nl < 0:
                    if end - pos > self._limits.max_inline:
                        raise ProtocolError("too big mbulk count string")
                    self._want = _WANT_CRLF
                    return None
                count = _SMALL_LENGTHS.get(buf[pos + 1 : nl])
                if count is None:
                    count = self._multibulk_count(buf[pos + 1 : nl])
                    if count <= 0:  # Redis ignores empty and negative multibulks
                        self._first = False
                        self._pos = nl + 2
                        continue
                if count > self._limits.max_multibulk:
                    raise ProtocolError("invalid multibulk length")
                if count > UNAUTH_MAX_MULTIBULK and not self._authenticated:
                    raise ProtocolError("unauthenticated multibulk length")
                self._first = False
                pos = nl + 2
                if count == 0:
                    self._pos = pos
                    continue
                remaining = count
                args: list[bytes] = []
            else:
                args = self._args
                self._args = []
            limits = self._limits
            max_bulk = limits.max_bulk
            if not self._authenticated and max_bulk > UNAUTH_MAX_BULK:
                max_bulk = UNAUTH_MAX_BULK
            started = pos
            parsed = len(args)
            want = 0
            while remaining:
                nl = buf.find(CRLF, pos)
                if nl < 0:
                    if end - pos > limits.max_inline:
                        raise ProtocolError("too big bulk count string")
                    want = _WANT_CRLF
                    break
                if buf[pos] != 36:  # '$'
                    raise ProtocolError(f"expected '$', got '{chr(buf[pos])}'")
                size = _SMALL_LENGTHS.get(buf[pos + 1 : nl])
                if size is None:
                    size = self._bulk_length(buf[pos + 1 : nl])
                if size > max_bulk:
                    if size > limits.max_bulk:
                        raise ProtocolError("invalid bulk length")
                    raise ProtocolError("unauthenticated bulk length")
                start = nl + 2
                stop = start + size
                if stop + 2 > end:
                    want = stop + 2 - pos
                    break
                if buf[stop] != 13 or buf[stop + 1] != 10:
                    # Redis 7.0 silently skips two bytes here; a desynchronised stream is an error.
                    raise ProtocolError("expected CRLF after bulk")
                args.append(buf[start:stop])
                remaining -= 1
                pos = stop + 2
            self._pos = pos
            if remaining:
                self._args = args
                self._remaining = remaining
                self._want = want
                self._pending_cost += pos - started + ARG_OVERHEAD * (len(args) - parsed)
                if end - pos + self._pending_cost > limits.max_querybuf:
                    raise ProtocolError("query buffer limit exceeded", silent=True)
                return None
            self._remaining = 0
            self._want = 0
            self._pending_cost = 0
            return args

    def _split_batch(self) -> bool:
        """Parse the plain commands at the head of the buffer at once (the fast path).

        Pipelining clients send runs of multibulks of small arguments. One ``split`` on CRLF
        cuts a window of the buffer into headers and values in C; a command is taken when its
        tokens line up exactly (``$N`` followed by a token of N bytes, so no value held a CRLF)
        and no limit could refuse it. The first one that does not, and everything after it, is
        left to the careful parser, starting at that command: nothing is half-consumed. After a
        command that does not suit, the next try waits for the next feed (or several), so a
        stream that never lines up costs at most one small split per feed, never one per
        command. Commands taken this way were encoded canonically, so ``encode_command`` gives
        back their exact bytes if they must be parsed again (see ``_unparse_batch``).
        """
        buf = self._buf
        pos = self._pos
        if buf[pos : pos + 1] != b"*":
            return False
        window = min(len(buf), pos + self._window)
        toks = (buf if pos == 0 and window == len(buf) else buf[pos:window]).split(CRLF)
        last = len(toks) - 1  # the bytes after the last CRLF: never a complete token
        # A run needs two commands of at least two arguments: ten tokens.
        if self._runs and last >= 10 and (run := self._take_run(buf, pos, toks, last)) is not None:
            self._run = run
            self._pos = run.offsets[run.count]
            self._first = False
            self._backoff = 0
            if window < len(buf):  # more of the same may follow: a bigger window next time
                self._fresh = True
                self._window = min(self._window * 2, _WINDOW_MAX)
            return True
        counts = self._fast_counts.get
        sizes = self._fast_sizes.get
        commands: list[list[bytes]] = []
        stops: list[int] = []  # the token each command ends before
        i = 0
        lined_up = True  # every whole command in the window was taken
        while i < last:
            count = counts(toks[i])
            if count is None:
                lined_up = False
                break
            stop = i + 1 + 2 * count
            if stop > last:  # cut off by the window or the buffer: do its headers suit?
                for j in range(i + 1, last, 2):
                    if sizes(toks[j]) is None:
                        lined_up = False
                        break
                break
            for j in range(i + 1, stop, 2):
                if sizes(toks[j]) != len(toks[j + 1]):  # None (not a small header) never equals
                    lined_up = False
                    break
            else:
                commands.append(toks[i + 2 : stop : 2])
                stops.append(stop)
                i = stop
                continue
            break
        if not lined_up:  # the stream does not suit the fast path: risk less next time
            self._window = max(self._window // 2, _WINDOW_MIN)
            if len(commands) * 1024 < window - pos + 1024:
                # Less than a command per KB scanned does not pay for the split: sit out a
                # few feeds, more each time this happens in a row.
                self._backoff = min(2 * self._backoff or 1, _BACKOFF_MAX)
                self._skip = self._backoff
            else:
                self._backoff = 0
        elif window < len(buf):  # it does, and there is more: a bigger window when these are done
            self._fresh = True
            self._window = min(self._window * 2, _WINDOW_MAX)
            self._backoff = 0
        else:
            self._backoff = 0
        if not commands:
            return False
        self._first = False
        if self._runs and len(commands) > 1:
            # Where each command starts: the token lengths summed in C, plus a CRLF each.
            sums = list(accumulate(map(len, toks[:i]), initial=pos))
            self._run = Batch(buf, commands, [pos, *[sums[k] + 2 * k for k in stops]])
            self._pos = sums[i] + 2 * i
            return True
        self._pos = pos + sum(map(len, toks[:i])) + 2 * i
        commands.reverse()
        self._batch = commands
        return True

    def _take_run(self, buf: bytes, pos: int, toks: list[bytes], last: int) -> Run | None:
        """Every whole command in the window, as one Run when they all have one shape: the
        same argument count and name, and every value exactly as long as its header says.

        The checks are a few C-level passes over strided slices of the tokens (``count``,
        ``map(len, …)``) instead of a Python loop per command; any mismatch leaves the window
        to the per-command fast path. A value holding a CRLF splits into two tokens and never
        lines up, so nothing taken here can be misread.
        """
        head = toks[0]
        argc = self._fast_counts.get(head)
        if argc is None or argc < 2:
            return None
        stride = 2 * argc + 1
        count = last // stride
        if count < 2:
            return None
        end = count * stride
        sizes = self._fast_sizes.get
        if (
            sizes(toks[1]) != len(toks[2])
            or toks[0:end:stride].count(head) != count
            or toks[1:end:stride].count(toks[1]) != count
            or toks[2:end:stride].count(toks[2]) != count
        ):
            return None
        # Command i's length: a part every command shares, plus its own header and value
        # lengths where those differ from command to command.
        fixed = len(head) + len(toks[1]) + len(toks[2]) + 2 * stride
        varying: list[list[int]] = []
        for j in range(3, stride, 2):
            headers = toks[j:end:stride]
            lengths = list(map(len, toks[j + 1 : end : stride]))
            if headers.count(headers[0]) == count:
                size = sizes(headers[0])
                if size is None or lengths.count(size) != count:
                    return None
                fixed += len(headers[0]) + size
            else:
                if lengths != list(map(sizes, headers)):
                    return None
                varying.append(lengths)
                varying.append(list(map(len, headers)))
        if not varying:
            offsets: range | list[int] = range(pos, pos + (count + 1) * fixed, fixed)
        else:
            frame = map(add, varying[0], varying[1])
            for more in varying[2:]:
                frame = map(add, frame, more)
            offsets = list(accumulate(map(add, frame, [fixed] * count), initial=pos))
        return Run(buf, toks, stride, count, offsets)

    def _unrun(self) -> None:
        """Hand a run over as single commands (a caller that takes commands one by one)."""
        run = self._run
        assert run is not None
        self._run = None
        if isinstance(run, Batch):
            self._batch = run.commands[::-1]
            return
        toks = run.toks
        stride = run.stride
        self._batch = [
            toks[i + 2 : i + stride : 2] for i in range((run.count - 1) * stride, -1, -stride)
        ]

    def _unparse_batch(self) -> None:
        """Put commands parsed ahead back into the buffer, to be parsed under new limits."""
        if self._run is not None:
            self._unrun()
        batch = self._batch
        if batch:
            self._buf = (
                b"".join(encode_command(args) for args in reversed(batch)) + self._buf[self._pos :]
            )
            self._pos = 0
            batch.clear()
            self._fresh = True

    def _multibulk_count(self, text: bytes) -> int:
        if len(text) + 2 > self._limits.max_inline:  # '*' or '$', digits, '\r'
            raise ProtocolError("too big mbulk count string")
        count = _string2ll(text)
        if count is None or count > _INT_MAX:
            raise ProtocolError("invalid multibulk length")
        return count

    def _bulk_length(self, text: bytes) -> int:
        if len(text) + 2 > self._limits.max_inline:  # '*' or '$', digits, '\r'
            raise ProtocolError("too big bulk count string")
        size = _string2ll(text)
        if size is None or size < 0:
            raise ProtocolError("invalid bulk length")
        return size

    def _inline(self, buf: bytes, pos: int) -> list[bytes] | None:
        max_inline = self._limits.max_inline
        nl = buf.find(b"\n", pos)
        if nl < 0:
            if len(buf) - pos > max_inline:
                raise ProtocolError("too big inline request")
            self._want = _WANT_LF
            return None
        if nl - pos > max_inline:
            # Redis only checks while the newline is missing, which makes the outcome depend on
            # how the line was chunked; checking the whole line too keeps it deterministic.
            raise ProtocolError("too big inline request")
        stop = nl - 1 if nl > pos and buf[nl - 1] == 13 else nl
        line = buf[pos:stop]
        self._pos = nl + 1
        args = split_inline(line)
        if not args:
            return args
        if self._first:
            self._first = False
            if _HTTP_REQUEST_LINE.fullmatch(line):
                raise ProtocolError("HTTP request on a RESP port", silent=True)
        if args[0].lower() in _HTTP_WORDS:
            raise ProtocolError("HTTP request on a RESP port", silent=True)
        return args


# sdssplitargs skips isspace() characters between arguments but ends an unquoted argument only
# at these (and at NUL, where the C string ends).
_BLANKS = b" \t\n\r\x0b\x0c"
_ARG_ENDS = b" \t\n\r"
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}


def split_inline(line: bytes) -> list[bytes]:
    """Split an inline command like Redis's sdssplitargs (quotes and escapes)."""
    nul = line.find(b"\0")
    if nul >= 0:
        line = line[:nul]
    if b'"' not in line and b"'" not in line and b"\x0b" not in line and b"\x0c" not in line:
        return line.split()
    args: list[bytes] = []
    i = 0
    n = len(line)
    while True:
        while i < n and line[i] in _BLANKS:
            i += 1
        if i >= n:
            return args
        cur = bytearray()
        quote = 0
        while True:
            if i >= n:
                if quote:
                    raise ProtocolError("unbalanced quotes in request")
                break
            c = line[i]
            if quote == 34:  # inside "..."
                if c == 92 and i + 3 < n and line[i + 1] == 120 and _is_hex(line[i + 2 : i + 4]):
                    cur.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 92 and i + 1 < n:
                    i += 1
                    cur.append(_ESCAPES.get(line[i], line[i]))
                elif c == 34:
                    if i + 1 < n and line[i + 1] not in _BLANKS:
                        raise ProtocolError("unbalanced quotes in request")
                    i += 1
                    break
                else:
                    cur.append(c)
            elif quote == 39:  # inside '...'
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    i += 1
                    cur.append(39)
                elif c == 39:
                    if i + 1 < n and line[i + 1] not in _BLANKS:
                        raise ProtocolError("unbalanced quotes in request")
                    i += 1
                    break
                else:
                    cur.append(c)
            elif c in _ARG_ENDS:
                break
            elif c in (34, 39):
                quote = c
            else:
                cur.append(c)
            i += 1
        args.append(bytes(cur))


def _is_hex(two: bytes) -> bool:
    return len(two) == 2 and all(ch in b"0123456789abcdefABCDEF" for ch in two)


def encode_command(args: list[bytes] | tuple[bytes, ...]) -> bytes:
    """Encode a command as a RESP multibulk (what clients send)."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        parts.append(b"$%d\r\n%b\r\n" % (len(a), a))
    return b"".join(parts)
