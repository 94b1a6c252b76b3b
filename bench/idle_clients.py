"""Memory of a server or proxy holding many idle client connections (``bench compare``).

How it works
- RSS of the process under test (summed over its process group, so proxy workers count) is read
  from ``/proc/PID/status`` with no client connected.
- N TCP connections are opened one after another; each sends ``PING`` and waits for ``+PONG``,
  so the server has accepted it and set up whatever per-client state it keeps (buffers, parser,
  reply queue), then stays open and idle.
- After a short settle the RSS is read again; the growth divided by N is the cost of one idle
  client. The connections are then closed, and the next endpoint waits for the last one to be
  noticed.

Measured on fresh processes, before any load, so no buffers grown by earlier runs hide the
growth. The sums and the table are pure (``IdleMemory``, ``render_idle``).
"""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from collections.abc import Callable, Iterator, Sequence

import attrs

from bench.markdown import table
from bench.procstats import rss_bytes
from shardgate.lab import group_members

IDLE_CLIENTS = 1000  # issue 7: "proxy RSS with 1,000 idle clients"
SETTLE_SECONDS = 1.0  # lets the server finish allocating for the last connections
CLOSE_SECONDS = 1.0  # lets the server notice the closes before the next endpoint is measured
PING = b"*1\r\n$4\r\nPING\r\n"
PONG = b"+PONG\r\n"
FD_HEADROOM = 200  # our own files, the lab's pipes and redis-benchmark's sockets besides


class IdleError(Exception):
    """A connection could not be opened or did not answer PING with +PONG."""


@attrs.frozen(slots=True)
class IdleMemory:
    """RSS of one endpoint's process group without clients and with ``connections`` idle ones."""

    endpoint: str  # a, b, c, ...
    label: str
    connections: int
    rss_before: int  # bytes
    rss_after: int  # bytes

    @property
    def growth(self) -> int:
        return self.rss_after - self.rss_before

    @property
    def kib_per_connection(self) -> float:
        return self.growth / 1024 / self.connections


def group_rss(pgid: int, *, read: Callable[[int], int] = rss_bytes) -> int:
    """RSS of every live process of a process group, in bytes (a proxy and its workers)."""
    pids = [m.pid for m in group_members(pgid)] or [pgid]
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):  # a worker that just exited
            total += read(pid)
    return total


def ping_reply_ok(reply: bytes) -> bool:
    """Whether ``reply`` is exactly one ``+PONG`` (a complete reply, nothing after it)."""
    return reply == PONG


def _ping(sock: socket.socket) -> None:
    sock.sendall(PING)
    reply = b""
    while len(reply) < len(PONG):
        chunk = sock.recv(len(PONG) - len(reply))
        if not chunk:
            raise IdleError(f"connection closed after PING (got {reply!r})")
        reply += chunk
        if not PONG.startswith(reply):
            break
    if not ping_reply_ok(reply):
        raise IdleError(f"PING answered {reply!r}, not +PONG")


@contextlib.contextmanager
def idle_connections(
    host: str, port: int, count: int, *, timeout: float = 10.0
) -> Iterator[list[socket.socket]]:
    """``count`` open connections that each did one PING; all closed on the way out."""
    socks: list[socket.socket] = []
    try:
        for i in range(count):
            try:
                sock = socket.create_connection((host, port), timeout=timeout)
            except OSError as exc:
                raise IdleError(f"connection {i + 1} of {count} failed: {exc}") from None
            socks.append(sock)
            try:
                _ping(sock)
            except OSError as exc:
                raise IdleError(f"connection {i + 1} of {count}: {exc}") from None
            except IdleError as exc:
                raise IdleError(f"connection {i + 1} of {count}: {exc}") from None
        yield socks
    finally:
        for sock in socks:
            sock.close()


def measure(
    key: str,
    label: str,
    *,
    host: str,
    port: int,
    pgid: int,
    count: int = IDLE_CLIENTS,
    settle: float = SETTLE_SECONDS,
) -> IdleMemory:
    before = group_rss(pgid)
    with idle_connections(host, port, count):
        time.sleep(settle)
        after = group_rss(pgid)
    time.sleep(CLOSE_SECONDS)
    return IdleMemory(key, label, count, before, after)


def fd_limit_needed(count: int) -> int:
    return count + FD_HEADROOM


def raise_open_files_limit(count: int) -> tuple[int, int]:
    """Raise our soft RLIMIT_NOFILE (inherited by the processes we start, so redis-server does
    not lower its maxclients below ``count``) as far as the hard limit allows.

    Returns (soft limit now, what ``count`` idle clients need)."""
    need = fd_limit_needed(count)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft, need


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def render_idle(results: Sequence[IdleMemory], unavailable: dict[str, str]) -> str:
    """One row per endpoint: RSS without clients, with N idle ones, growth, KiB per client."""
    header = ["endpoint", "idle clients", "RSS, none", "RSS, idle clients", "growth", "KiB/client"]
    rows = [
        [
            f"({m.endpoint}) {m.label}",
            f"{m.connections:,}",
            _mib(m.rss_before),
            _mib(m.rss_after),
            _mib(m.growth),
            f"{m.kib_per_connection:.1f}",
        ]
        for m in results
    ]
    rows += [[name, "not measured", "", "", "", why] for name, why in unavailable.items()]
    return table(header, rows)
