"""Real processes the fault scenarios start, crash, freeze and restart.

A ``Service`` is one ``python -m shardgate ...`` (or ``python -m shardgate.faultproxy``) process,
optionally inside a network namespace. It waits for the process's ``listening on HOST:PORT``
line; a restart reuses the port the OS gave the first start, as a restarted server on a real
host would. Every process runs in its own session so signals reach its whole group, and
``stop`` (SIGCONT, SIGTERM, then SIGKILL) runs in ``finally`` blocks so nothing outlives a test.

``Services`` also watches its processes for the issue's "every process survives its peers'
faults; memory stays bounded": a thread samples every running process's RSS every
``RSS_EVERY`` seconds, and ``check_survivors()`` — called at the end of each heavy scenario —
fails if a process the test did not kill or stop has exited, or if one grew past a bound.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import redis
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

from shardgate import faultproxy
from tests.faults.netns import Host

ROOT = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"(?<!metrics )listening on (\S+):(\d+)")
_CONTROL = re.compile(r"control on (\S+):(\d+)")
START_TIMEOUT = 20.0  # seconds; a trio process starts in ~0.5 s, 2 busy cores are slower
# RSS sampling period: reading /proc/PID/statm of ~15 processes takes well under a millisecond.
RSS_EVERY = 0.1
# A process of the fault scenarios starts at 25-35 MiB and the floods peak at ~60 MiB
# (docs/faults.md, scenario 12); 256 MiB is the bound scenario 12 asserted for the proxy.
MAX_RSS_MIB = 256


def _drain(stream: object, sink: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        sink.append(line)


class Service:
    """One long-running process: start, kill -9, SIGSTOP/SIGCONT, restart on the same port."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        host: Host | None = None,
        port: int = 0,
        module: str = "shardgate",
        listen_args: bool = True,
    ) -> None:
        self.name = name
        self.listen_args = listen_args  # False: the address is in its config file (sentinels)
        self.argv = list(argv)  # without --port: the port is ours to choose
        self.host = host
        self.module = module
        self.port = port
        self.address_host = host.address if host is not None else "127.0.0.1"
        self.popen: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self.control: tuple[str, int] | None = None
        self.paused = False
        self.ended_by_test = False  # killed or stopped on purpose: not a casualty
        self.peak_rss = 0  # bytes, the highest RSS sampled (all incarnations)

    def command(self) -> list[str]:
        argv = [sys.executable, "-m", self.module, *self.argv]
        if not self.listen_args:
            pass
        elif self.module == "shardgate":
            argv += ["--host", self.address_host, "--port", str(self.port)]
        else:  # the fault proxy
            argv += ["--listen", f"{self.address_host}:{self.port}"]
        return self.host.command(argv) if self.host is not None else argv

    def start(self) -> Service:
        assert self.popen is None or self.popen.poll() is not None, f"{self.name} is running"
        self.popen = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.paused = False
        self.ended_by_test = False
        assert self.popen.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        seen: list[str] = []
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if not line:
                break
            seen.append(line)
            if m := _CONTROL.search(line):
                self.control = (m.group(1), int(m.group(2)))
            if m := _LISTENING.search(line):
                self.port = int(m.group(2))
                break
        else:
            line = ""
        self.output.extend(seen)
        if not self.port or not line:
            self.kill()
            raise RuntimeError(f"{self.name} did not start: {self.command()}\n{''.join(seen)}")
        threading.Thread(target=_drain, args=(self.popen.stdout, self.output), daemon=True).start()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def address(self) -> str:
        return f"{self.address_host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, signum: int) -> None:
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)

    def kill(self) -> None:
        """kill -9: no goodbye, sockets reset by the kernel."""
        if self.popen is not None and self.popen.poll() is None:
            self.ended_by_test = True
            self.signal(signal.SIGKILL)
            self.popen.wait(10)
        self.paused = False

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.paused = False

    def restart(self) -> Service:
        self.kill()
        return self.start()

    def stop(self) -> None:
        popen = self.popen
        if popen is None:
            return
        if popen.poll() is None:
            self.ended_by_test = True
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                popen.wait(5)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                popen.wait(5)
        self.paused = False

    def rss_bytes(self) -> int:
        fields = Path(f"/proc/{self.pid}/statm").read_text().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used (from /proc)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def client(self, *, timeout: float = 5.0) -> redis.Redis:
        # no silent retries: the workload records each attempt's outcome exactly, and a retried
        # INCR could be applied twice
        return redis.Redis(
            host=self.address_host,
            port=self.port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )

    def send_control(self, line: str) -> str:
        """One command to a fault proxy's control port (see ``shardgate/faultproxy.py``)."""
        assert self.control is not None, f"{self.name} has no control port"
        reply = faultproxy.send_control(self.control, line)
        if not reply.startswith("OK"):
            raise RuntimeError(f"{self.name}: {line!r} -> {reply!r}")
        return reply


class Services:
    """Every process of one scenario; all stopped on exit, whatever happened."""

    def __init__(self) -> None:
        self.all: list[Service] = []
        self._done = threading.Event()
        self._sampler: threading.Thread | None = None

    def add(self, service: Service) -> Service:
        self.all.append(service)
        if self._sampler is None:
            self._sampler = threading.Thread(target=self._sample_rss, daemon=True)
            self._sampler.start()
        return service.start()

    def _sample_rss(self) -> None:
        while not self._done.wait(RSS_EVERY):
            for service in list(self.all):
                if service.running:
                    with contextlib.suppress(OSError, AssertionError):
                        service.peak_rss = max(service.peak_rss, service.rss_bytes())

    def casualties(self) -> list[Service]:
        """Processes that exited although the test neither killed nor stopped them."""
        return [
            s for s in self.all if s.popen is not None and not s.running and not s.ended_by_test
        ]

    def check_survivors(self, *, max_rss_mib: float = MAX_RSS_MIB) -> str:
        """Assert every process the test did not end is alive and none grew past
        ``max_rss_mib``; return a line for the scenario's report."""
        dead = self.casualties()
        assert not dead, "died during the scenario: " + "; ".join(
            f"{s.name} (exit {s.popen.returncode if s.popen else '?'}): {''.join(s.output[-15:])}"
            for s in dead
        )
        for service in self.all:  # one last sample
            if service.running:
                with contextlib.suppress(OSError):
                    service.peak_rss = max(service.peak_rss, service.rss_bytes())
        mib = {s.name: s.peak_rss / 2**20 for s in self.all}
        fat = {name: round(m, 1) for name, m in mib.items() if m > max_rss_mib}
        assert not fat, f"peak RSS over {max_rss_mib} MiB: {fat}"
        alive = sum(1 for s in self.all if s.running)
        ended = sum(1 for s in self.all if s.ended_by_test)
        top = max(mib, key=lambda n: mib[n], default="-")
        return (
            f"processes: {alive} of {len(self.all)} alive, {ended} ended by the test, none died; "
            f"peak RSS {min(mib.values(), default=0):.0f}-{mib.get(top, 0):.0f} MiB ({top})"
        )

    def stop_all(self) -> None:
        self._done.set()
        for service in reversed(self.all):
            with contextlib.suppress(Exception):
                service.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {s.name}\n{''.join(s.output[-30:])}" for s in self.all)


@contextlib.contextmanager
def services() -> Iterator[Services]:
    group = Services()
    try:
        yield group
    finally:
        group.stop_all()


def fault_proxy(name: str, target: str, *, host: Host | None = None) -> Service:
    """A fault proxy process forwarding to ``target`` (HOST:PORT), listening beside it."""
    return Service(name, ["--target", target], host=host, module="shardgate.faultproxy")


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking scenario body in a thread; the caller's ``fail_after`` is its deadline.

    On the deadline the test fails at once and the fixtures kill every process, which ends
    whatever the abandoned thread was waiting on.
    """
    return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)
