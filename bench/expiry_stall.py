"""Does a mass expiry stall commands? Load N keys that all expire at the same moment, then
time a stream of PINGs (one at a time, so each measures the node's responsiveness) while the
active expiry cycle deletes them.

    python -m bench.expiry_stall [--keys 1000000] [--ttl-ms 4000] [--port 0]

Prints the PING latency distribution during the expiry window and how many keys the active
cycle removed (INFO stats expired_keys).
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import time

from shardgate.resp import encode_command


def _read_reply_lines(sock: socket.socket, count: int) -> None:
    """Drain ``count`` single-line replies (+OK)."""
    buf = b""
    seen = 0
    while seen < count:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise RuntimeError("node closed the connection")
        buf += chunk
        seen += buf.count(b"\r\n")
        buf = buf[buf.rfind(b"\r\n") + 2 :]


def load(sock: socket.socket, keys: int, ttl_ms: int, batch: int = 10_000) -> None:
    expire_at = int(time.time() * 1000) + ttl_ms
    at = str(expire_at).encode()
    for start in range(0, keys, batch):
        n = min(batch, keys - start)
        payload = b"".join(
            encode_command([b"SET", b"key:%d" % i, b"v" * 16, b"PXAT", at])
            for i in range(start, start + n)
        )
        sock.sendall(payload)
        _read_reply_lines(sock, n)


def info_field(sock: socket.socket, field: str) -> int:
    sock.sendall(encode_command([b"INFO", b"all"]))
    data = b""
    while not data.endswith(b"\r\n\r\n") or data.count(b"\r\n") < 3:
        data += sock.recv(1 << 16)
        m = re.match(rb"\$(\d+)\r\n", data)
        if m and len(data) >= m.end() + int(m.group(1)) + 2:
            break
    m2 = re.search(rb"%s:(\d+)" % field.encode(), data)
    return int(m2.group(1)) if m2 else -1


def ping_latencies(sock: socket.socket, seconds: float) -> list[float]:
    out: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        sock.sendall(b"PING\r\n")
        got = b""
        while not got.endswith(b"\r\n"):
            got += sock.recv(64)
        out.append(time.perf_counter() - t0)
    return out


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument(
        "--ttl-ms", type=int, default=4000, help="all keys expire this long after loading starts"
    )
    args = ap.parse_args(argv)
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardgate", "node", "--port", "0", "--maxmemory", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = 0
        for line in proc.stdout:
            m = re.search(r"listening on \S+:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        loader = socket.create_connection(("127.0.0.1", port))
        t0 = time.time()
        load(loader, args.keys, args.ttl_ms)
        loaded_in = time.time() - t0
        remaining = args.ttl_ms / 1000 - loaded_in
        if remaining < 0.5:
            print(
                f"loading took {loaded_in:.1f}s, longer than the TTL; raise --ttl-ms",
                file=sys.stderr,
            )
            return 1
        prober = socket.create_connection(("127.0.0.1", port))
        prober.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        before = ping_latencies(prober, max(0.2, remaining - 0.3))
        time.sleep(0.3)
        during = ping_latencies(prober, 5.0)
        expired = info_field(loader, "expired_keys")
        loader.sendall(b"DBSIZE\r\n")
        keys_left = int(loader.recv(64)[1:].split(b"\r\n")[0])
        print(
            f"keys={args.keys} loaded_in={loaded_in:.1f}s expired_keys={expired} db0_keys_left={keys_left}"
        )
        for label, lat in (("before expiry", before), ("during expiry (5 s)", during)):
            print(
                f"{label:>20}: pings={len(lat)} p50={percentile(lat, 50) * 1e6:.0f}us "
                f"p99={percentile(lat, 99) * 1e6:.0f}us p99.9={percentile(lat, 99.9) * 1e6:.0f}us "
                f"max={max(lat) * 1e6:.0f}us"
            )
    finally:
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
