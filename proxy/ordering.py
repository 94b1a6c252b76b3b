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
        # One slot per part, None until the part has its outcome (a reply or an error).
        self.parts: list[bytes | None] | None = [None] * nparts if merge is not None else None
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
        if parts[index] is not None:
            return False  # this part already has its outcome
        parts[index] = data
        self.remaining -= 1
        if self.remaining:
            return False
        assert self.merge is not None
        self.reply = self.merge(parts)  # type: ignore[arg-type]  # every part is filled
        self.parts = None
        return True

    def fail_part(self, index: int, error: bytes) -> bool:
        """Give part ``index`` an error unless it has its outcome; True when it did. A request
        of one part fails whole; a split request's merge turns an error part into an error
        reply, and a run's parts are the client's separate requests, each failing alone."""
        if self.reply is not None:
            return False
        parts = self.parts
        if parts is None:
            self.reply = error
            return True
        if parts[index] is not None:
            return False
        self.complete(index, error)
        return True

    def retry_request(self, part: int) -> bytes | None:
        """The request's bytes while it may still be retried once, else None."""
        return self.retry

    def take_retry(self, part: int) -> None:
        """The one retry is used."""
        self.retry = None

    def fail(self, error: bytes) -> bool:
        """Give the request an error reply unless it already has a reply."""
        if self.reply is not None:
            return False
        self.reply = error
        self.parts = None
        return True


class RunPending(Pending):
    """A run of ``size`` pipelined requests read together (the proxy's run lane): one part per
    request, each answered (or failed) on its own, released together in order.

    ``frames`` (kept only where requests may be retried) gives part i's request bytes; each
    part may be retried once, like a single request."""

    __slots__ = ("frames", "retried", "size")

    def __init__(
        self,
        owner: object,
        started: float,
        deadline: float,
        size: int,
        frames: Callable[[int], bytes] | None = None,
    ) -> None:
        super().__init__(owner, started, deadline, size, _JOIN)
        self.size = size
        self.frames = frames
        self.retried: set[int] = set()

    def retry_request(self, part: int) -> bytes | None:
        if self.frames is None or part in self.retried:
            return None
        return self.frames(part)

    def take_retry(self, part: int) -> None:
        self.retried.add(part)


_JOIN = b"".join  # a run's replies are its requests' replies, one after another


class ReplyQueue:
    """A client's requests in arrival order; its length counts each request of a run."""

    __slots__ = ("_queue", "append", "extra")

    def __init__(self) -> None:
        self._queue: deque[Pending] = deque()
        # The deque's own append: one C call per request instead of a Python method.
        self.append: Callable[[Pending], None] = self._queue.append
        self.extra = 0  # requests beyond one per entry: the runs' (size - 1)s

    def __len__(self) -> int:
        return len(self._queue) + self.extra

    def append_run(self, pending: RunPending) -> None:
        self._queue.append(pending)
        self.extra += pending.size - 1

    def take_ready(self) -> list[bytes]:
        """Replies of the finished prefix, in order, removed from the queue."""
        q = self._queue
        out: list[bytes] = []
        while q:
            head = q[0]
            reply = head.reply
            if reply is None:
                break
            out.append(reply)
            q.popleft()
            if type(head) is RunPending:
                self.extra -= head.size - 1
        return out

    def fail_all(self, error: bytes) -> None:
        for p in self._queue:
            p.fail(error)
