"""CPU and memory of the process under test, read from /proc (see proc(5)).

CPU µs per request is the steadiest number when the load generator shares the cores
(shared/performance-notes.md): utime+stime of the process (and of its process group, so proxy
workers count) before and after a run, divided by the requests of that run.
"""

from __future__ import annotations

import os

from shardgate.lab import group_members, read_proc_stat

CLK_TCK = os.sysconf("SC_CLK_TCK")  # clock ticks per second of utime/stime (100 on Linux)


def group_cpu_ticks(pgid: int) -> int:
    """utime+stime of every live process in a process group (a proxy and its workers)."""
    members = group_members(pgid)
    if not members:
        leader = read_proc_stat(pgid)
        return leader.cpu_ticks if leader else 0
    return sum(m.cpu_ticks for m in members)


def cpu_us_per_request(
    ticks_before: int, ticks_after: int, requests: int, *, clk_tck: int = CLK_TCK
) -> float:
    """CPU microseconds the process spent per request between two utime+stime readings."""
    if requests <= 0:
        raise ValueError("requests must be positive")
    if ticks_after < ticks_before:
        raise ValueError("CPU time went backwards: not the same process")
    return (ticks_after - ticks_before) * 1_000_000 / clk_tck / requests


def parse_vm_rss(status_text: str) -> int:
    """Resident set size in bytes from the text of /proc/PID/status."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            if unit.lower() != "kb":
                raise ValueError(f"unexpected VmRSS unit {unit!r}")
            return int(value) * 1024
    raise ValueError("no VmRSS line (process gone or a kernel thread)")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return parse_vm_rss(f.read())
