"""``shardgate bench compare``: the side-by-side run of ``bench.compare``, behind the CLI.

It installs nothing: it checks for the programs it runs and names the Debian packages that
provide the missing ones, then hands over to ``bench.compare`` (endpoints in ``bench.targets``).
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable, Mapping
from typing import Any

# program → Debian package that ships it (bookworm / trixie)
DEBIAN_PACKAGES = {
    "redis-server": "redis-server",
    "redis-benchmark": "redis-tools",
    "redis-cli": "redis-tools",
    "nutcracker": "nutcracker",
}
OPTIONAL = {"py-spy": "pip install py-spy (only for --profile)"}


def missing_programs(which: Callable[[str], str | None] = shutil.which) -> dict[str, str]:
    """Program → Debian package, for every required program not on PATH."""
    return {prog: pkg for prog, pkg in DEBIAN_PACKAGES.items() if which(prog) is None}


def install_hint(missing: Mapping[str, str]) -> str:
    packages = sorted(set(missing.values()))
    return (
        f"missing: {', '.join(sorted(missing))}. Install them with:\n"
        f"  sudo apt-get install {' '.join(packages)}\n"
        "(bench compare installs nothing itself)"
    )


def register(sub: Any, *, func: Callable[[argparse.Namespace], int]) -> None:
    p = sub.add_parser(
        "compare",
        help="redis-server vs nutcracker vs shardgate side by side; writes docs/performance.md",
        description=(
            "Starts, on this machine and at once: (a) redis-server; (b) nutcracker -> 2 "
            "redis-servers; (c) shardgate proxy -> the same redis-servers; (d) shardgate proxy -> "
            "2 shardgate nodes; (e) proxy --workers 2 -> the redis-servers; (l) the full lab "
            "(`shardgate lab up`: 3 shards x primary + replica, 3 sentinels, proxies following "
            "them) through proxy0; (n) one shardgate node. Measures each with redis-benchmark (SET/GET, -P 1, -P 16, 1 client), runs "
            "alternating, medians of --rounds, CPU us/request from /proc, bytes per key; prints "
            "ratios to (b) and (a) and rewrites the `compare` section of --write FILE."
        ),
    )
    p.add_argument("--quick", action="store_true", help="1 round, runs / 10, 100k keys")
    p.add_argument("--rounds", type=int, default=None, help="rounds per mode (default 3)")
    p.add_argument(
        "--only", default="", help="endpoints to run, e.g. a,b,c,l (default all: a,b,c,d,e,l,n)"
    )
    p.add_argument("--no-memory", action="store_true", help="skip the bytes-per-key part")
    p.add_argument("--profile", action="store_true", help="py-spy the proxy (c) at -P 16")
    p.add_argument("--write", metavar="FILE", help="replace the compare section of FILE")
    p.add_argument("--dir", default=None, help="directory for logs (default: a temp dir)")
    p.set_defaults(func=func)


def forwarded_argv(args: argparse.Namespace) -> list[str]:
    argv: list[str] = []
    for flag in ("quick", "no_memory", "profile"):
        if getattr(args, flag):
            argv.append("--" + flag.replace("_", "-"))
    for opt in ("rounds", "only", "write", "dir"):
        value = getattr(args, opt)
        if value:
            argv += ["--" + opt, str(value)]
    return argv


def main(args: argparse.Namespace) -> int:
    missing = missing_programs()
    if missing:
        print(f"shardgate bench compare: {install_hint(missing)}")
        return 2
    from bench import compare

    return compare.main(forwarded_argv(args))
