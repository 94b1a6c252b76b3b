"""``python -m tests.faults.flood PORT CLIENTS COUNT KEY``: pipelined GETs from their own process.

Each of CLIENTS connections writes COUNT GETs of KEY at once and reads every reply. Prints one
JSON line: reply counts by message, and per connection when the first and the last reply came
(seconds after its pipeline was written). A separate process, so the measurement is the
proxy's and not the test process's (whose threads hold the GIL).
"""

from __future__ import annotations

import collections
import json
import re
import sys

import hiredis
import trio


def _kind(text: str) -> str:
    """``ERR backend 10.0.0.1:7001 connection lost: 12 consecutive timeouts`` -> the part
    after the address, numbers blanked, so replies group by what happened."""
    return re.sub(r"\d+", "N", re.sub(r"^.*?\S+:\d+ ", "", text))


async def one(port: int, key: bytes, count: int, out: list[tuple[float, float]],
              kinds: collections.Counter[str]) -> None:  # fmt: skip
    reader = hiredis.Reader()
    seen: collections.Counter[str] = collections.Counter()  # raw error texts, classified at the end
    got, first = 0, 0.0
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(hiredis.pack_command((b"GET", key)) * count)  # type: ignore[arg-type]
        start = trio.current_time()
        while got < count:
            data = await stream.receive_some(65536)
            if not data:
                raise SystemExit(f"the proxy closed a pipelining client after {got} replies")
            first = first or trio.current_time() - start
            reader.feed(data)
            # Cheap per reply (a few distinct texts, counted raw), so this process keeps up
            # with the proxy and the times below are the proxy's, not this parser's.
            while (item := reader.gets()) is not False:
                got += 1
                seen[str(item) if isinstance(item, hiredis.ReplyError) else ""] += 1
        out.append((first, trio.current_time() - start))
    for text, n in seen.items():
        kinds["reply" if not text else _kind(text)] += n


async def main(port: int, clients: int, count: int, key: bytes) -> None:
    times: list[tuple[float, float]] = []
    kinds: collections.Counter[str] = collections.Counter()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(one, port, key, count, times, kinds)
    print(
        json.dumps({"kinds": kinds, "first": [t[0] for t in times], "last": [t[1] for t in times]})
    )


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode())
