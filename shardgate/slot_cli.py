"""``shardgate slot KEY``: which slot a key hashes to."""

from __future__ import annotations

import argparse

from shardgate.slots import hash_tag, slot_for_key


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("slot", help="print the slot a key hashes to (xxh3_64 mod 16384)")
    p.add_argument("keys", nargs="+", metavar="KEY")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for key in args.keys:
        raw = key.encode("utf-8", "surrogateescape")
        tag = hash_tag(raw)
        extra = f" (hash tag {tag.decode('utf-8', 'replace')!r})" if tag != raw else ""
        print(f"{key}\t{slot_for_key(raw)}{extra}")
    return 0
