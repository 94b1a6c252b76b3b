"""The snapshot format: round trips, and every corruption or truncation refused whole."""

from __future__ import annotations

import struct
import zlib

import pytest

from storenode import snapshot_file as sf
from storenode.config import NodeConfig
from storenode.node import Node
from storenode.persistence import restore
from storenode.roles import Role
from storenode.snapshot_file import Snapshot, SnapshotError

REPLID = "ab" * 20
RECORDS = [
    (b"plain", b"value", 0),
    (b"ttl", b"v" * 300, 1_900_000_000_000),
    (b"", b"", 0),  # empty key and value are legal in Redis
    (b"\x00\xff\r\n*3", bytes(range(256)), 5),
]


def sample() -> bytes:
    return sf.encode_bytes(Snapshot(REPLID, 12345, 1_700_000_000_000, RECORDS))


def with_crc(body: bytes) -> bytes:
    """A file whose checksum is right for whatever ``body`` (all but the CRC) holds."""
    return body + struct.pack("<I", zlib.crc32(body))


def test_round_trip() -> None:
    snap = sf.decode(sample())
    assert (snap.replid, snap.offset, snap.saved_at_ms) == (REPLID, 12345, 1_700_000_000_000)
    assert list(snap.records) == RECORDS


def test_round_trip_empty_and_large() -> None:
    assert list(sf.decode(sf.encode_bytes(Snapshot(REPLID, 0, 0, []))).records) == []
    many = [(b"k%d" % i, b"x" * (i % 700), i % 3) for i in range(20_000)]  # several chunks
    data = sf.encode_bytes(Snapshot(REPLID, 7, 1, many))
    assert len(data) > 2 * sf.CHUNK_BYTES
    assert list(sf.decode(data).records) == many


def test_every_flipped_byte_is_refused() -> None:
    data = sample()
    for i in range(len(data)):
        for flip in (0x01, 0x80, 0xFF):
            bad = bytearray(data)
            bad[i] ^= flip
            with pytest.raises(SnapshotError):
                sf.decode(bytes(bad))


def test_every_truncation_and_extension_is_refused() -> None:
    data = sample()
    for n in range(len(data)):
        with pytest.raises(SnapshotError):
            sf.decode(data[:n])
    with pytest.raises(SnapshotError):
        sf.decode(data + b"\x00")


def test_wrong_version_is_named() -> None:
    body = bytearray(sample()[:-4])
    body[8:12] = struct.pack("<I", 2)
    with pytest.raises(SnapshotError, match="unsupported snapshot version 2"):
        sf.decode(with_crc(bytes(body)))


def test_bad_magic_is_named() -> None:
    with pytest.raises(SnapshotError, match="bad magic"):
        sf.decode(b"REDIS0011" + b"\x00" * 100)


def _header() -> bytes:
    return struct.pack("<8sIq", sf.MAGIC, sf.VERSION, 0)


def _trailer(
    count: int, replid: bytes = REPLID.encode(), offset: int = 0, tag: int = 0xFF
) -> bytes:
    return struct.pack("<BQ40sq", tag, count, replid, offset)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        # A record claiming 4 GB of key: refused before anything is allocated.
        (struct.pack("<BIIq", 1, 2**32 - 1, 0, 0) + b"abc", "longer than the file"),
        (struct.pack("<BIIq", 1, 0, 2**32 - 1, 0), "longer than the file"),
        (struct.pack("<BIIq", 7, 0, 0, 0), "unknown record type 7"),
        (struct.pack("<BIIq", 1, 0, 0, -5), "negative expiry"),
        (b"\x01\x00\x00", "cut short"),
        (struct.pack("<BQ", 2, 2**63), "longer than the file"),
        (struct.pack("<BQ", 2, 5) + b"*1\r\n$", "bad stream section"),
        (struct.pack("<BQ", 2, 14) + b"*1\r\n$4\r\nPING\r\n", "unknown stream command"),
        (struct.pack("<BQ", 2, 14) + b"*1\r\n$9\r\nPING\r\n", "bad stream section"),
        (b"\x02\x00", "cut short"),
    ],
)
def test_hostile_records_with_a_valid_checksum(body: bytes, reason: str) -> None:
    data = with_crc(_header() + body + _trailer(0 if body[0] == 2 else 1))
    with pytest.raises(SnapshotError, match=reason):
        sf.decode(data)


def test_hostile_header_and_trailer() -> None:
    with pytest.raises(SnapshotError, match="replication id"):
        sf.decode(with_crc(_header() + _trailer(0, replid=b"Z" * 40)))
    with pytest.raises(SnapshotError, match="replication id or offset"):
        sf.decode(with_crc(_header() + _trailer(0, offset=-1)))
    with pytest.raises(SnapshotError, match="count mismatch"):
        sf.decode(with_crc(_header() + _trailer(10**12)))
    with pytest.raises(SnapshotError, match="end marker"):
        sf.decode(with_crc(_header() + _trailer(0, tag=0x01)))


def test_the_stream_section_is_replayed_over_the_records() -> None:
    """Records collected during a walk, then the stream from its start: the state at the end."""
    from storenode.replication import FLUSH_EFFECT, del_effect, put_effect

    walk = [(b"a", b"1", 0), (b"b", b"2", 0), (b"c", b"3", 0)]
    stream = put_effect(b"a", b"new", 7) + del_effect(b"b") + put_effect(b"d", b"4", 0)
    snap = sf.decode(sf.encode_bytes(Snapshot(REPLID, 5, 0, walk), stream))
    assert sorted(snap.records) == [(b"a", b"new", 7), (b"c", b"3", 0), (b"d", b"4", 0)]
    flushed = sf.decode(sf.encode_bytes(Snapshot(REPLID, 5, 0, walk), FLUSH_EFFECT + stream))
    assert sorted(flushed.records) == [(b"a", b"new", 7), (b"d", b"4", 0)]
    data = sf.encode_bytes(Snapshot(REPLID, 5, 0, walk), stream)
    for n in range(len(data)):  # truncations inside the stream section too
        with pytest.raises(SnapshotError):
            sf.decode(data[:n])


def test_save_points() -> None:
    assert sf.parse_save_points("3600 1 300 100") == ((3600, 1), (300, 100))
    assert sf.parse_save_points("60") == ((60, 1),)
    for off in ("", "0", "off", "  "):
        assert sf.parse_save_points(off) == ()
    for bad in ("60 1 30", "abc 1", "-1 1", "0 5", "1.5 1"):
        with pytest.raises(ValueError, match="Invalid save parameters"):
            sf.parse_save_points(bad)
    assert sf.save_due(((60, 1),), 61, 1) and not sf.save_due(((60, 1),), 59, 5)
    assert not sf.save_due(((60, 1),), 61, 0) and not sf.save_due((), 10**9, 10**9)


def test_restore_as_primary_keeps_the_history_as_replid2() -> None:
    node = Node(NodeConfig())
    restore(node, sf.decode(sample()))
    assert node.repl.replid2 == REPLID and node.repl.second_offset == 12345
    assert node.repl.replid != REPLID and node.repl.offset == 12345
    assert node.repl.backlog is not None and node.repl.backlog.covers(12345)
    assert len(node.keyspace) == 3  # "ttl" and the 5 ms one: the latter expired long ago
    assert node.persistence.load_expired == 1


def test_restore_as_managed_or_replica_keeps_the_replid_and_waits_for_a_role() -> None:
    for config in (NodeConfig(managed=True), NodeConfig(replicaof="127.0.0.1:1")):
        node = Node(config)
        restore(node, sf.decode(sample()))
        assert (node.repl.replid, node.repl.offset) == (REPLID, 12345)
        assert node.roles.role is not Role.PRIMARY and not node.roles.writable
