"""Durable state file writes: write a temp file, fsync it, rename over the old one, fsync the dir.

The only module of the sentinel core that touches the filesystem. A crash at any point leaves
either the old or the new state on disk, never a torn file, and a vote is on disk before the
rename returns — which is what lets the shell answer a vote request right after.
"""

from __future__ import annotations

import os
from pathlib import Path

from sentinel.state import MAX_STATE_BYTES, PersistedState, StateError, decode_state


def write_state_file(path: str | Path, data: bytes) -> None:
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, p)
    # The rename itself is only durable once the directory entry is on disk.
    dfd = os.open(p.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_state_file(path: str | Path) -> PersistedState | None:
    """The persisted state, or None when there is no file yet (a fresh sentinel).

    A corrupt file raises ``StateError``: starting from scratch would forget votes and epochs,
    which is exactly what the file exists to prevent, so an operator has to decide.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        return None
    if size > MAX_STATE_BYTES:
        raise StateError(f"{p}: state file is {size} bytes, larger than {MAX_STATE_BYTES}")
    try:
        return decode_state(p.read_bytes())
    except StateError as exc:
        raise StateError(f"{p}: {exc}") from None
