"""The ``shardgate`` console script: one entry, a sub-command per role.

Each role module exposes ``register(subparsers)``, which adds its sub-command and sets
``func`` (a callable taking the parsed namespace and returning an exit code).

Only the module of the sub-command being run is imported (``shardgate node`` never loads the
lab, the bench or the proxy); ``shardgate --help`` loads them all to list them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Sub-command → module path: a role's dependencies load only when it runs.
_ROLE_MODULES = {
    "node": "storenode.cli",
    "proxy": "proxy.cli",
    "sentinel": "sentinel.cli",
    "lab": "shardgate.lab_cli",
    "slot": "shardgate.slot_cli",
    "bench": "bench.cli",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardgate",
        description="Sharded Redis-compatible cache: store nodes, proxies, sentinels and a lab.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, path in _ROLE_MODULES.items():
        if only is not None and name != only:
            continue
        try:
            module = importlib.import_module(path)
        except ModuleNotFoundError as exc:
            if exc.name == path:  # that role is not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = argv[0] if argv and argv[0] in _ROLE_MODULES else None
    parser = build_parser(chosen)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
