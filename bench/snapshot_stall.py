"""How long does a snapshot stall the node? Load N keys into a node with ``--dir``, then time a
stream of PINGs (one at a time, so each measures the node's responsiveness) while BGSAVE runs,
time a blocking SAVE, and time a restart that loads the file.

    python -m bench.snapshot_stall [--keys 1000000] [--value-bytes 64] [--rounds 3]

Prints the PING latency distribution before and during BGSAVE (chunked in the event loop, no
fork), how long each BGSAVE took, RSS, the file size, SAVE's (blocking) time and the load time.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.expiry_stall import _read_reply_lines, info_field, percentile, ping_latencies
from shardgate.resp import encode_command


def load(sock: socket.socket, keys: int, value_bytes: int, batch: int = 10_000) -> None:
    """Half the keys with a TTL (an hour), half without."""
    value = b"v" * value_bytes
    for start in range(0, keys, batch):
        n = min(batch, keys - start)
        payload = b"".join(
            encode_command([b"SET", b"key:%d" % i, value, b"EX", b"3600"])
            if i % 2
            else encode_command([b"SET", b"key:%d" % i, value])
            for i in range(start, start + n)
        )
        sock.sendall(payload)
        _read_reply_lines(sock, n)


def start_node(directory: str) -> tuple[subprocess.Popen[str], int, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardgate", "node", "--port", "0", "--maxmemory", "0",
         "--dir", directory, "--save", ""],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.search(r"listening on \S+:(\d+)", line)
        if m:
            return proc, int(m.group(1)), time.perf_counter() - t0
    raise RuntimeError("the node did not start")


def command(sock: socket.socket, *args: bytes) -> bytes:
    sock.sendall(encode_command(list(args)))
    data = b""
    while not data.endswith(b"\r\n"):
        data += sock.recv(4096)
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--value-bytes", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="BGSAVEs in a row")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sg-snapshot-bench-") as directory:
        proc, port, _ = start_node(directory)
        try:
            loader = socket.create_connection(("127.0.0.1", port))
            t0 = time.time()
            load(loader, args.keys, args.value_bytes)
            print(
                f"keys={args.keys} value_bytes={args.value_bytes} loaded_in={time.time() - t0:.1f}s"
            )
            prober = socket.create_connection(("127.0.0.1", port))
            prober.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            before = ping_latencies(prober, 2.0)
            during: list[float] = []
            children: list[float] = []
            slices: list[int] = []
            for _ in range(args.rounds):
                t_bg = time.perf_counter()
                reply = command(loader, b"BGSAVE")
                assert reply.startswith(b"+Background"), reply
                while True:
                    during += ping_latencies(prober, 0.2)
                    if info_field(loader, "rdb_bgsave_in_progress") == 0:
                        break
                children.append(time.perf_counter() - t_bg)
                slices.append(info_field(loader, "shardgate_bgsave_max_slice_usec"))
            rss = info_field(loader, "used_memory_rss")
            size = (Path(directory) / "dump.sg").stat().st_size
            t_save = time.perf_counter()
            assert command(loader, b"SAVE") == b"+OK\r\n"
            save_seconds = time.perf_counter() - t_save
            print(
                f"BGSAVE x{args.rounds}: seconds={[round(c, 2) for c in children]} "
                f"longest_chunk_us={slices} "
                f"rss={rss / 1e6:.0f}MB file={size / 1e6:.1f}MB; SAVE (blocking) {save_seconds:.2f}s"
            )
            for label, lat in (("before BGSAVE", before), ("during BGSAVE", during)):
                print(
                    f"{label:>14}: pings={len(lat)} p50={percentile(lat, 50) * 1e6:.0f}us "
                    f"p99={percentile(lat, 99) * 1e6:.0f}us "
                    f"p99.9={percentile(lat, 99.9) * 1e6:.0f}us max={max(lat) * 1e6:.0f}us"
                )
        finally:
            proc.terminate()
            proc.wait(60)
        proc, port, load_seconds = start_node(directory)
        try:
            with socket.create_connection(("127.0.0.1", port)) as s:
                loaded = info_field(s, "rdb_last_load_keys_loaded")
            print(f"restart: {loaded} keys loaded, listening after {load_seconds:.2f}s")
        finally:
            proc.terminate()
            proc.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
