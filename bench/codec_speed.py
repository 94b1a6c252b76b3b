"""How fast does ``RequestParser`` turn a pipelined stream into commands?

Builds a stream of typical commands (alternating ``SET key:NNNNNNNN <100-byte value>`` and
``GET key:NNNNNNNN``, as ``redis-benchmark -t set,get -d 100`` sends them), cuts it into chunks of
16 KB (what one ``receive_some`` returns under load) and times feeding every chunk and draining
every command. ``hiredis.Reader`` parses the same chunks for comparison. Prints microseconds per
command, the best of ``--repeat`` runs.

    .venv/bin/python -m bench.codec_speed [--commands 1000000] [--chunk 16384] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

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


def time_shardgate(chunks: list[bytes]) -> tuple[float, int]:
    parser = RequestParser()
    feed = parser.feed
    next_command = parser.next_command
    count = 0
    start = time.perf_counter()
    for chunk in chunks:
        feed(chunk)
        while next_command() is not None:
            count += 1
    return time.perf_counter() - start, count


def time_hiredis(chunks: list[bytes]) -> tuple[float, int]:
    reader = hiredis.Reader()
    feed = reader.feed
    gets = reader.gets
    count = 0
    start = time.perf_counter()
    for chunk in chunks:
        feed(chunk)
        while gets() is not False:
            count += 1
    return time.perf_counter() - start, count


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--commands", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=16 * 1024)
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    stream = build_stream(args.commands, args.value_size)
    chunks = chunked(stream, args.chunk)
    print(
        f"{args.commands} commands (SET/GET, {args.value_size}-byte values), "
        f"{len(stream) / 1e6:.1f} MB in {len(chunks)} chunks of {args.chunk} bytes"
    )
    for name, run in (
        ("shardgate RequestParser", time_shardgate),
        ("hiredis.Reader", time_hiredis),
    ):
        best = float("inf")
        for _ in range(args.repeat):
            elapsed, count = run(chunks)
            if count != args.commands:
                raise SystemExit(f"{name}: parsed {count} commands, expected {args.commands}")
            best = min(best, elapsed)
        print(
            f"{name:24s} {best * 1e6 / args.commands:6.3f} us/command  "
            f"({args.commands / best / 1e6:.2f} M commands/s)"
        )


if __name__ == "__main__":
    main()
