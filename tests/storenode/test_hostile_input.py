"""Random and hostile byte streams against a real node: it never crashes, keeps serving others,
and its memory stays bounded."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.procs import Proc, running

# Fragments that steer random streams into the parser's interesting corners.
_FRAGMENTS = st.sampled_from(
    [b"*", b"$", b"\r\n", b"\n", b"-1", b"0", b"3", b"99999999999", b"SET", b"GET", b"k", b"\x00",
     b"*2\r\n", b"$3\r\n", b"PING", b'"', b"'", b"\\x4", b" ", b"GET / HTTP/1.1", b"host:"]
)  # fmt: skip
_STREAMS = st.lists(st.one_of(_FRAGMENTS, st.binary(max_size=64)), max_size=40).map(b"".join)


@pytest.fixture(scope="module")
def node() -> Iterator[Proc]:
    with running(["node", "--port", "0", "--maxmemory", "32mb"]) as proc:
        yield proc


@pytest.fixture(scope="module")
def watcher(node: Proc) -> Iterator[redis.Redis]:
    client = redis.Redis(host=node.host, port=node.port, socket_timeout=5)
    yield client
    client.close()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(stream=_STREAMS)
def test_random_streams_never_break_the_node(
    node: Proc, watcher: redis.Redis, stream: bytes
) -> None:
    with socket.create_connection((node.host, node.port), timeout=5) as s:
        s.sendall(stream)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(2)
        try:
            while s.recv(65536):
                pass
        except (TimeoutError, ConnectionResetError):
            pass
    assert watcher.ping()


def test_memory_bounded_after_hostile_streams(node: Proc, watcher: redis.Redis) -> None:
    """Many clients each declaring huge lengths and sending little: RSS stays small."""
    before = int(watcher.info("memory")["used_memory_rss"])
    socks = []
    try:
        for i in range(50):
            s = socket.create_connection((node.host, node.port), timeout=5)
            s.sendall(b"*3\r\n$3\r\nSET\r\n$2\r\nk%d\r\n$400000000\r\n" % (i % 10) + b"x" * 1000)
            socks.append(s)
        deadline = time.monotonic() + 10
        while watcher.info("clients")["connected_clients"] < 51 and time.monotonic() < deadline:
            time.sleep(0.05)  # the node accepts them in its own time
        assert watcher.info("clients")["connected_clients"] >= 51
        after = int(watcher.info("memory")["used_memory_rss"])
        assert after - before < 32 * 1024 * 1024
    finally:
        for s in socks:
            s.close()
