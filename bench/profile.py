"""A py-spy headline for the proxy under load: where its CPU goes, in one paragraph.

``py-spy record --format raw`` writes collapsed stacks, one line per distinct stack:
``outer (file.py:10);inner (other.py:20) 37``. The headline counts each sample's innermost
frame (self time) per function, and the share of self time spent in trio's own code.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from bench import redis_benchmark
from bench.targets import Endpoint

DURATION = 8  # seconds of sampling
RATE = 250  # samples per second: enough detail, little overhead


def _function(frame: str) -> str:
    """``serve (proxy/server.py:123)`` → ``serve (proxy/server.py)``; paths cut after site-packages."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})" if path else name


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def headline(text: str, *, top: int = 6) -> str:
    stacks = parse_collapsed(text)
    total = sum(n for _, n in stacks)
    if not total:
        return "py-spy collected no samples."
    self_time: Counter[str] = Counter()
    in_trio = 0
    for frames, n in stacks:
        leaf = frames[-1]
        self_time[_function(leaf)] += n
        if "/trio/" in leaf or "(trio/" in leaf:
            in_trio += n
    leaders = ", ".join(f"{fn} {n / total:.0%}" for fn, n in self_time.most_common(top))
    return (
        f"{total:,} samples; self time in trio's own code (run loop, epoll, traps): "
        f"{in_trio / total:.0%}. Top self time: {leaders}."
    )


def py_spy() -> str | None:
    """py-spy on PATH or beside this Python (a venv's bin), or None."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return spy if Path(spy).exists() else None


def profile_endpoint(
    endpoint: Endpoint, directory: Path, *, echo: Callable[[str], None]
) -> str | None:
    """Sample ``endpoint``'s process with py-spy during a -P 16 SET then GET load."""
    spy = py_spy()
    if spy is None or endpoint.pgid is None or endpoint.port is None:
        echo("bench: py-spy not found; no profile (pip install py-spy)")
        return None
    out = directory / f"profile-{endpoint.key}.txt"
    argv = [spy, "record", "--pid", str(endpoint.pgid), "--duration", str(DURATION)]
    argv += ["--rate", str(RATE), "--format", "raw", "--nonblocking", "--output", str(out)]
    spy_proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + DURATION
        while time.monotonic() < deadline and spy_proc.poll() is None:
            for test in ("set", "get"):
                load = redis_benchmark.command(
                    host=endpoint.host or "127.0.0.1",
                    port=endpoint.port,
                    test=test,
                    requests=100_000,
                    pipeline=16,
                )
                subprocess.run(load, capture_output=True, timeout=120, check=False)
        _, err = spy_proc.communicate(timeout=60)
    finally:
        if spy_proc.poll() is None:
            spy_proc.kill()
            spy_proc.wait()
    if not out.exists():
        echo(f"bench: py-spy failed: {err.strip()[:300]}")
        return None
    command = " ".join(["py-spy", *argv[1:]]).replace(str(directory) + "/", "")
    return f"`{command}` on ({endpoint.key}) {endpoint.label} at -P 16: " + headline(
        out.read_text()
    )
