"""``python -m proxy …``: the ``shardgate proxy`` sub-command without loading the other roles."""

from __future__ import annotations

import argparse
import sys

from proxy.cli import register


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proxy")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["proxy", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
