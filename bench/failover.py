"""``bench failover``: kill a primary under a steady write load, again and again; measure the
write blackout through every path and the acknowledged writes lost (``bench.failover_stats``).

How it works
- A system is brought up on this machine: the shardgate lab (``shardgate lab up``: shards of a
  primary and replicas, 3 sentinels, 2 proxies following them) or Redis Sentinel (a primary
  and a replica ``redis-server``, 3 ``redis-server --sentinel``), both with down-after 1000 ms.
- One writer thread per (path, shard) SETs unique keys one at a time on a raw socket (1 s
  timeout). A path is a proxy (the key carries a hash tag that lands in the shard), or a
  Sentinel client: ask the sentinels for the shard's primary (``SENTINEL
  get-master-addr-by-name``) on every (re)connect, as redis-py's ``Sentinel`` does.
- Each kill: 2 s of steady writes, SIGKILL the shard's primary, wait for every path's first
  acknowledged write sent after the kill, restart the killed process (it rejoins as a replica),
  let it settle, then read back every key the shard acknowledged during the cycle from the new
  primary: the missing ones are lost writes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.failover_stats import Write

Address = tuple[str, int]
OP_TIMEOUT = 1.0  # seconds a writer waits for one reply before it reconnects
WRITE_RATE = 500.0  # SETs per second per writer (one writer per path and shard)
RETRY_PAUSE = 0.005  # seconds between a failed write and the next attempt
VALUE = b"v" * 100


class FailoverError(RuntimeError):
    pass


def command(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class LineReader:
    """Just enough RESP for the replies a writer sees: simple, error, integer, bulk, arrays."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def reply(self) -> object:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b"-"):
            return line
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed")
                self.buf += data
            value, self.buf = self.buf[:n], self.buf[n + 2 :]
            return value
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise ConnectionError(f"unexpected reply {line[:40]!r}")


def ask(addr: Address, *args: bytes, timeout: float = OP_TIMEOUT) -> object:
    with socket.create_connection(addr, timeout=timeout) as sock:
        sock.sendall(command(*args))
        return LineReader(sock).reply()


def sentinel_primary(sentinels: list[Address], name: str) -> Address:
    for s in sentinels:
        try:
            reply = ask(s, b"SENTINEL", b"get-master-addr-by-name", name.encode(), timeout=0.5)
        except OSError:
            continue
        if isinstance(reply, list) and len(reply) == 2:
            return (str(reply[0], "ascii"), int(reply[1]))
    raise FailoverError(f"no sentinel knows the primary of {name}")


class Writer(threading.Thread):
    """SETs unique keys one at a time through ``resolve()``'s address; records every write."""

    def __init__(
        self,
        path: str,
        resolve: Callable[[], Address],
        keys: Iterator[bytes],
        *,
        wait: bool,
        rate: float = WRITE_RATE,
    ) -> None:
        super().__init__(name=f"writer {path}", daemon=True)
        self.path = path
        self._resolve = resolve
        self._keys = keys
        self._wait = wait  # Redis's semi-sync stand-in: WAIT 1 after each SET
        self._interval = 1.0 / rate  # a steady load, not a flood: the machine stays responsive
        self.writes: list[Write] = []
        self.stop = threading.Event()

    def run(self) -> None:
        sock: socket.socket | None = None
        reader: LineReader | None = None
        next_at = time.monotonic()
        while not self.stop.is_set():
            key = next(self._keys)
            sent = time.monotonic()
            if sent < next_at:
                time.sleep(next_at - sent)
                sent = time.monotonic()
            next_at = max(next_at + self._interval, sent - 1.0)
            try:
                if sock is None:
                    sock = socket.create_connection(self._resolve(), timeout=OP_TIMEOUT)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    reader = LineReader(sock)
                assert reader is not None
                req = command(b"SET", key, VALUE)
                if self._wait:
                    req += command(b"WAIT", b"1", b"200")
                sock.sendall(req)
                ok = reader.reply() == b"+OK"
                if self._wait:
                    replicas = reader.reply()
                    ok = ok and isinstance(replicas, int) and replicas >= 1
                self.writes.append(Write(key, sent, time.monotonic() if ok else None))
                if not ok:
                    time.sleep(RETRY_PAUSE)
            except (OSError, ConnectionError, FailoverError, ValueError):
                self.writes.append(Write(key, sent, None))
                if sock is not None:
                    sock.close()
                sock, reader = None, None
                time.sleep(RETRY_PAUSE)
        if sock is not None:
            sock.close()


def existing(addr: Address, keys: list[bytes], *, batch: int = 500) -> set[bytes]:
    """The keys that exist on ``addr`` (pipelined EXISTS)."""
    found: set[bytes] = set()
    with socket.create_connection(addr, timeout=5.0) as sock:
        reader = LineReader(sock)
        for i in range(0, len(keys), batch):
            chunk = keys[i : i + batch]
            sock.sendall(b"".join(command(b"EXISTS", k) for k in chunk))
            for k in chunk:
                if reader.reply() == 1:
                    found.add(k)
    return found


def wait_for(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, ConnectionError, FailoverError):
            pass
        time.sleep(0.1)
    raise FailoverError(f"timed out after {timeout:g} s waiting for {what}")


def is_primary(addr: Address) -> bool:
    reply = ask(addr, b"ROLE")
    return isinstance(reply, list) and reply[0] == b"master"


def replica_synced(primary: Address, *, want: int = 1, max_lag: int = 8 << 20) -> bool:
    """``primary`` is a primary and ``want`` replicas have acknowledged an offset within
    ``max_lag`` bytes of it (ROLE's replica offsets: a replica still in its full sync is 0)."""
    reply = ask(primary, b"ROLE")
    if not (isinstance(reply, list) and reply[0] == b"master" and isinstance(reply[1], int)):
        return False
    offset = reply[1]
    replicas = reply[2] if len(reply) > 2 and isinstance(reply[2], list) else []
    synced = 0
    for r in replicas:
        acked = int(r[2]) if isinstance(r, list) else -1
        # offset 0 on a replica: still in its full sync, unless the primary has nothing either
        if (acked > 0 or offset == 0) and 0 <= offset - acked <= max_lag:
            synced += 1
    return synced >= want


# --- Redis Sentinel, started by hand ------------------------------------------------------------

SENTINEL_CONF = """port {port}
bind 127.0.0.1
daemonize no
sentinel monitor {name} 127.0.0.1 {primary} 2
sentinel down-after-milliseconds {name} 1000
sentinel failover-timeout {name} 10000
sentinel parallel-syncs {name} 1
"""


class RedisSentinelSystem:
    """A primary and ``replicas`` replica redis-servers (ports base..), 3 redis-server
    --sentinel (base+10..)."""

    name = "mymaster"

    def __init__(self, directory: Path, base_port: int, *, replicas: int = 1) -> None:
        self.dir = directory
        self.replicas = replicas
        self.ports = {f"redis{i}": base_port + i for i in range(1 + replicas)}
        self.sentinel_ports = [base_port + 10 + i for i in range(3)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.argv: dict[str, list[str]] = {}

    @property
    def sentinels(self) -> list[Address]:
        return [("127.0.0.1", p) for p in self.sentinel_ports]

    def up(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        p0 = self.ports["redis0"]
        for name, port in self.ports.items():
            # A directory each: a replica writes the snapshot of its full sync to dump.rdb, and
            # start() deletes it, so a killed server restarts empty like a shardgate node.
            (self.dir / name).mkdir(exist_ok=True)
            argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            argv += ["--appendonly", "no", "--dir", str(self.dir / name)]
            if name != "redis0":
                argv += ["--replicaof", "127.0.0.1", str(p0)]
            self.argv[name] = argv
        for i, port in enumerate(self.sentinel_ports):
            conf = self.dir / f"sentinel{i}.conf"
            conf.write_text(SENTINEL_CONF.format(port=port, name=self.name, primary=p0))
            self.argv[f"sentinel{i}"] = ["redis-server", str(conf), "--sentinel"]
        for name in self.argv:
            self.start(name)
        wait_for(
            lambda: replica_synced(("127.0.0.1", p0), want=self.replicas),
            timeout=30,
            what="the replicas",
        )
        wait_for(self._sentinels_agree, timeout=20, what="the sentinels to see each other")

    def _sentinels_agree(self) -> bool:
        for s in self.sentinels:
            reply = ask(s, b"SENTINEL", b"master", self.name.encode())
            fields = dict(zip(reply[::2], reply[1::2])) if isinstance(reply, list) else {}
            if int(fields.get(b"num-other-sentinels", b"0")) < 2:
                return False
        return True

    def start(self, name: str) -> None:
        (self.dir / name / "dump.rdb").unlink(missing_ok=True)
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.procs[name] = subprocess.Popen(
            self.argv[name], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        port = self.ports.get(name) or self.sentinel_ports[int(name[-1])]
        wait_for(lambda: ask(("127.0.0.1", port), b"PING") == b"+PONG", timeout=10, what=name)

    def primary(self, shard: str) -> tuple[str, Address]:
        addr = sentinel_primary(self.sentinels, self.name)
        name = next(n for n, p in self.ports.items() if p == addr[1])
        return name, addr

    def kill(self, name: str) -> float:
        """SIGKILL; returns the monotonic time of the signal."""
        proc = self.procs[name]
        at = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return at

    def down(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
