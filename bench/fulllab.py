"""The full lab as a ``bench compare`` endpoint: ``shardgate lab up`` (3 shards x primary +
replica, 3 sentinels, 2 proxies following them), measured through proxy0.

It is driven through the ``shardgate lab`` CLI in its own directory, so it starts and stops
exactly as a user's lab does; ``lab down`` runs on the way out whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.targets import Endpoint

KEY = "l"
LABEL = "full lab: proxy → 3 x (shardgate primary + replica), 3 sentinels"
PROCESS = "lab proxy0"
BASE_PORT = 27000  # clear of bench.targets' OS-assigned ports and of `make lab`'s 7000


def _lab(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "shardgate", "lab", *args, "--dir", str(directory)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)


@contextlib.contextmanager
def full_lab(
    directory: Path, *, base_port: int = BASE_PORT, echo: Callable[[str], None] = print
) -> Iterator[Endpoint]:
    """The running lab's proxy0 as an endpoint (marked unavailable if the lab cannot start)."""
    directory.mkdir(parents=True, exist_ok=True)
    up = _lab(directory, "up", "--base-port", str(base_port))
    try:
        if up.returncode != 0:
            why = (up.stderr or up.stdout).strip().splitlines()
            echo(f"bench: the full lab did not start:\n{up.stdout}{up.stderr}")
            yield Endpoint(
                KEY, LABEL, PROCESS, unavailable=f"lab up failed: {why[-1] if why else ''}"
            )
            return
        status = json.loads(_lab(directory, "status", "--json").stdout)
        proxy = next(p for p in status if p["name"] == "proxy0")
        yield Endpoint(KEY, LABEL, PROCESS, proxy["host"], proxy["port"], proxy["pid"])
    finally:
        _lab(directory, "down")
