"""Snapshots on disk: load at start, SAVE, BGSAVE (chunked, no fork), save points, shutdown.

How it works
- A node with ``dir`` set keeps one snapshot file, ``dir/dbfilename`` (format in
  ``snapshot_file.py``). It is loaded before the node listens; a bad file stops the start (the
  CLI exits 2). Writes go to ``temp-<pid>.sg`` in the same directory, which is fsynced, renamed
  over the old file and the directory fsynced, so a crash at any moment leaves the old snapshot
  or the new one, never a torn file.
- Consistency: a snapshot holds the data at exactly the replication offset in its trailer.
  SAVE and the shutdown save run synchronously, with no other task in between, so the keyspace
  and ``repl.offset`` are read at one instant.
- BGSAVE does not fork. It walks the keyspace with SCAN, ``CHUNK_KEYS`` at a time, writing the
  records and yielding between chunks (about a millisecond each), exactly as a replica's full
  sync is served (``repl_primary.py``), while a capture sink on the replication stream collects
  every stream byte written meanwhile (writes, expiry and eviction deletes on a primary; applied
  stream commands on a replica). When the walk ends, synchronously, the captured bytes go into
  the file's stream section and the current offset into its trailer. Stream records are states
  (``SG.PUT``/``DEL``/``FLUSHALL``), so walk-then-stream gives exactly the data at that offset
  (the same argument as for a replica's full sync). If the captured bytes do not add up to the
  offset's move (a replica's full sync began meanwhile) or exceed ``MAX_CAPTURE``, the save
  fails and is retried later. fsync and the rename run in a worker thread. The cost, instead of
  Redis's fork and copy-on-write memory: the captured writes held until the walk ends, and a
  background save takes longer than a forked one would.
- A replica in a full sync has taken a fresh random replid and offset 0 first
  (``repl_replica.py``): a snapshot taken mid-sync names no history of any primary, and a
  restart from it does a full sync instead of continuing from a half-loaded keyspace.
- Restoring: the records are applied, ``replid`` and ``offset`` are set to the file's, and the
  backlog is created at that offset so every later write moves the offset (a replica asking to
  continue must never get an empty backlog while writes were made). A node that starts as a
  primary takes a new replid and keeps the file's as ``replid2`` up to its offset, exactly as a
  promotion does: replicas that hold that history continue, and one that saw writes this
  primary lost (it restarted from an older snapshot) has a longer history and gets a full sync.
- Save points are Redis's: save when, for some ``(seconds, changes)`` pair, that many seconds
  passed since the last save and that many changes were made. Changes are counted like Redis's
  ``dirty`` counter, from counters the node keeps anyway (successful write commands, expired and
  evicted keys, stream commands a replica applied), so the hot path pays nothing.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import trio
import trio.lowlevel

from shardgate.commands import COMMANDS
from shardgate.logs import log_event
from shardgate.resp import encode_command
from storenode import snapshot_file
from storenode.roles import Role
from storenode.snapshot_file import Record, Snapshot, SnapshotError

if TYPE_CHECKING:
    from storenode.config import NodeConfig
    from storenode.node import Node

# Redis's serverCron checks save points once a second (hz 10, every 10th call); so do we.
CHECK_SECONDS = 1.0
# Redis retries a failed background save after CONFIG_BGSAVE_RETRY_DELAY seconds.
RETRY_SECONDS = 5.0
# Keys per chunk of a background save, as a replica's full sync (about a millisecond each).
CHUNK_KEYS = 512
# Stream bytes a background save may hold before giving up (Redis's replica output limit).
MAX_CAPTURE = 256 * 1024 * 1024
_CAPTURE_ID = -1  # the capture sink's key in repl.links (client ids are positive)
GETACK = encode_command([b"SG.GETACK"])
_WRITES = frozenset(name for name, spec in COMMANDS.items() if spec.is_write)


class SaveInProgress(Exception):
    """A background save is running (Redis: "Background save already in progress")."""


class Persistence:
    """Where the snapshot lives and how saving went; one per node."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.lastsave = int(time.time())  # Redis: at startup the dataset counts as saved
        self.last_attempt = time.monotonic()
        self.dirty_at_save = 0
        self.saves = 0
        self.last_status_ok = True
        self.last_bgsave_seconds = -1
        self.saved_offset = -1  # offset the newest snapshot file holds (-1: none yet)
        self.loaded_keys = 0
        self.load_expired = 0
        self.replica_changes = 0  # stream commands applied as a replica (part of "dirty")
        self.bg_running = False
        self.bg_started = 0.0
        self.bg_scope: trio.CancelScope | None = None
        self.bg_max_slice_us = 0  # longest chunk of the last background save (event-loop stall)
        self._kick = trio.Event()
        # Set by the CLI: stop the process (SHUTDOWN). None when embedded (tests).
        self.on_shutdown: Callable[[], None] | None = None
        self.final_save_done = False  # SHUTDOWN already saved, or said NOSAVE

    @property
    def enabled(self) -> bool:
        return bool(self.config.dir)

    @property
    def path(self) -> Path:
        return Path(self.config.dir) / self.config.dbfilename


# --- loading ------------------------------------------------------------------------------------


def read_snapshot(config: NodeConfig) -> Snapshot | None:
    """The snapshot to start from, None when there is none; raises SnapshotError."""
    if not config.dir:
        return None
    directory = Path(config.dir)
    if not directory.is_dir():
        raise SnapshotError(f"dir {config.dir!r} is not a directory")
    path = directory / config.dbfilename
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None  # first start: an empty node, as Redis
    except OSError as exc:
        raise SnapshotError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return snapshot_file.decode(data)
    except SnapshotError as exc:
        raise SnapshotError(f"{path}: {exc}") from None


def restore(node: Node, snap: Snapshot) -> None:
    """Apply a decoded snapshot to a fresh node (before it listens)."""
    ks = node.keyspace
    now_ms = time.time_ns() // 1_000_000
    loaded = expired = 0
    for key, value, expire_at in snap.records:
        if expire_at and expire_at < now_ms:
            expired += 1
            continue
        ks.set(key, value, now_ms, expire_at)
        loaded += 1
    repl = node.repl
    repl.replid = snap.replid
    repl.offset = snap.offset
    repl.history = True
    node.ensure_backlog()
    if node.roles.role is Role.PRIMARY:
        # As a promotion does (Node.set_roles): replicas holding this history may continue.
        repl.replid2 = snap.replid
        repl.second_offset = snap.offset
        repl.replid = os.urandom(20).hex()
    p = node.persistence
    p.loaded_keys = loaded
    p.load_expired = expired
    p.saved_offset = snap.offset
    p.dirty_at_save = changes(node)
    log_event("snapshot_loaded", keys=loaded, expired=expired, offset=snap.offset)


# --- saving -------------------------------------------------------------------------------------


def changes(node: Node) -> int:
    """Redis's ``dirty`` counter, summed from counters the node keeps anyway."""
    writes = 0
    for name, c in node.stats.command_calls.items():
        if name in _WRITES:
            writes += c.calls - c.failed
    ks = node.keyspace.stats
    return writes + ks.expired_keys + ks.evicted_keys + node.persistence.replica_changes


def changes_since_save(node: Node) -> int:
    return max(0, changes(node) - node.persistence.dirty_at_save)


def live_records(node: Node, now_ms: int) -> Iterator[Record]:
    ks = node.keyspace
    peek = ks.peek
    for key in ks.iter_keys(now_ms):
        e = peek(key, now_ms)  # live at now_ms (iter_keys said so): a pure read
        if e is not None:
            yield key, bytes(e.value), e.expire_at


def _write_file(node: Node, temp_name: str) -> int:
    """Encode the keyspace at this instant into ``temp_name``, fsync, rename; returns bytes."""
    p = node.persistence
    directory = Path(p.config.dir)
    temp = directory / temp_name
    now_ms = time.time_ns() // 1_000_000
    repl = node.repl
    size = 0
    try:
        with open(temp, "wb") as f:
            for chunk in snapshot_file.encode(
                repl.replid, repl.offset, now_ms, live_records(node, now_ms)
            ):
                f.write(chunk)
                size += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, p.path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    _fsync_dir(directory)
    return size


def save(node: Node) -> None:
    """SAVE: write the snapshot now, blocking. Raises SaveInProgress or OSError."""
    p = node.persistence
    if p.bg_running:
        raise SaveInProgress
    started = time.monotonic()
    dirty = changes(node)
    offset = node.repl.offset
    try:
        size = _write_file(node, f"temp-{os.getpid()}.sg")
    except OSError as exc:
        p.last_status_ok = False
        log_event("save_failed", level="warn", error=str(exc))
        raise
    _saved(p, dirty, offset)
    log_event(
        "saved",
        bytes=size,
        keys=len(node.keyspace),
        offset=offset,
        ms=round((time.monotonic() - started) * 1000, 1),
    )


def _saved(p: Persistence, dirty: int, offset: int) -> None:
    p.lastsave = int(time.time())
    p.dirty_at_save = dirty
    p.saves += 1
    p.last_status_ok = True
    p.saved_offset = offset


def start_bgsave(node: Node) -> None:
    """BGSAVE: ask the background task for a save. Raises SaveInProgress."""
    p = node.persistence
    if p.bg_running:
        raise SaveInProgress
    p.bg_running = True
    p.bg_started = time.monotonic()
    p.last_attempt = p.bg_started
    p._kick.set()


class _Capture:
    """A replication-stream sink that keeps what was written during a background save."""

    __slots__ = ("broken", "data")

    def __init__(self) -> None:
        self.data = bytearray()
        self.broken = False

    def push(self, data: bytes) -> None:
        if data == GETACK:
            return  # asks replicas to ack; not in the offset space
        self.data += data
        if len(self.data) > MAX_CAPTURE:
            self.broken = True


async def _background_save(node: Node) -> None:
    p = node.persistence
    repl = node.repl
    ks = node.keyspace
    node.ensure_backlog()  # writes must reach the stream (and the capture) from now on
    start = repl.offset
    capture = _Capture()
    repl.links[_CAPTURE_ID] = capture
    directory = Path(p.config.dir)
    temp = directory / f"temp-bg-{os.getpid()}.sg"
    dirty = changes(node)
    renamed = False
    try:
        with _create(temp) as f:
            enc = snapshot_file.Encoder(time.time_ns() // 1_000_000)
            f.write(enc.header())
            cursor = 0
            p.bg_max_slice_us = 0
            pending: list[bytes] = []
            pending_bytes = 0
            while True:
                t0 = time.perf_counter()
                now_ms = time.time_ns() // 1_000_000
                cursor, keys = ks.scan(cursor, CHUNK_KEYS, now_ms)
                records = []
                for key in keys:
                    e = ks.peek(key, now_ms)
                    if e is not None:
                        v = e.value
                        records.append((key, v if v.__class__ is bytes else bytes(v), e.expire_at))
                pending.append(enc.records(records))
                pending_bytes += len(pending[-1])
                slice_us = int((time.perf_counter() - t0) * 1e6)
                p.bg_max_slice_us = max(p.bg_max_slice_us, slice_us)
                if pending_bytes >= snapshot_file.CHUNK_BYTES or cursor == 0:
                    # In a thread: writeback throttling can block a write for milliseconds.
                    data = b"".join(pending)
                    pending.clear()
                    pending_bytes = 0
                    await trio.to_thread.run_sync(f.write, data)
                if cursor == 0:
                    break
                await trio.lowlevel.checkpoint()  # let clients run between chunks
            # From here to the trailer nothing yields: the offset and the capture agree.
            end = repl.offset
            del repl.links[_CAPTURE_ID]
            if capture.broken or len(capture.data) != end - start:
                raise OSError(
                    f"the stream moved {end - start} bytes but {len(capture.data)} were "
                    "captured (a full sync or a flood of writes meanwhile); retrying later"
                )
            f.write(enc.stream(bytes(capture.data)))
            f.write(enc.trailer(repl.replid, end))
            capture.data = bytearray()
            f.flush()
            await trio.to_thread.run_sync(os.fsync, f.fileno())
        os.replace(temp, p.path)
        renamed = True
        await trio.to_thread.run_sync(_fsync_dir, directory)
    finally:
        repl.links.pop(_CAPTURE_ID, None)
        if not renamed:
            with contextlib.suppress(OSError):
                temp.unlink()
    _saved(p, dirty, end)
    p.last_bgsave_seconds = int(time.monotonic() - p.bg_started)
    log_event("bgsave_done", keys=enc.count, offset=end, seconds=p.last_bgsave_seconds)


def _create(path: Path) -> BinaryIO:
    return open(path, "wb")


def _fsync_dir(directory: Path) -> None:
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)  # the rename itself must survive a power loss
    finally:
        os.close(dfd)


def cancel_background_save(node: Node) -> None:
    """Stop a running background save (shutdown: a newer save is about to be written)."""
    p = node.persistence
    if p.bg_scope is not None:
        p.bg_scope.cancel()
        p.bg_scope = None
    if p.bg_running:
        log_event("bgsave_cancelled")
    p.bg_running = False
    node.repl.links.pop(_CAPTURE_ID, None)


async def run(node: Node, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run background saves: asked for (BGSAVE) or due (a save point was reached)."""
    p = node.persistence
    task_status.started()
    while True:
        if not p.bg_running:
            with trio.move_on_after(CHECK_SECONDS):
                await p._kick.wait()
            p._kick = trio.Event()
        if not p.enabled:
            p.bg_running = False
            continue
        if not p.bg_running:
            if not p.last_status_ok and time.monotonic() - p.last_attempt < RETRY_SECONDS:
                continue
            since = time.time() - p.lastsave
            if not snapshot_file.save_due(p.config.save_points, since, changes_since_save(node)):
                continue
            start_bgsave(node)
        log_event("bgsave_started", offset=node.repl.offset)
        with trio.CancelScope() as scope:
            p.bg_scope = scope
            try:
                await _background_save(node)
            except OSError as exc:
                p.last_status_ok = False
                log_event("bgsave_failed", level="warn", error=str(exc))
            finally:
                p.bg_running = False
                p.bg_scope = None


def final_save(node: Node) -> None:
    """The shutdown save (SIGTERM/SIGINT): traffic has stopped; write the snapshot once."""
    p = node.persistence
    cancel_background_save(node)
    if not p.enabled or p.final_save_done:
        return
    p.final_save_done = True
    try:
        save(node)
    except OSError:
        pass  # logged by save(); the process exits anyway, as Redis does on SIGTERM
