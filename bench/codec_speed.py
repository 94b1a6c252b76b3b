"""How fast does ``RequestParser`` turn a pipelined stream into commands?

Builds a stream of typical commands (alternating ``SET key:NNNNNNNN <value>`` and
``GET key:NNNNNNNN``, as ``redis-benchmark -t set,get -d 100`` sends them), cuts it into chunks
of 16 KB (what one receive returns under load) and times feeding every chunk and draining every
command. ``hiredis.Reader`` parses the same chunks for comparison, and ``--baseline FILE`` times
another version of ``shardgate/resp.py`` too (for before/after numbers, e.g. from
``git show REV:shardgate/resp.py > /tmp/resp_before.py``). Parsers take turns, ``--repeat``
rounds, and the best round counts; the clock is this process's CPU time, so other load on the
machine disturbs the figures less.

    .venv/bin/python -m bench.codec_speed [--commands 1000000] [--value-size 100]
        [--chunk 16384] [--repeat 5] [--baseline /tmp/resp_before.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from typing import Any

import hiredis

from shardgate.resp import RequestParser, encode_command


def build_stream(commands: int, value_size: int) -> bytes:
    value = b"x" * value_size
    parts = []
    for i in range(commands):
        key = b"key:%08d" % i
        if i % 2 == 0:
            parts.append(encode_command([b"SET", key, value]))
        else:
            parts.append(encode_command([b"GET", key]))
    return b"".join(parts)


def chunked(stream: bytes, size: int) -> list[bytes]:
    return [stream[i : i + size] for i in range(0, len(stream), size)]


def time_parser(parser_class: Any, chunks: list[bytes]) -> tuple[float, int]:
    parser = parser_class()
    feed = parser.feed
    next_command = parser.next_command
    count = 0
    start = time.process_time()
    for chunk in chunks:
        feed(chunk)
        while next_command() is not None:
            count += 1
    return time.process_time() - start, count


def time_hiredis(chunks: list[bytes]) -> tuple[float, int]:
    reader = hiredis.Reader()
    feed = reader.feed
    gets = reader.gets
    count = 0
    start = time.process_time()
    for chunk in chunks:
        feed(chunk)
        while gets() is not False:
            count += 1
    return time.process_time() - start, count


def load_parser_class(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("resp_baseline", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RequestParser


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--commands", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=16 * 1024)
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--baseline", help="another shardgate/resp.py to time alongside")
    args = ap.parse_args(argv)

    stream = build_stream(args.commands, args.value_size)
    chunks = chunked(stream, args.chunk)
    print(
        f"{args.commands} commands (SET/GET, {args.value_size}-byte values), "
        f"{len(stream) / 1e6:.1f} MB in {len(chunks)} chunks of {args.chunk} bytes"
    )
    runs: list[tuple[str, Callable[[], tuple[float, int]]]] = [
        ("shardgate RequestParser", lambda: time_parser(RequestParser, chunks))
    ]
    if args.baseline:
        baseline = load_parser_class(args.baseline)
        runs.append((f"baseline {args.baseline}", lambda: time_parser(baseline, chunks)))
    runs.append(("hiredis.Reader", lambda: time_hiredis(chunks)))
    best = dict.fromkeys((name for name, _ in runs), float("inf"))
    for _ in range(args.repeat):
        for name, run in runs:
            elapsed, count = run()
            if count != args.commands:
                raise SystemExit(f"{name}: parsed {count} commands, expected {args.commands}")
            best[name] = min(best[name], elapsed)
    for name, seconds in best.items():
        print(
            f"{name:40s} {seconds * 1e6 / args.commands:6.3f} us/command  "
            f"({args.commands / seconds / 1e6:.2f} M commands/s)"
        )


if __name__ == "__main__":
    main()
