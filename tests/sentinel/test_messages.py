"""Peer messages: every kind round-trips through msgpack; hostile bytes raise MessageError."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sentinel.messages import (
    MAX_MESSAGE_BYTES,
    DownReport,
    Hello,
    Message,
    MessageError,
    TopologyNews,
    VoteReply,
    VoteRequest,
    decode_message,
    encode_message,
)
from sentinel.records import FailoverRecord
from shardgate.topology import NodeAddress, Topology

A = NodeAddress("127.0.0.1", 26379)


@pytest.mark.parametrize(
    "msg",
    [
        Hello("s1", A, 4, 3),
        TopologyNews(
            "s1", Topology.even([NodeAddress("10.0.0.1", 7001), NodeAddress("::1", 7002)], epoch=3)
        ),
        DownReport("s2", "s0", NodeAddress("127.0.0.1", 7001), 3, True),
        TopologyNews(
            "s1",
            Topology.even([NodeAddress("10.0.0.1", 7001)], epoch=4),
            FailoverRecord(
                4, "s0", "s1", False, "a:1", "b:2", "done", (("odown", 5),), (("s1", "s1"),)
            ),
        ),
        VoteRequest("s1", 5, "s0", 3),
        VoteReply("s2", 5, "s1", 5),
        VoteReply("s2", 5, None, 6),
    ],
)
def test_round_trip(msg: Message) -> None:
    assert decode_message(encode_message(msg)) == msg


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",
        msgpack.packb("hello"),
        msgpack.packb(["nope", 1]),
        msgpack.packb(["hello", "s1", "127.0.0.1:1", 1]),
        msgpack.packb(["hello", "s1", "bad address", 1, 1]),
        msgpack.packb(["hello", "", "127.0.0.1:1", 1, 1]),
        msgpack.packb(["hello", "s1", "127.0.0.1:1", -1, 1]),
        msgpack.packb(["hello", "s1", "127.0.0.1:1", True, 1]),
        msgpack.packb(["vote?", "s1", 2**62, "s0", 1]),  # an epoch nobody could increment
        msgpack.packb(["down", "s1", "s0", "127.0.0.1:1", 1, "yes"]),
        msgpack.packb(["vote", "s1", 1, 5, 1]),
        msgpack.packb(["vote?", "s1", "1", "s0", 1]),
        msgpack.packb(["topology", "s1", {"shards": [{"primary": "x"}]}]),
        msgpack.packb(["topology", 5, {}, None]),
        msgpack.packb(["topology", "s1", Topology.even([NodeAddress("h", 1)]).to_dict(), [1]]),
        b"\x91" + b"\xa5hello" * 2,
    ],
)
def test_malformed_messages_raise(raw: bytes) -> None:
    with pytest.raises(MessageError):
        decode_message(raw)


def test_oversized_messages_are_refused_before_decoding() -> None:
    with pytest.raises(MessageError, match="larger"):
        decode_message(b"\x00" * (MAX_MESSAGE_BYTES + 1))


@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_else(raw: bytes) -> None:
    try:
        decode_message(raw)
    except MessageError:
        pass
