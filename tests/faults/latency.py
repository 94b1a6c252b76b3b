"""``python -m tests.faults.latency HOST PORT KEY``: one GET timed over and over, in its own process.

Sends ``GET KEY`` on one connection every ``PACE`` seconds until its stdin closes, then prints
one JSON line: ``[[start, took], ...]`` with ``start`` on ``time.monotonic()`` (CLOCK_MONOTONIC,
the same clock in every process of the machine, so the test can cut the samples by its own phase
times) and ``took`` in seconds; an error reply or a timeout is ``took = -1``. A separate process,
so a healthy shard's latency is the cluster's and not the test process's (whose writer threads
hold the GIL).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hiredis

PACE = 0.002  # 500 requests/s: ~1 000 samples in a 2 s phase, so p99 is the 10th worst
TIMEOUT = 5.0


def run(host: str, port: int, key: bytes) -> list[tuple[float, float]]:
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = hiredis.pack_command((b"GET", key))
    samples: list[tuple[float, float]] = []
    while not done.is_set():
        reader = hiredis.Reader()
        start = time.monotonic()
        try:
            sock.sendall(request)  # type: ignore[arg-type]
            while (reply := reader.gets()) is False:
                data = sock.recv(65536)
                if not data:
                    raise OSError("connection closed")
                reader.feed(data)
            took = -1.0 if isinstance(reply, hiredis.ReplyError) else time.monotonic() - start
        except OSError:
            took = -1.0
            sock.close()
            sock = socket.create_connection((host, port), timeout=TIMEOUT)
        samples.append((start, took))
        done.wait(PACE)
    return samples


@contextmanager
def latency_sampler(host: str, port: int, key: str) -> Iterator[list[tuple[float, float]]]:
    """Run the sampler process for the ``with`` block; the list is filled when it ends."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.latency", host, str(port), key],
        cwd=Path(__file__).resolve().parents[2],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    samples: list[tuple[float, float]] = []
    try:
        yield samples
    finally:
        out, _ = proc.communicate("", timeout=TIMEOUT + 5)
        if out.strip():
            samples.extend((float(a), float(b)) for a, b in json.loads(out))


def between(samples: list[tuple[float, float]], start: float, end: float) -> list[float]:
    """The successful requests' latencies that started in [start, end)."""
    return [took for at, took in samples if start <= at < end and took >= 0]


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], int(sys.argv[2]), sys.argv[3].encode())))
