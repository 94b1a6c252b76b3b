"""Real processes for the proxy's integration tests: redis-servers, shardgate nodes, proxies.

Every process is started on an OS-chosen free port and killed in a ``finally``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.procs import free_port

ROOT = Path(__file__).parents[2]


def wait_ping(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process on port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered PING on port {port}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a proxy with workers forwards it), then SIGKILL if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait(timeout=10)


class Backend:
    """A redis-server or a shardgate node on 127.0.0.1."""

    def __init__(self, kind: str, port: int | None = None) -> None:
        self.kind = kind
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Backend:
        if self.kind == "redis":
            cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
            cmd += ["--save", "", "--appendonly", "no", "--loglevel", "warning"]
        else:
            cmd = [sys.executable, "-m", "shardgate", "node", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_ping(self.port, self.proc)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class Proxy:
    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proxy:
        cmd = [sys.executable, "-m", "proxy", "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        try:
            wait_ping(self.port, self.proc)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def client(self, **kw: object) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=10, **kw)  # type: ignore[arg-type]

    def rss_bytes(self) -> int:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/statm").read_text().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


def node_available() -> bool:
    try:
        import storenode.server  # noqa: F401
    except Exception:
        return False
    return True


BACKEND_KINDS = [
    "redis",
    pytest.param(
        "node",
        marks=pytest.mark.skipif(not node_available(), reason="storenode server not available"),
    ),
]


@contextlib.contextmanager
def backends(kind: str, n: int) -> Iterator[list[Backend]]:
    if kind == "redis" and shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    started: list[Backend] = []
    try:
        for _ in range(n):
            started.append(Backend(kind).start())
        yield started
    finally:
        for b in started:
            b.stop()


@pytest.fixture(scope="module", params=BACKEND_KINDS)
def cluster(request: pytest.FixtureRequest) -> Iterator[tuple[Proxy, list[Backend]]]:
    """Three backends of one kind behind one proxy (``--backends``: slots split evenly)."""
    with backends(request.param, 3) as bs:
        proxy = Proxy("--backends", ",".join(b.address for b in bs))
        try:
            yield proxy.start(), bs
        finally:
            proxy.stop()
