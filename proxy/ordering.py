"""Per-client reply ordering: replies are released strictly in request order.

How it works
- Each request a client sends becomes a ``Pending`` appended to that client's ``ReplyQueue``.
  A forwarded request waits on one backend reply; a split or fan-out waits on one reply per part
  and merges them when the last arrives.
- Whoever produces a reply (a backend reader, the timeout checker, the local command handler)
  calls ``complete``/``fail``; the first outcome wins and later ones are dropped, which is how a
  late backend reply after a timeout disappears without shifting anything.
- ``ReplyQueue.take_ready`` pops the longest prefix of finished requests; a finished request
  behind an unfinished one waits, so a client always reads replies in the order it asked.

Sans-I/O: no clock (deadlines are numbers the caller compares with its own ``now``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class Pending:
    """One client request in flight. ``owner`` is opaque here (the shell's client object)."""

    __slots__ = ("deadline", "merge", "owner", "parts", "remaining", "reply", "retry", "started")

    def __init__(
        self,
        owner: object,
        started: float,
        deadline: float,
        nparts: int = 1,
        merge: Callable[[list[bytes]], bytes] | None = None,
    ) -> None:
        self.owner = owner
        self.started = started
        self.deadline = deadline
        self.reply: bytes | None = None
        self.remaining = nparts
        self.merge = merge
        self.parts: list[bytes] | None = [b""] * nparts if merge is not None else None
        # The encoded request while it may still be retried once (a write refused with
        # -READONLY by a superseded primary was not applied); None otherwise.
        self.retry: bytes | None = None

    @classmethod
    def done(cls, owner: object, reply: bytes) -> Pending:
        """A request answered at once (local command, refusal)."""
        p = cls(owner, 0.0, 0.0, 0)
        p.reply = reply
        return p

    def complete(self, index: int, data: bytes) -> bool:
        """Record part ``index``'s reply; True when this made the whole reply available."""
        if self.reply is not None:
            return False  # already failed (timeout, backend down): drop the late reply
        parts = self.parts
        if parts is None:
            self.reply = data
            return True
        parts[index] = data
        self.remaining -= 1
        if self.remaining:
            return False
        assert self.merge is not None
        self.reply = self.merge(parts)
        self.parts = None
        return True

    def fail(self, error: bytes) -> bool:
        """Give the request an error reply unless it already has a reply."""
        if self.reply is not None:
            return False
        self.reply = error
        self.parts = None
        return True


class ReplyQueue:
    """A client's requests in arrival order."""

    __slots__ = ("_queue", "append")

    def __init__(self) -> None:
        self._queue: deque[Pending] = deque()
        # The deque's own append: one C call per request instead of a Python method.
        self.append: Callable[[Pending], None] = self._queue.append

    def __len__(self) -> int:
        return len(self._queue)

    def take_ready(self) -> list[bytes]:
        """Replies of the finished prefix, in order, removed from the queue."""
        q = self._queue
        out: list[bytes] = []
        while q:
            reply = q[0].reply
            if reply is None:
                break
            out.append(reply)
            q.popleft()
        return out

    def fail_all(self, error: bytes) -> None:
        for p in self._queue:
            p.fail(error)
