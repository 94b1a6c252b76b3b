"""What the lab reads from the machine: /proc, listening ports, RESP probes, log tails."""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path
from typing import Any

import attrs
import hiredis

LOG_TAIL_LINES = 20

# --- /proc ---------------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` the lab and the bench use (see proc(5))."""

    pid: int
    state: str  # R, S, D, T (stopped), Z (zombie), ...
    ppid: int
    pgrp: int
    session: int
    utime: int  # clock ticks, all threads
    stime: int
    start_time: int  # clock ticks after boot: with the pid, identifies one process

    @property
    def cpu_ticks(self) -> int:
        return self.utime + self.stime


def parse_proc_stat(text: str) -> ProcStat:
    """Parse one ``/proc/PID/stat`` line; the command name may hold spaces and parentheses."""
    head, _, rest = text.rpartition(")")
    pid = int(head.split("(", 1)[0])
    f = rest.split()  # f[0] is field 3 (state); field N is f[N - 3]
    return ProcStat(
        pid=pid,
        state=f[0],
        ppid=int(f[1]),
        pgrp=int(f[2]),
        session=int(f[3]),
        utime=int(f[11]),
        stime=int(f[12]),
        start_time=int(f[19]),
    )


def read_proc_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return parse_proc_stat(f.read())
    except (OSError, ValueError, IndexError):
        return None


def group_members(pgrp: int) -> list[ProcStat]:
    """Live processes of a process group (zombies excluded)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = read_proc_stat(int(entry))
            if st is not None and st.pgrp == pgrp and st.state not in "ZX":
                members.append(st)
    return members


# --- talking RESP ------------------------------------------------------------------------------


def resp_request(host: str, port: int, *args: str, timeout: float = 0.5) -> Any:
    """Send one command on a fresh connection and return the decoded reply (errors as
    ``hiredis.ReplyError`` values). Raises ``OSError`` (``TimeoutError``) when there is none."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        b"$%d\r\n%b\r\n" % (len(a.encode()), a.encode()) for a in args
    )
    reader = hiredis.Reader()
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(payload)
        while True:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError("connection closed before a reply")
            reader.feed(data)
            reply = reader.gets()
            if reply is not False:
                return reply


def ping(host: str, port: int, *, timeout: float = 0.5) -> bool:
    try:
        return resp_request(host, port, "PING", timeout=timeout) == b"PONG"
    except (OSError, hiredis.ProtocolError):
        return False


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on (host, port). SO_REUSEADDR, as servers bind, so sockets
    in TIME_WAIT from a previous lab do not count."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the OS hands out as free right now (all held open together, so distinct)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((host, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        data = path.read_bytes()[-16384:]
    except OSError:
        return "(no log)"
    text = data.decode("utf-8", "replace").rstrip("\n")
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"
