"""What one ``shardgate bench`` run asks for, as a validated value, and the pure pieces that
turn it into requests: key choice (uniform or Zipf), value sizes, RESP encoding.

Everything here is deterministic given a seed, so tests can check it on known inputs.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from itertools import accumulate

import attrs

KEY_FORMAT = b"key:%012d"  # redis-benchmark's key shape (``key:__rand_int__``), zero-padded


class SpecError(ValueError):
    """An option value that cannot be run; the message is shown to the user as is."""


@attrs.frozen(slots=True)
class LoadSpec:
    host: str = "127.0.0.1"
    port: int = 6379
    password: str | None = None
    clients: int = 50
    pipeline: int = 1
    get_weight: int = 9
    set_weight: int = 1
    keys: int = 10_000
    zipf_s: float | None = None  # None: uniform
    value_min: int = 100
    value_max: int = 100
    ttl: int | None = None  # seconds, SET ... EX
    duration: float | None = 20.0  # seconds; None when ``requests`` is set
    requests: int | None = None
    warmup: float = 5.0  # seconds of load whose results are thrown away
    mget: int = 1  # keys per read; 1 = GET
    rate: float | None = None  # requests/s over all clients (open loop); None = closed loop
    procs: int = 1
    prefill: bool = True
    seed: int = 1

    def __attrs_post_init__(self) -> None:
        for name in ("clients", "pipeline", "keys", "mget", "procs"):
            if getattr(self, name) < 1:
                raise SpecError(f"--{name} must be at least 1")
        if self.get_weight < 0 or self.set_weight < 0 or self.get_weight + self.set_weight == 0:
            raise SpecError("--ratio needs two non-negative weights, not both 0")
        if not 0 < self.value_min <= self.value_max:
            raise SpecError("--value-size must be positive, and a range low-high")
        if (self.duration is None) == (self.requests is None):
            raise SpecError("give exactly one of --duration and --requests")
        if self.duration is not None and self.duration <= 0:
            raise SpecError("--duration must be positive")
        if self.requests is not None and self.requests < 1:
            raise SpecError("--requests must be at least 1")
        if self.warmup < 0:
            raise SpecError("--warmup must be 0 or more")
        if self.rate is not None and self.rate <= 0:
            raise SpecError("--rate must be positive")
        if self.zipf_s is not None and self.zipf_s <= 0:
            raise SpecError("zipf:S needs S > 0")
        if self.ttl is not None and self.ttl < 1:
            raise SpecError("--ttl must be at least 1 second")
        if self.procs > self.clients:
            raise SpecError("--procs cannot exceed --clients (each process needs a client)")

    @property
    def distribution(self) -> str:
        return "uniform" if self.zipf_s is None else f"zipf:{self.zipf_s:g}"

    @property
    def value_size(self) -> str:
        if self.value_min == self.value_max:
            return str(self.value_min)
        return f"{self.value_min}-{self.value_max}"

    def share(self, index: int) -> LoadSpec:
        """The part of the load process ``index`` of ``procs`` generates."""
        clients = split_evenly(self.clients, self.procs)[index]
        requests = None
        if self.requests is not None:
            requests = split_evenly(self.requests, self.procs)[index]
        rate = None if self.rate is None else self.rate * clients / self.clients
        return attrs.evolve(
            self, clients=clients, requests=requests, rate=rate, procs=1, seed=self.seed + index
        )


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` integers differing by at most one, largest first."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def parse_ratio(text: str) -> tuple[int, int]:
    """``"9:1"`` → (9 GET, 1 SET)."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise SpecError(f"--ratio {text!r}: expected GET:SET weights such as 9:1 or 0:1")
    return int(parts[0]), int(parts[1])


def parse_value_size(text: str) -> tuple[int, int]:
    """``"100"`` → (100, 100); ``"64-512"`` → (64, 512)."""
    low, sep, high = text.partition("-")
    try:
        a = int(low)
        b = int(high) if sep else a
    except ValueError:
        raise SpecError(f"--value-size {text!r}: expected BYTES or LOW-HIGH") from None
    if not 0 < a <= b:
        raise SpecError(f"--value-size {text!r}: sizes must be positive and LOW <= HIGH")
    return a, b


def parse_distribution(text: str) -> float | None:
    """``"uniform"`` → None; ``"zipf:0.99"`` → 0.99."""
    if text == "uniform":
        return None
    kind, _, s = text.partition(":")
    if kind != "zipf":
        raise SpecError(f"--distribution {text!r}: expected uniform or zipf:S (e.g. zipf:0.99)")
    try:
        value = float(s) if s else 0.99
    except ValueError:
        raise SpecError(f"--distribution {text!r}: S must be a number") from None
    if value <= 0:
        raise SpecError("--distribution zipf:S needs S > 0")
    return value


class KeyChooser:
    """Key indices 0..n-1, uniform or Zipf(s) (rank 0 is the hottest key)."""

    def __init__(self, n: int, zipf_s: float | None, rng: random.Random) -> None:
        self._n = n
        self._rng = rng
        self._cdf: list[float] | None = None
        if zipf_s is not None:
            self._cdf = list(accumulate(1.0 / (rank**zipf_s) for rank in range(1, n + 1)))

    def next(self) -> int:
        if self._cdf is None:
            return int(self._rng.random() * self._n)
        cdf = self._cdf
        return min(bisect.bisect_left(cdf, self._rng.random() * cdf[-1]), self._n - 1)


def key_name(index: int) -> bytes:
    return KEY_FORMAT % index


def encode_command(args: Sequence[bytes]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class RequestMaker:
    """Encoded requests for one client: GET/MGET or SET by the ratio's weights.

    ``next()`` returns (request bytes, is_read, keys read)."""

    def __init__(self, spec: LoadSpec, rng: random.Random) -> None:
        self._spec = spec
        self._rng = rng
        self._keys = KeyChooser(spec.keys, spec.zipf_s, rng)
        total = spec.get_weight + spec.set_weight
        self._read_share = spec.get_weight / total
        # One buffer of value bytes; a value of size n is a slice of it.
        self._payload = bytes(rng.randrange(97, 123) for _ in range(spec.value_max))
        self._ttl = b"%d" % spec.ttl if spec.ttl is not None else None

    def next(self) -> tuple[bytes, bool, int]:
        spec = self._spec
        if self._rng.random() < self._read_share:
            if spec.mget == 1:
                k = key_name(self._keys.next())
                return b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(k), k), True, 1
            names = [key_name(self._keys.next()) for _ in range(spec.mget)]
            return encode_command([b"MGET", *names]), True, spec.mget
        return self.set_request(self._keys.next()), False, 0

    def set_request(self, index: int) -> bytes:
        spec = self._spec
        size = spec.value_min
        if spec.value_max != spec.value_min:
            size = self._rng.randint(spec.value_min, spec.value_max)
        args = [b"SET", key_name(index), self._payload[:size]]
        if self._ttl is not None:
            args += [b"EX", self._ttl]
        return encode_command(args)
