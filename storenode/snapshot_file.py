"""The snapshot file format: pure encode and decode, no I/O.

How it works
- A snapshot is the node's data at one exact replication offset: the replication id and offset
  it corresponds to, the wall time it was taken, and every live record (key, value, absolute
  expiry in unix ms, 0 = none). A replica restarted from it asks its primary for
  ``SG.SYNC replid offset`` and continues from the backlog when it can (docs/replication.md).
- Layout, little-endian, version 1::

      header   b"SGSNAP\\r\\n" (8)  version u32  replid 40 ascii  offset i64  saved_at_ms i64
      record   0x01  key_len u32  value_len u32  expire_at_ms i64  key  value      (repeated)
      trailer  0xFF  record_count u64  crc32 u32   (CRC of every byte before it)

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
_HEADER = struct.Struct("<8sI40sqq")
_RECORD = struct.Struct("<BIIq")
_TRAILER = struct.Struct("<BQI")
RECORD_TAG = 0x01
END_TAG = 0xFF
# Encoded records are handed to the writer in pieces of about this size: big enough that the
# file writes are few, small enough that the writer's memory stays flat.
CHUNK_BYTES = 1024 * 1024
_REPLID = re.compile(rb"[0-9a-f]{40}")

Record = tuple[bytes, bytes, int]  # key, value, expire_at_ms (0 = no TTL)


class SnapshotError(Exception):
    """The file is not a snapshot this node can load; the message says why, in one line."""


@attrs.frozen(slots=True)
class Snapshot:
    replid: str
    offset: int
    saved_at_ms: int
    records: tuple[Record, ...] | list[Record] = attrs.field(eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not _REPLID.fullmatch(self.replid.encode("ascii", "replace")):
            raise ValueError("replid must be 40 lower-case hex characters")
        if self.offset < 0:
            raise ValueError("offset must not be negative")


def encode(
    replid: str, offset: int, saved_at_ms: int, records: Iterable[Record]
) -> Iterator[bytes]:
    """The file's bytes, in pieces of about ``CHUNK_BYTES`` (the last one is the trailer)."""
    Snapshot(replid, offset, saved_at_ms, ())  # validates the header values
    head = _HEADER.pack(MAGIC, VERSION, replid.encode("ascii"), offset, saved_at_ms)
    crc = zlib.crc32(head)
    yield head
    pack = _RECORD.pack
    parts: list[bytes] = []
    size = 0
    count = 0
    for key, value, expire_at in records:
        rec = pack(RECORD_TAG, len(key), len(value), expire_at)
        parts += (rec, key, value)
        size += len(rec) + len(key) + len(value)
        count += 1
        if size >= CHUNK_BYTES:
            chunk = b"".join(parts)
            crc = zlib.crc32(chunk, crc)
            yield chunk
            parts.clear()
            size = 0
    tail = b"".join(parts) + struct.pack("<BQ", END_TAG, count)
    crc = zlib.crc32(tail, crc)
    yield tail + struct.pack("<I", crc)


def encode_bytes(snapshot: Snapshot) -> bytes:
    return b"".join(
        encode(snapshot.replid, snapshot.offset, snapshot.saved_at_ms, snapshot.records)
    )


def decode(data: bytes | bytearray | memoryview) -> Snapshot:
    """Parse a whole file, or raise ``SnapshotError``; nothing is returned half-parsed."""
    view = memoryview(data)
    n = len(view)
    if n < len(MAGIC) or bytes(view[: len(MAGIC)]) != MAGIC:
        raise SnapshotError("not a shardgate snapshot (bad magic)")
    if n < _HEADER.size:
        raise SnapshotError(f"truncated: {n} bytes, shorter than the header")
    _, version, raw_replid, offset, saved_at_ms = _HEADER.unpack_from(view, 0)
    if version != VERSION:
        raise SnapshotError(f"unsupported snapshot version {version} (this node reads {VERSION})")
    if n < _HEADER.size + _TRAILER.size:
        raise SnapshotError(f"truncated: {n} bytes, no room for the trailer")
    tag, count, crc = _TRAILER.unpack_from(view, n - _TRAILER.size)
    if zlib.crc32(view[: n - 4]) != crc:
        raise SnapshotError("checksum mismatch: the file is corrupt or truncated")
    if tag != END_TAG:
        raise SnapshotError("no end marker: the file is truncated")
    if not _REPLID.fullmatch(raw_replid) or offset < 0:
        raise SnapshotError("bad header: replication id or offset out of range")
    end = n - _TRAILER.size
    pos = _HEADER.size
    records: list[Record] = []
    unpack = _RECORD.unpack_from
    rsize = _RECORD.size
    while pos < end:
        if end - pos < rsize:
            raise SnapshotError(f"record at byte {pos} is cut short")
        rtag, klen, vlen, expire_at = unpack(view, pos)
        if rtag != RECORD_TAG:
            raise SnapshotError(f"unknown record type {rtag} at byte {pos}")
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
    return Snapshot(raw_replid.decode("ascii"), offset, saved_at_ms, records)


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
