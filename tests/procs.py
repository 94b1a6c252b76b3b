"""Start real shardgate / redis processes for integration tests, and always stop them."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import redis

ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


@attrs.define
class Proc:
    popen: subprocess.Popen[str]
    host: str
    port: int
    output: list[str]

    @property
    def pid(self) -> int:
        return self.popen.pid


def wait_until(check: Callable[[], object], timeout: float, what: str) -> float:
    """Poll ``check`` until truthy; return how long it took. A Redis or socket error counts as
    "not yet" (the process may be restarting); the last one is named if time runs out."""
    start = time.monotonic()
    last: object = None
    while time.monotonic() - start < timeout:
        try:
            if last := check():
                return time.monotonic() - start
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _drain(stream: object, sink: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        sink.append(line)


@contextlib.contextmanager
def running(args: list[str], *, timeout: float = 15.0) -> Iterator[Proc]:
    """Run ``python -m shardgate ARGS`` until it prints 'listening on HOST:PORT'."""
    cmd = [sys.executable, "-m", "shardgate", *args]
    popen = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    try:
        deadline = time.monotonic() + timeout
        assert popen.stdout is not None
        host, port = "", 0
        while time.monotonic() < deadline:
            line = popen.stdout.readline()
            if not line:
                break
            output.append(line)
            m = _LISTENING.search(line)
            if m and "metrics" not in line:
                host, port = m.group(1), int(m.group(2))
                break
        if not port:
            popen.kill()
            rest = popen.stdout.read()
            raise RuntimeError(f"{' '.join(cmd)} did not start:\n{''.join(output)}{rest}")
        threading.Thread(target=_drain, args=(popen.stdout, output), daemon=True).start()
        yield Proc(popen, host, port, output)
    finally:
        stop(popen)


def stop(popen: subprocess.Popen[str]) -> None:
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGCONT)
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(5)


@contextlib.contextmanager
def redis_server(*extra: str) -> Iterator[Proc]:
    """A stock redis-server on a free port, no persistence."""
    exe = shutil.which("redis-server")
    if exe is None:
        import pytest

        pytest.skip("redis-server is not installed (CI installs Debian's redis-server)")
    port = free_port()
    popen = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--daemonize", "no", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.02)
        yield Proc(popen, "127.0.0.1", port, [])
    finally:
        stop(popen)
