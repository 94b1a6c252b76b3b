"""The snapshot file format: pure encode and decode, no I/O.

How it works
- A snapshot is the node's data at one exact replication offset: every live record (key, value,
  absolute expiry in unix ms, 0 = none), then optionally the replication stream written while
  those records were being collected, then the replication id and the offset the whole
  corresponds to. A replica restarted from it asks its primary for ``SG.SYNC replid offset``
  and continues from the backlog when it can (docs/replication.md).
- Why a stream section: a background save walks the keyspace in small chunks while clients go
  on writing (``persistence.py``), exactly as a replica's full sync does. The stream is state,
  not commands (``SG.PUT``/``DEL``/``FLUSHALL``, see ``replication.py``), so records collected
  during the walk followed by the stream from the walk's start offset to its end offset give,
  once applied in order, exactly the data at the end offset.
- Layout, little-endian, version 1::

      header   b"SGSNAP\r\n" (8)  version u32  saved_at_ms i64
      record   0x01  key_len u32  value_len u32  expire_at_ms i64  key  value     (repeated)
      stream   0x02  length u64  RESP commands SG.PUT / DEL / FLUSHALL            (optional)
      trailer  0xFF  record_count u64  replid 40 ascii  offset i64  crc32 u32
                     (the CRC covers every byte before it)

  The magic's CR LF catches a file mangled by a text-mode copy, as PNG's does.
- Decoding never half-consumes and never trusts a length: the CRC and the trailer are checked
  before any record is parsed, every length is checked against the bytes left before anything
  is sliced, and the whole file is decoded before the caller applies a single record, so a bad
  file is refused whole (``SnapshotError``, with a one-line reason) and never half-loaded.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterable, Iterator

import attrs

MAGIC = b"SGSNAP\r\n"
VERSION = 1
REPLID_LEN = 40  # hex characters, as Redis's replication ids
_HEADER = struct.Struct("<8sIq")
_RECORD = struct.Struct("<BIIq")
_STREAM = struct.Struct("<BQ")
_TRAILER = struct.Struct("<BQ40sqI")
RECORD_TAG = 0x01
STREAM_TAG = 0x02
END_TAG = 0xFF
# Encoded records are handed to the writer in pieces of about this size: big enough that the
# file writes are few, small enough that the writer's memory stays flat.
CHUNK_BYTES = 1024 * 1024
_REPLID = re.compile(rb"[0-9a-f]{40}")

Record = tuple[bytes, bytes, int]  # key, value, expire_at_ms (0 = no TTL)


class SnapshotError(Exception):
    """The file is not a snapshot this node can load; the message says why, in one line."""


def _check_header(replid: str, offset: int) -> None:
    if not _REPLID.fullmatch(replid.encode("ascii", "replace")):
        raise ValueError("replid must be 40 lower-case hex characters")
    if offset < 0:
        raise ValueError("offset must not be negative")


@attrs.frozen(slots=True)
class Snapshot:
    replid: str
    offset: int
    saved_at_ms: int
    records: tuple[Record, ...] | list[Record] = attrs.field(eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        _check_header(self.replid, self.offset)


class Encoder:
    """Builds a file piece by piece, keeping the record count and the running CRC."""

    def __init__(self, saved_at_ms: int) -> None:
        self.saved_at_ms = saved_at_ms
        self.count = 0
        self.crc = 0

    def _out(self, data: bytes) -> bytes:
        self.crc = zlib.crc32(data, self.crc)
        return data

    def header(self) -> bytes:
        return self._out(_HEADER.pack(MAGIC, VERSION, self.saved_at_ms))

    def records(self, records: Iterable[Record]) -> bytes:
        pack = _RECORD.pack
        parts: list[bytes] = []
        for key, value, expire_at in records:
            parts += (pack(RECORD_TAG, len(key), len(value), expire_at), key, value)
            self.count += 1
        return self._out(b"".join(parts))

    def stream(self, data: bytes) -> bytes:
        if not data:
            return b""
        return self._out(_STREAM.pack(STREAM_TAG, len(data)) + data)

    def trailer(self, replid: str, offset: int) -> bytes:
        _check_header(replid, offset)
        body = _TRAILER.pack(END_TAG, self.count, replid.encode("ascii"), offset, 0)[:-4]
        crc = zlib.crc32(body, self.crc)
        return body + struct.pack("<I", crc)


def encode(
    replid: str, offset: int, saved_at_ms: int, records: Iterable[Record], stream: bytes = b""
) -> Iterator[bytes]:
    """The file's bytes, in pieces of about ``CHUNK_BYTES`` (the last one is the trailer)."""
    _check_header(replid, offset)
    enc = Encoder(saved_at_ms)
    yield enc.header()
    batch: list[Record] = []
    size = 0
    for rec in records:
        batch.append(rec)
        size += len(rec[0]) + len(rec[1]) + _RECORD.size
        if size >= CHUNK_BYTES:
            yield enc.records(batch)
            batch.clear()
            size = 0
    yield enc.records(batch) + enc.stream(stream) + enc.trailer(replid, offset)


def encode_bytes(snapshot: Snapshot, stream: bytes = b"") -> bytes:
    return b"".join(
        encode(snapshot.replid, snapshot.offset, snapshot.saved_at_ms, snapshot.records, stream)
    )


def decode(data: bytes | bytearray | memoryview) -> Snapshot:
    """Parse a whole file, or raise ``SnapshotError``; nothing is returned half-parsed."""
    view = memoryview(data)
    n = len(view)
    if n < len(MAGIC) or bytes(view[: len(MAGIC)]) != MAGIC:
        raise SnapshotError("not a shardgate snapshot (bad magic)")
    if n < _HEADER.size:
        raise SnapshotError(f"truncated: {n} bytes, shorter than the header")
    _, version, saved_at_ms = _HEADER.unpack_from(view, 0)
    if version != VERSION:
        raise SnapshotError(f"unsupported snapshot version {version} (this node reads {VERSION})")
    if n < _HEADER.size + _TRAILER.size:
        raise SnapshotError(f"truncated: {n} bytes, no room for the trailer")
    end = n - _TRAILER.size
    tag, count, raw_replid, offset, crc = _TRAILER.unpack_from(view, end)
    if zlib.crc32(view[: n - 4]) != crc:
        raise SnapshotError("checksum mismatch: the file is corrupt or truncated")
    if tag != END_TAG:
        raise SnapshotError("no end marker: the file is truncated")
    if not _REPLID.fullmatch(raw_replid) or offset < 0:
        raise SnapshotError("bad trailer: replication id or offset out of range")
    pos = _HEADER.size
    records: list[Record] = []
    streams: list[bytes] = []
    unpack = _RECORD.unpack_from
    rsize = _RECORD.size
    while pos < end:
        rtag = view[pos]
        if rtag == STREAM_TAG:
            if end - pos < _STREAM.size:
                raise SnapshotError(f"stream section at byte {pos} is cut short")
            _, length = _STREAM.unpack_from(view, pos)
            pos += _STREAM.size
            if length > end - pos:
                raise SnapshotError(f"stream section at byte {pos} is longer than the file")
            streams.append(bytes(view[pos : pos + length]))
            pos += length
            continue
        if rtag != RECORD_TAG:
            raise SnapshotError(f"unknown record type {rtag} at byte {pos}")
        if end - pos < rsize:
            raise SnapshotError(f"record at byte {pos} is cut short")
        _, klen, vlen, expire_at = unpack(view, pos)
        if expire_at < 0:
            raise SnapshotError(f"record at byte {pos} has a negative expiry")
        pos += rsize
        if klen + vlen > end - pos:
            raise SnapshotError(f"record at byte {pos - rsize} is longer than the file")
        key = bytes(view[pos : pos + klen])
        pos += klen
        records.append((key, bytes(view[pos : pos + vlen]), expire_at))
        pos += vlen
    if len(records) != count:
        raise SnapshotError(f"record count mismatch: trailer says {count}, found {len(records)}")
    for stream in streams:
        records = _replay(records, stream)
    return Snapshot(raw_replid.decode("ascii"), offset, saved_at_ms, records)


def _replay(records: list[Record], stream: bytes) -> list[Record]:
    """Apply a stream section (state records) on top of the records before it."""
    state = {key: (value, expire_at) for key, value, expire_at in records}
    for args in _commands(stream):
        name = args[0]
        if name == b"SG.PUT" and len(args) == 4 and args[3].isdigit():
            state[args[1]] = (args[2], int(args[3]))
        elif name == b"DEL" and len(args) == 2:
            state.pop(args[1], None)
        elif name == b"FLUSHALL" and len(args) == 1:
            state.clear()
        else:
            raise SnapshotError(f"unknown stream command {name[:32]!r}")
    return [(key, value, expire_at) for key, (value, expire_at) in state.items()]


def _number(data: bytes, pos: int, lead: bytes) -> tuple[int, int]:
    """``lead`` digits CR LF at ``pos``: the number and the position after the line."""
    eol = data.find(b"\r\n", pos, pos + 24)
    digits = data[pos + 1 : eol]
    if eol < 0 or data[pos : pos + 1] != lead or not digits.isdigit():
        raise SnapshotError(f"bad stream section at byte {pos}")
    return int(digits), eol + 2


def _commands(data: bytes) -> Iterator[list[bytes]]:
    """The RESP multibulks of a stream section; anything else is an error."""
    pos = 0
    n = len(data)
    while pos < n:
        argc, pos = _number(data, pos, b"*")
        if not 1 <= argc <= 4:
            raise SnapshotError(f"bad stream section at byte {pos}")
        args = []
        for _ in range(argc):
            size, pos = _number(data, pos, b"$")
            if size + 2 > n - pos or data[pos + size : pos + size + 2] != b"\r\n":
                raise SnapshotError(f"bad stream section at byte {pos}")
            args.append(data[pos : pos + size])
            pos += size + 2
        yield args


# --- the save schedule (Redis's "save" setting) -----------------------------------------------

SavePoints = tuple[tuple[int, int], ...]  # (seconds, changes): save when both are reached
# Redis's default save points.
DEFAULT_SAVE = "3600 1 300 100 60 10000"


def parse_save_points(text: str) -> SavePoints:
    """``"3600 1 300 100"`` (Redis's pairs), ``"60"`` (= ``"60 1"``), ``""``/``"0"``/``"off"``
    (no periodic saves). Raises ValueError with Redis's wording."""
    words = text.split()
    if not words or (len(words) == 1 and words[0].lower() in ("0", "off", "no")):
        return ()
    if len(words) == 1:
        words.append("1")
    if len(words) % 2:
        raise ValueError("Invalid save parameters")
    points = []
    for s, c in zip(words[::2], words[1::2]):
        if not (s.isdigit() and c.isdigit()) or len(s) > 10 or len(c) > 18:
            raise ValueError("Invalid save parameters")
        if int(s) < 1:
            raise ValueError("Invalid save parameters")
        points.append((int(s), int(c)))
    return tuple(points)


def format_save_points(points: SavePoints) -> str:
    return " ".join(f"{s} {c}" for s, c in points)


def save_due(points: SavePoints, seconds_since_save: float, changes: int) -> bool:
    """Redis's serverCron rule: some point has both its seconds elapsed and its changes made."""
    return any(changes >= c and seconds_since_save >= s for s, c in points)
