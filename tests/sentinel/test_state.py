"""Persisted state: encoding round trips, corruption is refused, the file write is atomic."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from sentinel.state import (
    MAX_HISTORY,
    FailoverRecord,
    PersistedState,
    StateError,
    Vote,
    decode_state,
    encode_state,
)
from sentinel.state_file import read_state_file, write_state_file
from shardgate.topology import NodeAddress, Shard, SlotRange, Topology

TOPO = Topology(
    7,
    (
        Shard(
            "s0",
            NodeAddress("127.0.0.1", 7001),
            (NodeAddress("::1", 7101),),
            (SlotRange(0, 16383),),
        ),
    ),
)
RECORD = FailoverRecord(
    7,
    "s0",
    "s1",
    False,
    "127.0.0.1:7000",
    "127.0.0.1:7001",
    "done",
    (("odown", 100), ("published", 104)),
    (("s1", "s1"), ("s2", "s1"), ("s3", "")),
    (("127.0.0.1:7001", "rank 1: priority 100, offset 5"),),
)


def full_state() -> PersistedState:
    return PersistedState(
        current_epoch=9,
        vote=Vote(9, "s2", "s0"),
        topology=TOPO,
        sentinels=(("s2", NodeAddress("127.0.0.1", 26380)),),
        history=(RECORD,),
    )


def test_round_trip() -> None:
    state = full_state()
    assert decode_state(encode_state(state)) == state
    assert decode_state(encode_state(PersistedState())) == PersistedState()
    assert RECORD.duration_ms() == 4


def test_history_is_bounded() -> None:
    state = PersistedState()
    for i in range(MAX_HISTORY + 5):
        state = state.with_record(FailoverRecord(i, "s0", "s1", False, "a:1", None, "not-elected"))
    assert len(state.history) == MAX_HISTORY and state.history[0].epoch == 5


@pytest.mark.parametrize(
    "doc",
    [
        b"\xc1garbage",
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"version": 99}),
        msgpack.packb({"version": 1}),
        msgpack.packb({"version": 1, "current_epoch": "9"}),
        msgpack.packb({"version": 1, "current_epoch": 1, "vote": [5, "s1", "s0"]}),
        msgpack.packb({"version": 1, "current_epoch": 1, "vote": ["x"]}),
        msgpack.packb({"version": 1, "current_epoch": 1, "topology": {"shards": []}}),
        msgpack.packb({"version": 1, "current_epoch": 1, "sentinels": [["s2", "nope"]]}),
        msgpack.packb({"version": 1, "current_epoch": 1, "history": [[1, 2]]}),
    ],
)
def test_corrupt_state_is_refused(doc: bytes) -> None:
    with pytest.raises(StateError):
        decode_state(doc)


def test_state_file_write_is_atomic_and_readable(tmp_path: Path) -> None:
    path = tmp_path / "s1.state"
    assert read_state_file(path) is None
    write_state_file(path, encode_state(full_state()))
    write_state_file(path, encode_state(full_state()))  # replaces, leaves no temp file behind
    assert read_state_file(path) == full_state()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s1.state"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_corrupt_state_file_stops_the_sentinel(tmp_path: Path) -> None:
    path = tmp_path / "s1.state"
    path.write_bytes(b"\x00\x01")
    with pytest.raises(StateError, match=r"s1\.state"):
        read_state_file(path)
