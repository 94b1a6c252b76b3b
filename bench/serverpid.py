"""Which local processes listen on a TCP port (/proc/net/tcp{,6} + /proc/*/fd), and their CPU.

Linux only; a port served by another user's process or another host finds nothing, and the
report then leaves the server's CPU out.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

LISTEN = "0A"  # TCP state in /proc/net/tcp (include/net/tcp_states.h)


def listening_inodes(table_text: str, port: int) -> set[int]:
    """Socket inodes in LISTEN on ``port`` from the text of /proc/net/tcp or tcp6."""
    inodes = set()
    for line in table_text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        local, state, inode = fields[1], fields[3], fields[9]
        if state == LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
            inodes.add(int(inode))
    return inodes


def pids_with_sockets(inodes: set[int], proc: str = "/proc") -> list[int]:
    wanted = {f"socket:[{i}]" for i in inodes}
    found = []
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        fd_dir = f"{proc}/{entry}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") in wanted:
                    found.append(int(entry))
                    break
            except OSError:
                continue
    return sorted(found)


def pids_listening_on(port: int) -> list[int]:
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                inodes |= listening_inodes(f.read(), port)
        except OSError:
            continue
    inodes.discard(0)
    return pids_with_sockets(inodes) if inodes else []


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime+stime of the given processes (fields 14 and 15 of /proc/PID/stat)."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")
