"""The ``shardgate`` console script: one entry, a sub-command per role.

Each role module exposes ``register(subparsers)``, which adds its sub-command and sets
``func`` (a callable taking the parsed namespace and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Module paths, not imports: a role's dependencies load only when it runs.
_ROLE_MODULES = (
    "storenode.cli",
    "proxy.cli",
    "sentinel.cli",
    "shardgate.lab_cli",
    "shardgate.slot_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardgate",
        description="Sharded Redis-compatible cache: store nodes, proxies, sentinels and a lab.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for path in _ROLE_MODULES:
        try:
            module = importlib.import_module(path)
        except ModuleNotFoundError as exc:
            if exc.name == path:  # that role is not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
