"""Replication under load: write throughput with 0, 1 and 2 replicas (async and semi-sync),
replication lag, and GET latency on a primary while a large snapshot streams to a new replica.

    python -m bench.replication writes [--requests 200000] [--clients 50] [--pipeline 16]
    python -m bench.replication snapshot [--keys 1000000]

``writes`` runs redis-benchmark SET against a primary for each setup and, meanwhile, a probe
that writes a key on the primary every 10 ms and times until the last replica shows it
(replication lag as a client sees it). ``snapshot`` loads a primary, then times single GETs
(one at a time, like a latency probe) before and while a new replica does its full sync.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from shardgate.resp import encode_command


@dataclass
class Node:
    proc: subprocess.Popen[str]
    port: int


@contextlib.contextmanager
def node(*args: str) -> Iterator[Node]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardgate", "node", "--port", "0", "--maxmemory", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = re.search(r"listening on \S+:(\d+)", line)
            if m:
                yield Node(proc, int(m.group(1)))
                break
        else:
            raise RuntimeError("node did not start")
    finally:
        proc.terminate()
        proc.wait(10)


class Conn:
    """A minimal blocking RESP client: one command, one reply line or bulk."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def call(self, *args: bytes) -> bytes:
        self.sock.sendall(encode_command(list(args)))
        while True:
            nl = self.buf.find(b"\r\n")
            if nl >= 0:
                head = self.buf[:nl]
                if head.startswith(b"$") and head != b"$-1":
                    size = int(head[1:])
                    end = nl + 2 + size + 2
                    if len(self.buf) >= end:
                        body = self.buf[nl + 2 : end - 2]
                        self.buf = self.buf[end:]
                        return body
                else:
                    self.buf = self.buf[nl + 2 :]
                    return head
            self.buf += self.sock.recv(1 << 20)

    def info_int(self, field: str) -> int:
        text = self.call(b"INFO", b"all").decode()
        m = re.search(rf"^{field}:(\d+)", text, re.M)
        return int(m.group(1)) if m else -1


def wait_link(port: int) -> None:
    c = Conn(port)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if "master_link_status:up" in c.call(b"INFO", b"replication").decode():
            return
        time.sleep(0.05)
    raise RuntimeError("replica did not come up")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


def lag_probe(primary: int, replicas: list[int], stop: threading.Event, out: list[float]) -> None:
    w = Conn(primary)
    readers = [Conn(p) for p in replicas]
    i = 0
    while not stop.is_set():
        i += 1
        value = str(i).encode()
        t0 = time.perf_counter()
        w.call(b"SET", b"lag-probe", value)
        for r in readers:
            while r.call(b"GET", b"lag-probe") != value and not stop.is_set():
                pass
        out.append(time.perf_counter() - t0)
        time.sleep(0.01)


def run_writes(args: argparse.Namespace) -> None:
    print("| replicas | mode | SET ops/s | probe write→visible on all replicas p50 / p99 |")
    print("|---|---|---|---|")
    for n in (0, 1, 2):
        for mode in ("async", "semi-sync") if n else ("async",):
            extra = ["--sync-replicas", "1"] if mode == "semi-sync" else []
            with node(*extra) as primary, contextlib.ExitStack() as stack:
                reps = [
                    stack.enter_context(node("--replicaof", f"127.0.0.1:{primary.port}"))
                    for _ in range(n)
                ]
                for r in reps:
                    wait_link(r.port)
                lags: list[float] = []
                stop = threading.Event()
                probe = threading.Thread(
                    target=lag_probe, args=(primary.port, [r.port for r in reps], stop, lags)
                )
                if reps:
                    probe.start()
                out = subprocess.run(
                    ["redis-benchmark", "-p", str(primary.port), "-t", "set", "-n", str(args.requests),
                     "-c", str(args.clients), "-P", str(args.pipeline), "-d", "100", "-r", "100000", "--csv"],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                stop.set()
                if reps:
                    probe.join()
                rps = float(out.stdout.strip().splitlines()[-1].split(",")[1].strip('"'))
                lag = (
                    f"{percentile(lags, 50) * 1e3:.2f} ms / {percentile(lags, 99) * 1e3:.2f} ms ({len(lags)} probes)"
                    if lags
                    else "—"
                )
                print(f"| {n} | {mode} | {rps:,.0f} | {lag} |", flush=True)


def run_snapshot(args: argparse.Namespace) -> None:
    with node() as primary:
        loader = socket.create_connection(("127.0.0.1", primary.port))
        batch = 10_000
        for start in range(0, args.keys, batch):
            payload = b"".join(
                encode_command([b"SET", b"key:%d" % i, b"v" * 100])
                for i in range(start, start + batch)
            )
            loader.sendall(payload)
            got = 0
            while got < batch:
                got += loader.recv(1 << 20).count(b"\r\n")
        probe = Conn(primary.port)

        def sample(seconds: float) -> list[float]:
            lat: list[float] = []
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                probe.call(b"GET", b"key:%d" % (len(lat) % args.keys))
                lat.append(time.perf_counter() - t0)
            return lat

        before = sample(2.0)
        with node("--replicaof", f"127.0.0.1:{primary.port}") as replica:
            t0 = time.perf_counter()
            synced = threading.Event()

            def watch() -> None:
                wait_link(replica.port)
                synced.set()

            watcher = threading.Thread(target=watch)
            watcher.start()
            during: list[float] = []
            while not synced.is_set():
                during += sample(0.05)
            took = time.perf_counter() - t0
            watcher.join()
            keys = int(Conn(replica.port).call(b"DBSIZE")[1:])
        for label, lat in (("before", before), ("during full sync", during)):
            print(
                f"{label:>17}: GETs={len(lat)} p50={percentile(lat, 50) * 1e6:.0f}us "
                f"p99={percentile(lat, 99) * 1e6:.0f}us p99.9={percentile(lat, 99.9) * 1e6:.0f}us "
                f"max={max(lat) * 1e6:.0f}us mean={statistics.mean(lat) * 1e6:.0f}us"
            )
        print(f"full sync of {args.keys} keys took {took:.1f}s; replica has {keys} keys")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="what", required=True)
    w = sub.add_parser("writes", help="write ops/s and lag with 0, 1, 2 replicas")
    w.add_argument("--requests", type=int, default=200_000)
    w.add_argument("--clients", type=int, default=50)
    w.add_argument("--pipeline", type=int, default=16)
    s = sub.add_parser("snapshot", help="GET latency on a primary during a full sync")
    s.add_argument("--keys", type=int, default=1_000_000)
    args = ap.parse_args(argv)
    if args.what == "writes":
        run_writes(args)
    else:
        run_snapshot(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
