"""The proxy's request reader must agree with RequestParser on every input, fed any way."""

from __future__ import annotations

import random

import pytest

from proxy.requests import FAST_TAIL, RequestReader
from shardgate.resp import ProtocolError, RequestLimits, RequestParser, encode_command

STREAMS = [
    encode_command([b"SET", b"k", b"v"]) + encode_command([b"GET", b"k"]),
    encode_command([b"MSET"] + [b"x%d" % i for i in range(40)]),
    b"PING\r\n"
    + encode_command([b"ECHO", b""])
    + b"SET a 'b c'\r\n"
    + encode_command([b"GET", b"a"]),
    encode_command([b"SET", b"big", b"x" * (FAST_TAIL * 3)]) + encode_command([b"GET", b"big"]),
    encode_command([b"SET", b"huge", b"y" * (2 * 1024 * 1024)]) + encode_command([b"PING"]),
    b"*0\r\n" + encode_command([b"PING"]),
    encode_command([b"PING"]) + b"*2\r\n$3\r\nGET\r\n$x\r\n",
    encode_command([b"PING"]) + b"*2\r\n$3\r\nGET\r\n$1\r\nkXX\r\n",
    encode_command([b"PING"]) + b"*1_0\r\n",
    encode_command([b"PING"]) + b"*1\r\n$04\r\nPING\r\n",
    encode_command([b"PING"]) + b"*1\r\n$+4\r\nPING\r\n",
    b"*2\r\n$3\r\nGET\r\n:5\r\n",
    encode_command([b"GET", b"k"] * 700),
]


def parse_all(
    stream: bytes, chunks: list[int], cls: str, authenticated: bool = True
) -> list[object]:
    out: list[object] = []
    limits = RequestLimits()
    reader = RequestReader(limits, authenticated=authenticated)
    parser = RequestParser(limits, authenticated=authenticated)
    pos = 0
    try:
        for size in [*chunks, len(stream)]:
            data = stream[pos : pos + size]
            pos += size
            if not data:
                continue
            if cls == "reader":
                reader.feed(data)
                while (item := reader.next()) is not None:
                    args, raw = item
                    if raw is not None:
                        assert raw == encode_command(args)
                    out.append(args)
            else:
                parser.feed(data)
                while (cmd := parser.next_command()) is not None:
                    out.append(cmd)
    except ProtocolError as exc:
        out.append(("error", exc.message))
    return out


@pytest.mark.parametrize("stream", STREAMS, ids=range(len(STREAMS)))
def test_reader_matches_request_parser(stream: bytes) -> None:
    whole = parse_all(stream, [], "parser")
    assert parse_all(stream, [], "reader") == whole
    assert parse_all(stream, [1] * min(len(stream), 3000), "reader") == whole
    rng = random.Random(len(stream))
    chunks = [rng.randint(1, 5000) for _ in range(200)]
    assert parse_all(stream, chunks, "reader") == whole


def test_unauthenticated_limits_are_enforced() -> None:
    stream = encode_command([b"AUTH"] + [b"x"] * 20)
    result = parse_all(stream, [], "reader", authenticated=False)
    assert result == [("error", "unauthenticated multibulk length")]
    stream = encode_command([b"AUTH", b"x" * 20000])
    assert parse_all(stream, [], "reader", authenticated=False)[-1][0] == "error"  # type: ignore[index]


def test_raw_bytes_are_the_exact_frame() -> None:
    reader = RequestReader(RequestLimits(), authenticated=True)
    frames = [encode_command([b"SET", b"k%d" % i, b"v"]) for i in range(5)]
    reader.feed(b"".join(frames))
    got = []
    while (item := reader.next()) is not None:
        got.append(item[1])
    assert got == frames
