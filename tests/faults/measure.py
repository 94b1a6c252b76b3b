"""Small measuring helpers shared by the scenarios: timed requests and percentiles."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import attrs
import redis


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def key_in(slots: tuple[int, int], prefix: str = "k") -> str:
    """A key whose slot is in [lo, hi] (the shard that owns that range)."""
    from shardgate.slots import slot_for_key

    lo, hi = slots
    i = 0
    while not lo <= slot_for_key(f"{prefix}{i}".encode()) <= hi:
        i += 1
    return f"{prefix}{i}"


@attrs.define
class Sample:
    at: float
    took: float
    result: object  # the reply, or the redis error


class Sampler(threading.Thread):
    """Times one request over and over on its own connection until stopped."""

    def __init__(
        self,
        connect: Callable[[], redis.Redis],
        request: Callable[[redis.Redis], object],
        *,
        pace: float = 0.0,
    ) -> None:
        super().__init__(daemon=True)
        self.pace = pace  # seconds between requests; > 0 leaves the GIL to the test's trio loop
        self.connect = connect
        self.request = request
        self.stop_event = threading.Event()
        self.samples: list[Sample] = []

    def run(self) -> None:
        r = self.connect()
        while not self.stop_event.is_set():
            start = time.monotonic()
            try:
                result: object = self.request(r)
            except redis.RedisError as exc:
                result = exc
            self.samples.append(Sample(start, time.monotonic() - start, result))
            if self.pace:
                self.stop_event.wait(self.pace)

    def ok(self) -> list[float]:
        return [s.took for s in self.samples if not isinstance(s.result, Exception)]

    def errors(self) -> list[Sample]:
        return [s for s in self.samples if isinstance(s.result, Exception)]


@contextlib.contextmanager
def sampling(
    connect: Callable[[], redis.Redis],
    request: Callable[[redis.Redis], object],
    *,
    pace: float = 0.0,
) -> Iterator[Sampler]:
    sampler = Sampler(connect, request, pace=pace)
    sampler.start()
    try:
        yield sampler
    finally:
        sampler.stop_event.set()
        sampler.join(15)
