"""SAVE, BGSAVE, LASTSAVE and SHUTDOWN, with Redis 7's replies and error texts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shardgate.errors import CommandError, syntax_error
from shardgate.logs import log_event
from storenode import persistence
from storenode.persistence import SaveInProgress
from storenode.session import Session

if TYPE_CHECKING:
    from storenode.node import Node

_IN_PROGRESS = "ERR Background save already in progress"
_NO_DIR = "ERR persistence is off: this node has no 'dir' (start it with --dir to snapshot)"
_SHUTDOWN_FAILED = "ERR Errors trying to SHUTDOWN. Check logs."


def _save(node: Node, s: Session, args: list[bytes]) -> bytes:
    if not node.persistence.enabled:
        raise CommandError(_NO_DIR)
    try:
        persistence.save(node)
    except SaveInProgress:
        raise CommandError(_IN_PROGRESS) from None
    except OSError:
        raise CommandError("ERR") from None  # Redis's shared.err; the log has the reason
    return b"+OK\r\n"


def _bgsave(node: Node, s: Session, args: list[bytes]) -> bytes:
    if len(args) > 2 or (len(args) == 2 and args[1].lower() != b"schedule"):
        raise syntax_error()
    if not node.persistence.enabled:
        raise CommandError(_NO_DIR)
    try:
        persistence.start_bgsave(node)
    except SaveInProgress:
        raise CommandError(_IN_PROGRESS) from None
    return b"+Background saving started\r\n"


def _lastsave(node: Node, s: Session, args: list[bytes]) -> bytes:
    return b":%d\r\n" % node.persistence.lastsave


def _shutdown(node: Node, s: Session, args: list[bytes]) -> bytes:
    """SHUTDOWN [NOSAVE|SAVE] [NOW] [FORCE] [ABORT]: save (when persistence is on, or SAVE),
    then stop the process; the client gets no reply, only the closed connection."""
    mode = None
    for arg in args[1:]:
        word = arg.lower()
        if word in (b"nosave", b"save") and mode is None:
            mode = word
        elif word in (b"now", b"force"):
            pass  # no replicas to wait for before exiting, nothing to force past
        elif word == b"abort" and len(args) == 2:
            raise CommandError("ERR No shutdown in progress.")
        else:
            raise syntax_error()
    p = node.persistence
    if p.on_shutdown is None:
        log_event("shutdown_refused", level="warn", reason="not running as a process")
        raise CommandError(_SHUTDOWN_FAILED)
    if mode != b"nosave" and (p.enabled or mode == b"save"):
        if not p.enabled:
            log_event("shutdown_refused", level="warn", reason="SHUTDOWN SAVE without a dir")
            raise CommandError(_SHUTDOWN_FAILED)
        persistence.cancel_background_save(node)  # a newer snapshot is about to be written
        try:
            persistence.save(node)
        except OSError:
            raise CommandError(_SHUTDOWN_FAILED) from None
    p.final_save_done = True
    log_event("shutdown", by="SHUTDOWN", save=mode.decode() if mode else "default")
    s.closing = True
    p.on_shutdown()
    return b""


HANDLERS = {"save": _save, "bgsave": _bgsave, "lastsave": _lastsave, "shutdown": _shutdown}
