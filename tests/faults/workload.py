"""Clients that record every acknowledgement, and the checker that holds the cluster to them.

How it works
- ``Writer`` threads talk to a proxy with redis-py, one connection each, and loop over four
  kinds of write, every one unique so its fate can be checked on its own: ``SET`` of a fresh key
  (``set``), ``INCR`` of one of the writer's counters (``incr``), ``DEL`` of a key the writer set
  before (``del``), and ``SET … PX`` of a fresh key with a short TTL (``expire``). Each outcome is
  recorded with the monotonic time it was acknowledged: ``ok`` (an acknowledgement: the cluster
  promised it), or ``failed`` (an error or a timeout: it may or may not have been applied, so the
  checker never counts it as lost nor as present).
- A write's *durability class* comes from the shard its key hashes to: scenarios run some shards
  semi-synchronous (``--sync-replicas 1``) and some asynchronous, and the checker reports losses
  per class and kind.
- ``Reader`` threads read back keys whose ``DEL`` was acknowledged or whose TTL has passed
  (counted from the acknowledgement, so it is never early) and record every read that still
  returned a value, with how late it was.
- ``WriteProbe`` writes straight to every node of a shard every ``interval`` seconds and records
  which nodes accepted (a ``-TIMEOUT`` from a semi-sync primary counts: the write was applied).
  Two nodes of one shard accepting in overlapping probe rounds is a split brain; the checker
  reports its longest run.
- ``check`` reads everything back from the shards' current primaries after healing and produces a
  ``Report``: acknowledged writes lost, by class and kind; deleted keys that came back; stale reads
  past the documented bound; and the split-brain windows.
"""

from __future__ import annotations

import collections
import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

import attrs
import redis

from shardgate.slots import slot_for_key
from shardgate.topology import Topology

KINDS = ("set", "incr", "del", "expire")
# how often each kind is chosen: deletes rarer than sets, or nearly every key set would be
# deleted again and the checker would have little left to hold the cluster to
WEIGHTS = {"set": 5, "incr": 3, "del": 1, "expire": 1}
TTL_MS = 300  # short enough to expire within a scenario, long enough to be read back first
COUNTERS = 8  # per writer: each INCR lands on one of these
EXPIRY_TOLERANCE_S = 0.01  # the node keeps expiry in wall-clock ms; the client measures monotonic


@attrs.define
class Ack:
    kind: str
    key: bytes
    value: bytes
    at: float  # monotonic time of the acknowledgement


@attrs.define
class WriterLog:
    """What one writer was told."""

    acks: list[Ack] = attrs.Factory(list)
    failed: list[tuple[str, bytes, str]] = attrs.Factory(list)  # kind, key, error
    incr_acked: collections.Counter[bytes] = attrs.Factory(collections.Counter)
    incr_tried: collections.Counter[bytes] = attrs.Factory(collections.Counter)
    deleted: list[tuple[bytes, float]] = attrs.Factory(list)  # key, ack time of its DEL
    expiring: list[tuple[bytes, float]] = attrs.Factory(list)  # key, deadline (ack + TTL)
    del_tried: set[bytes] = attrs.Factory(set)
    latencies: list[float] = attrs.Factory(list)  # seconds per acknowledged write


class Writer(threading.Thread):
    """One client writing unique keys and counters through ``connect()`` until stopped."""

    def __init__(
        self,
        name: str,
        connect: Callable[[], redis.Redis],
        stop: threading.Event,
        *,
        seed: int = 0,
        pace: float = 0.0,
        kinds: tuple[str, ...] = KINDS,
        hash_tag: str | None = None,
    ) -> None:
        super().__init__(name=f"writer-{name}", daemon=True)
        # with a hash tag every key of this writer lands in the tag's slot, so on one shard
        self.ns = f"{{{hash_tag}}}:{name}" if hash_tag else name
        self.tag = name
        self.connect = connect
        self.stop_event = stop
        self.rng = random.Random(seed)
        self.pace = pace  # seconds between writes; 0 = as fast as replies come
        self.kinds = kinds
        self.log = WriterLog()
        self.live: list[bytes] = []  # set keys not deleted yet: DEL candidates

    def run(self) -> None:
        r = self.connect()
        seq = 0
        while not self.stop_event.is_set():
            seq += 1
            kind = self.rng.choices(self.kinds, [WEIGHTS[k] for k in self.kinds])[0]
            if kind == "del" and not self.live:
                kind = "set"
            try:
                self._one(r, kind, seq)
            except redis.RedisError as exc:
                self.log.failed.append((kind, self._last_key, str(exc)[:80]))
                if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
                    time.sleep(0.01)  # a dead backend answers at once: do not spin
            if self.pace:
                time.sleep(self.pace)

    _last_key = b""

    def _one(self, r: redis.Redis, kind: str, seq: int) -> None:
        log = self.log
        start = time.monotonic()
        if kind == "set":
            key, value = f"s:{self.ns}:{seq}".encode(), f"{self.tag}:{seq}".encode()
            self._last_key = key
            r.set(key, value)
            self.live.append(key)
        elif kind == "incr":
            key = f"c:{self.ns}:{self.rng.randrange(COUNTERS)}".encode()
            self._last_key = key
            log.incr_tried[key] += 1
            value = str(r.incr(key)).encode()
            log.incr_acked[key] += 1
        elif kind == "del":
            key = self.live.pop(self.rng.randrange(len(self.live)))
            self._last_key = key
            log.del_tried.add(key)
            value = b""
            r.delete(key)
            log.deleted.append((key, time.monotonic()))
        else:
            key, value = f"t:{self.ns}:{seq}".encode(), b"x"
            self._last_key = key
            r.set(key, value, px=TTL_MS)
            log.expiring.append((key, time.monotonic() + TTL_MS / 1000))
        now = time.monotonic()
        log.acks.append(Ack(kind, key, value, now))
        log.latencies.append(now - start)


@attrs.define
class StaleRead:
    kind: str  # "del" or "expire"
    key: bytes
    late_s: float  # how long after the documented moment the value was still returned


class Reader(threading.Thread):
    """Reads back keys the writers deleted or let expire; records every stale value."""

    def __init__(
        self, connect: Callable[[], redis.Redis], writers: list[Writer], stop: threading.Event
    ) -> None:
        super().__init__(name="reader", daemon=True)
        self.connect = connect
        self.writers = writers
        self.stop_event = stop
        self.stale: list[StaleRead] = []
        self.reads = 0
        self.rng = random.Random(1)

    def run(self) -> None:
        r = self.connect()
        while not self.stop_event.is_set():
            writer = self.rng.choice(self.writers)
            now = time.monotonic()
            candidates: list[tuple[str, bytes, float]] = []
            if writer.log.deleted:
                key, at = writer.log.deleted[
                    -1 - self.rng.randrange(min(20, len(writer.log.deleted)))
                ]
                candidates.append(("del", key, at))
            expired = [e for e in writer.log.expiring[-200:] if e[1] + EXPIRY_TOLERANCE_S < now]
            if expired:
                key, deadline = self.rng.choice(expired[-20:])
                candidates.append(("expire", key, deadline + EXPIRY_TOLERANCE_S))
            for kind, key, since in candidates:
                try:
                    value = r.get(key)
                except redis.RedisError:
                    time.sleep(0.01)
                    continue
                self.reads += 1
                if value is not None:
                    self.stale.append(StaleRead(kind, key, time.monotonic() - since))
            if not candidates:
                time.sleep(0.005)


@attrs.define
class Probe:
    at: float
    node: str
    accepted: bool | None  # None: no answer (down, paused, partitioned)
    detail: str


class WriteProbe(threading.Thread):
    """Tries a write on every node of every shard each round; who accepted is who is primary."""

    def __init__(
        self,
        shards: Mapping[str, Iterable[tuple[str, Callable[[], redis.Redis]]]],
        stop: threading.Event,
        *,
        interval: float = 0.1,
    ) -> None:
        super().__init__(name="probe", daemon=True)
        self.shards = {s: list(nodes) for s, nodes in shards.items()}
        self.stop_event = stop
        self.interval = interval
        self.rounds: list[tuple[float, str, dict[str, bool | None]]] = []
        self._clients: dict[str, redis.Redis] = {}

    def probe(self, name: str, connect: Callable[[], redis.Redis]) -> bool | None:
        r = self._clients.get(name) or self._clients.setdefault(name, connect())
        try:
            r.set(f"sg:probe:{name}", str(time.time()))
            return True
        except redis.ResponseError as exc:
            # a semi-sync primary that timed out waiting for replicas still applied the write
            return str(exc).startswith("TIMEOUT")
        except redis.RedisError:
            self._clients.pop(name, None)
            return None

    def run(self) -> None:
        while not self.stop_event.is_set():
            for shard, nodes in self.shards.items():
                at = time.monotonic()
                self.rounds.append((at, shard, {n: self.probe(n, c) for n, c in nodes}))
            self.stop_event.wait(self.interval)

    def split_brain(self) -> dict[str, float]:
        """Per shard, the longest run of rounds in which two or more nodes accepted writes."""
        longest: dict[str, float] = {}
        started: dict[str, float | None] = {}
        for at, shard, seen in self.rounds:
            if sum(1 for v in seen.values() if v) < 2:
                started[shard] = None
                continue
            begin = started.get(shard)
            if begin is None:
                begin = started[shard] = at
            # a run of k rounds spans (k - 1) intervals plus the round itself
            longest[shard] = max(longest.get(shard, 0.0), at - begin + self.interval)
        return longest


@attrs.define
class Report:
    acked: collections.Counter[tuple[str, str]]  # (class, kind) -> acknowledged
    lost: collections.Counter[tuple[str, str]]  # (class, kind) -> acknowledged but gone
    failed: int  # writes that got an error (may or may not have been applied)
    resurrected: int  # keys whose DEL was acknowledged and that exist again
    stale_reads: list[StaleRead]
    reads: int
    split_brain: dict[str, float]
    examples: list[str]
    lost_set_acked_at: list[float]  # when each lost SET had been acknowledged (monotonic)

    def lost_in(self, durability: str) -> int:
        return sum(n for (c, _), n in self.lost.items() if c == durability)

    def acked_in(self, durability: str) -> int:
        return sum(n for (c, _), n in self.acked.items() if c == durability)

    def summary(self) -> str:
        parts = []
        for durability in sorted({c for c, _ in self.acked}):
            kinds = ", ".join(
                f"{k} {self.lost[(durability, k)]}/{self.acked[(durability, k)]}"
                for k in KINDS
                if self.acked[(durability, k)]
            )
            parts.append(f"{durability}: lost {self.lost_in(durability)} of "
                         f"{self.acked_in(durability)} acked ({kinds})")  # fmt: skip
        worst = max((s.late_s for s in self.stale_reads), default=0.0)
        parts.append(f"failed writes {self.failed}; deletes undone {self.resurrected}; "
                     f"stale reads {len(self.stale_reads)}/{self.reads} (worst {worst * 1000:.0f} ms late)")  # fmt: skip
        if self.split_brain:
            sb = ", ".join(f"{s} {t:.2f}s" for s, t in self.split_brain.items())
            parts.append(f"two nodes took writes: {sb}")
        return "; ".join(parts)


def check(
    writers: list[Writer],
    topology: Topology,
    primaries: Mapping[str, redis.Redis],
    durability: Mapping[str, str],
    *,
    reader: Reader | None = None,
    probe: WriteProbe | None = None,
) -> Report:
    """Read every acknowledged write back from ``primaries`` (shard name -> client)."""

    def shard_of(key: bytes) -> str:
        return topology.shard_for_slot(slot_for_key(key)).name

    acked: collections.Counter[tuple[str, str]] = collections.Counter()
    lost: collections.Counter[tuple[str, str]] = collections.Counter()
    examples: list[str] = []
    resurrected = 0
    lost_at: list[float] = []
    acked_at: dict[bytes, float] = {}
    wanted: dict[str, list[tuple[str, bytes, bytes | int]]] = collections.defaultdict(list)
    for w in writers:
        log = w.log
        for ack in log.acks:
            if ack.kind == "set" and ack.key not in log.del_tried:
                wanted[shard_of(ack.key)].append(("set", ack.key, ack.value))
                acked_at[ack.key] = ack.at
            elif ack.kind == "del":
                wanted[shard_of(ack.key)].append(("del", ack.key, b""))
            if ack.kind in ("set", "del", "expire"):
                acked[(durability[shard_of(ack.key)], ack.kind)] += 1
        for key, n in log.incr_acked.items():
            wanted[shard_of(key)].append(("incr", key, n))
            acked[(durability[shard_of(key)], "incr")] += n
    for shard, items in wanted.items():
        r = primaries[shard]
        values: list[bytes | None] = []
        for chunk in _chunks(items, 5000):
            pipe = r.pipeline(transaction=False)
            for _, key, _ in chunk:
                pipe.get(key)
            values += pipe.execute()
        for (kind, key, want), have in zip(items, values):
            cls = durability[shard]
            if kind == "set" and have != want:
                lost[(cls, "set")] += 1
                lost_at.append(acked_at[key])
                if len(examples) < 10:
                    examples.append(f"{shard}: SET {key!r} acknowledged, now {have!r}")
            elif kind == "del" and have is not None:
                resurrected += 1
                lost[(cls, "del")] += 1
            elif kind == "incr":
                assert isinstance(want, int)
                missing = max(0, want - int(have or 0))
                lost[(cls, "incr")] += missing
                if missing and len(examples) < 10:
                    examples.append(f"{shard}: {key!r} = {have!r} after {want} acked INCRs")
    return Report(
        acked=acked,
        lost=lost,
        failed=sum(len(w.log.failed) for w in writers),
        resurrected=resurrected,
        stale_reads=list(reader.stale) if reader else [],
        reads=reader.reads if reader else 0,
        split_brain=probe.split_brain() if probe else {},
        examples=examples,
        lost_set_acked_at=sorted(lost_at),
    )


def _chunks(
    items: list[tuple[str, bytes, bytes | int]], n: int
) -> Iterator[list[tuple[str, bytes, bytes | int]]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


@attrs.define
class Workload:
    """Writers, a reader and a probe, started together and stopped together."""

    writers: list[Writer]
    reader: Reader | None
    probe: WriteProbe | None
    stop: threading.Event

    def threads(self) -> list[threading.Thread]:
        extra: list[threading.Thread] = [t for t in (self.reader, self.probe) if t is not None]
        return [*self.writers, *extra]

    def acked(self) -> int:
        return sum(len(w.log.acks) for w in self.writers)


@contextlib.contextmanager
def workload(
    connect: Callable[[], redis.Redis],
    *,
    writers: int = 4,
    pace: float = 0.0,
    probe_nodes: Mapping[str, Iterable[tuple[str, Callable[[], redis.Redis]]]] | None = None,
    read: bool = True,
    kinds: tuple[str, ...] = KINDS,
    name: str = "w",
    hash_tag: str | None = None,
) -> Iterator[Workload]:
    """Run the workload for the body of the ``with``; every thread is joined on exit.

    Writers are named ``NAME0``, ``NAME1``, …; their keys carry the name, so two workloads
    with different names never touch each other's keys.
    """
    stop = threading.Event()
    ws = [
        Writer(
            f"{name}{i}",
            connect,
            stop,
            seed=hash((name, i)),
            pace=pace,
            kinds=kinds,
            hash_tag=hash_tag,
        )
        for i in range(writers)
    ]
    reader = Reader(connect, ws, stop) if read else None
    probe = WriteProbe(probe_nodes, stop) if probe_nodes else None
    load = Workload(ws, reader, probe, stop)
    for t in load.threads():
        t.start()
    try:
        yield load
    finally:
        stop.set()
        for t in load.threads():
            t.join(15)
