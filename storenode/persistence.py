"""Snapshots on disk: load at start, SAVE, BGSAVE (a forked child), save points, shutdown saves.

How it works
- A node with ``dir`` set keeps one snapshot file, ``dir/dbfilename`` (format in
  ``snapshot_file.py``). It is loaded before the node listens; a bad file stops the start (the
  CLI exits 2). Writes go to ``temp-<pid>.sg`` in the same directory, which is fsynced, renamed
  over the old file and the directory fsynced, so a crash at any moment leaves the old snapshot
  or the new one, never a torn file.
- Consistency: a snapshot holds the data at exactly the replication offset written in its
  header. SAVE and the shutdown save run synchronously, with no other task in between, so the
  keyspace and ``repl.offset`` are read at one instant. BGSAVE forks, as Redis does: the child
  gets a copy-on-write image of the keyspace and the offset at the instant of the fork, only
  serialises and writes (no trio, no sockets: its signal handlers and trio's wakeup fd are reset
  first) and leaves with ``os._exit``. The parent's cost is the fork itself (page tables:
  measured in docs/performance.md) and the pages it dirties while the child runs. The parent
  waits for the child on a pidfd, so nothing polls.
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
import gc
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import trio
import trio.lowlevel

from shardgate.commands import COMMANDS
from shardgate.logs import log_event
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
        self.latest_fork_usec = 0
        self.saved_offset = -1  # offset the newest snapshot file holds (-1: none yet)
        self.loaded_keys = 0
        self.load_expired = 0
        self.replica_changes = 0  # stream commands applied as a replica (part of "dirty")
        self.child_pid = 0
        self.child_started = 0.0
        self._child_dirty = 0
        self._child_offset = 0
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
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)  # the rename itself must survive a power loss
    finally:
        os.close(dfd)
    return size


def save(node: Node) -> None:
    """SAVE: write the snapshot now, blocking. Raises SaveInProgress or OSError."""
    p = node.persistence
    if p.child_pid:
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
    """BGSAVE: fork a child that writes the snapshot. Raises SaveInProgress or OSError."""
    p = node.persistence
    if p.child_pid:
        raise SaveInProgress
    p.last_attempt = time.monotonic()
    dirty = changes(node)
    offset = node.repl.offset
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: no trio from here on
        _child_main(node)
    p.latest_fork_usec = int((time.perf_counter() - t0) * 1e6)
    p.child_pid = pid
    p.child_started = time.monotonic()
    p._child_dirty = dirty
    p._child_offset = offset
    p._kick.set()
    log_event("bgsave_started", pid=pid, fork_usec=p.latest_fork_usec, offset=offset)


def _child_main(node: Node) -> None:
    code = 1
    try:
        signal.set_wakeup_fd(-1)  # trio's wakeup socket belongs to the parent
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        gc.disable()  # a collection would touch (and so copy) every object
        _write_file(node, f"temp-{os.getpid()}.sg")
        code = 0
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            os.write(2, f"shardgate node: background save failed: {exc}\n".encode())
    finally:
        os._exit(code)


def _reaped(node: Node, status: int) -> None:
    p = node.persistence
    pid = p.child_pid
    p.child_pid = 0
    p.last_bgsave_seconds = int(time.monotonic() - p.child_started)
    if os.waitstatus_to_exitcode(status) == 0:
        _saved(p, p._child_dirty, p._child_offset)
        log_event("bgsave_done", pid=pid, offset=p._child_offset, seconds=p.last_bgsave_seconds)
    else:
        p.last_status_ok = False
        with contextlib.suppress(OSError):
            (Path(p.config.dir) / f"temp-{pid}.sg").unlink()
        log_event("bgsave_failed", level="warn", pid=pid, status=status)


def kill_child(node: Node) -> None:
    """Stop a running background save (shutdown; a newer save is about to be written)."""
    p = node.persistence
    pid = p.child_pid
    if not pid:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    p.child_pid = 0
    with contextlib.suppress(OSError):
        (Path(p.config.dir) / f"temp-{pid}.sg").unlink()
    log_event("bgsave_killed", pid=pid)


async def run(node: Node, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Reap background saves and start one when a save point is reached."""
    p = node.persistence
    task_status.started()
    while True:
        if p.child_pid:
            await _wait_child(node)
            continue
        with trio.move_on_after(CHECK_SECONDS):
            await p._kick.wait()
        p._kick = trio.Event()
        if p.child_pid or not p.enabled:
            continue
        since = time.time() - p.lastsave
        if not p.last_status_ok and time.monotonic() - p.last_attempt < RETRY_SECONDS:
            continue
        if snapshot_file.save_due(p.config.save_points, since, changes_since_save(node)):
            try:
                start_bgsave(node)
            except OSError as exc:
                p.last_status_ok = False
                log_event("bgsave_failed", level="warn", error=str(exc))


async def _wait_child(node: Node) -> None:
    p = node.persistence
    pid = p.child_pid
    fd = os.pidfd_open(pid)
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)
    if p.child_pid == pid:  # not killed and reaped meanwhile
        _reap(node, pid)


def _reap(node: Node, pid: int) -> None:
    """Collect a child that has exited (its pidfd was readable: this does not block)."""
    _, status = os.waitpid(pid, os.WNOHANG)
    _reaped(node, status)


def final_save(node: Node) -> None:
    """The shutdown save (SIGTERM/SIGINT): traffic has stopped; write the snapshot once."""
    p = node.persistence
    kill_child(node)
    if not p.enabled or p.final_save_done:
        return
    p.final_save_done = True
    try:
        save(node)
    except OSError:
        pass  # logged by save(); the process exits anyway, as Redis does on SIGTERM
