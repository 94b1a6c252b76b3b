"""Values the node's dispatch hands to its connection loop (shared by node and commands)."""

from __future__ import annotations

from typing import Protocol

import attrs


class Deferred:
    """A reply the connection loop must wait for (WAIT, SG.SYNC)."""

    __slots__ = ()


@attrs.frozen(slots=True)
class WaitForAcks(Deferred):
    numreplicas: int
    timeout_ms: int
    offset: int


@attrs.frozen(slots=True)
class ServeReplica(Deferred):
    replid: str
    offset: int
    announce: str


class LinkSink(Protocol):
    """The primary side of one replica connection: where stream bytes go."""

    def push(self, data: bytes) -> None: ...


@attrs.frozen(slots=True)
class PausedWrite(Deferred):
    """A write that arrived while writes are paused (CLIENT PAUSE): run it once they resume."""

    args: tuple[bytes, ...]
