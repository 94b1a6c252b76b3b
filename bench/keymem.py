"""Bytes per key: load N keys with 100-byte values into a fresh server and read its memory.

Each server is started fresh (a flushed server keeps its allocator's pages, which would hide
RSS growth), measured before and after with ``INFO memory`` ``used_memory`` and the process's
RSS, and stopped. Keys are ``key:%010d`` (14 bytes), values 100 bytes, loaded by pipelined SETs
over one connection (what ``redis-benchmark -P`` would do, but with every key distinct).
"""

from __future__ import annotations

import socket
import time

import attrs

from bench.procstats import rss_bytes
from shardgate.lab import Lab, ProcessSpec, free_ports, node_argv, resp_request

BATCH = 1000  # commands per pipelined write
VALUE = b"v" * 100
SETTLE_SECONDS = 0.5  # lets the server finish lazy frees and update its counters


@attrs.frozen(slots=True)
class KeyMemory:
    label: str
    keys: int
    used_memory_delta: int  # bytes
    rss_delta: int  # bytes

    @property
    def used_per_key(self) -> float:
        return self.used_memory_delta / self.keys

    @property
    def rss_per_key(self) -> float:
        return self.rss_delta / self.keys


def info_field(info: bytes, field: str) -> int:
    """An integer field of an ``INFO`` reply (``used_memory:12345``)."""
    prefix = field.encode() + b":"
    for line in info.splitlines():
        if line.startswith(prefix):
            return int(line[len(prefix) :].strip())
    raise KeyError(field)


def used_memory(host: str, port: int) -> int:
    info = resp_request(host, port, "INFO", "memory", timeout=10.0)
    if not isinstance(info, bytes):
        raise RuntimeError(f"INFO memory answered {info!r}")
    return info_field(info, "used_memory")


def set_commands(start: int, count: int) -> bytes:
    parts = []
    for i in range(start, start + count):
        key = b"key:%010d" % i
        parts.append(b"*3\r\n$3\r\nSET\r\n$14\r\n%b\r\n$100\r\n%b\r\n" % (key, VALUE))
    return b"".join(parts)


def load(host: str, port: int, keys: int) -> None:
    """SET ``keys`` distinct keys, pipelined ``BATCH`` at a time; every reply must be +OK."""
    with socket.create_connection((host, port), timeout=60) as sock:
        for start in range(0, keys, BATCH):
            count = min(BATCH, keys - start)
            sock.sendall(set_commands(start, count))
            want = b"+OK\r\n" * count
            got = bytearray()
            while len(got) < len(want):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("server closed the connection while loading")
                got += chunk
            if got != want:
                raise RuntimeError(f"unexpected replies while loading: {bytes(got[:200])!r}")


def measure(lab: Lab, *, kind: str, keys: int, label: str) -> KeyMemory:
    """Start a fresh ``kind`` (redis or shardgate) server, load ``keys`` keys, measure, stop."""
    port = free_ports(1)[0]
    name = f"mem-{kind}"
    argv = node_argv(
        "redis" if kind == "redis" else "shardgate",
        host="127.0.0.1",
        port=port,
        metrics_port=None,
        maxmemory="8gb",
        directory=str(lab.directory),
    )
    spec = ProcessSpec(
        name=name,
        role="primary",
        shard=None,
        host="127.0.0.1",
        port=port,
        metrics_port=None,
        argv=argv,
        log=f"{name}.log",
    )
    rec = lab.start(spec, die_with_parent=True)
    try:
        lab.wait_ready([name], timeout=60)
        time.sleep(SETTLE_SECONDS)
        used0, rss0 = used_memory("127.0.0.1", port), rss_bytes(rec.pid)
        load("127.0.0.1", port, keys)
        time.sleep(SETTLE_SECONDS)
        used1, rss1 = used_memory("127.0.0.1", port), rss_bytes(rec.pid)
    finally:
        lab.stop([name], grace=2.0)
    return KeyMemory(label, keys, used1 - used0, rss1 - rss0)
