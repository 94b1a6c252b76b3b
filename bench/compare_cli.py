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
OPTIONAL = {"py-spy": ".venv/bin/pip install 'shardgate[bench]' (make lab installs it)"}


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
            "them) through proxy0; (n) one shardgate node. First the RSS of each with 1,000 idle "
            "clients; then redis-benchmark runs: SET/GET at -P 1 and -P 16, MGET of 10 keys, "
            "SET/GET with 500 clients and with 1 client; runs alternate between endpoints, "
            "medians of --rounds, CPU us/request from /proc; then bytes per key. Prints ratios to "
            "(b) and (a) and rewrites the `compare` section of --write FILE (nothing else in it). "
            "Needs redis-server, redis-tools and nutcracker from Debian; installs nothing."
        ),
    )
    p.add_argument("--quick", action="store_true", help="1 round, runs / 10, 100k keys")
    p.add_argument("--rounds", type=int, default=None, help="rounds per mode (default 3)")
    p.add_argument(
        "--only", default="", help="endpoints to run, e.g. a,b,c,l (default all: a,b,c,d,e,l,n)"
    )
    p.add_argument("--no-memory", action="store_true", help="skip the bytes-per-key part")
    p.add_argument("--profile", action="store_true", help="py-spy the proxy (c) at -P 16")
    p.add_argument(
        "--idle-clients",
        type=int,
        default=None,
        help="idle connections for the RSS part (default 1000; 0 skips it)",
    )
    p.add_argument("--write", metavar="FILE", help="replace the compare section of FILE")
    p.add_argument("--dir", default=None, help="directory for logs (default: a temp dir)")
    p.set_defaults(func=func)


def forwarded_argv(args: argparse.Namespace) -> list[str]:
    argv: list[str] = []
    for flag in ("quick", "no_memory", "profile"):
        if getattr(args, flag):
            argv.append("--" + flag.replace("_", "-"))
    for opt in ("rounds", "only", "idle_clients", "write", "dir"):
        value = getattr(args, opt)
        if value is not None and value != "":
            argv += ["--" + opt.replace("_", "-"), str(value)]
    return argv


def main(args: argparse.Namespace, *, which: Callable[[str], str | None] = shutil.which) -> int:
    missing = missing_programs(which)
    if missing:
        print(f"shardgate bench compare: {install_hint(missing)}")
        return 2
    if args.profile:
        from bench.profile import py_spy

        if py_spy() is None:
            print(f"shardgate bench compare: --profile needs py-spy: {OPTIONAL['py-spy']}")
            return 2
    from bench import compare

    return compare.main(forwarded_argv(args))
