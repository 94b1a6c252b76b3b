"""BackendConn against a fake backend, on a mock clock: timeouts, fail-fast, reconnect backoff."""

from __future__ import annotations

import functools
from collections.abc import Callable

import trio
import trio.testing

from proxy.backend import TICK, BackendConn
from proxy.ordering import Pending
from shardgate.metrics import FastHistogram


class FakeClient:
    """The part of ClientConn a backend touches."""

    def __init__(self) -> None:
        self.touched = False
        self.flushes = 0

    def flush(self) -> None:
        self.touched = False
        self.flushes += 1


FRAME = b"*1\r\n$4\r\nPING\r\n"


class FakeBackend:
    """Answers the handshake PING with +PONG; then, per request, ``:N`` (N counts requests)
    in "reply" mode, nothing in "stall" mode (answered later, in order, when back to "reply"),
    and hangs up at once in "refuse" mode."""

    def __init__(self) -> None:
        self.mode = "reply"
        self.connects: list[float] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connects.append(trio.current_time())
        async with stream:
            if self.mode == "refuse":
                return
            buf = b""
            handshaken = False
            unanswered = 0
            counter = 0
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
                if not handshaken:  # SG.FENCE, then PING; answer as a stock redis-server
                    if FRAME not in buf:
                        continue
                    buf = buf[buf.index(FRAME) :]
                    await stream.send_all(b"-ERR unknown command 'SG.FENCE'\r\n")
                frames = buf.count(FRAME)
                buf = buf[frames * len(FRAME) :]
                if not handshaken and frames:
                    await stream.send_all(b"+PONG\r\n")
                    handshaken = True
                    frames -= 1
                unanswered += frames
                if self.mode == "reply" and unanswered:
                    out = []
                    for _ in range(unanswered):
                        counter += 1
                        out.append(b":%d\r\n" % counter)
                    unanswered = 0
                    await stream.send_all(b"".join(out))
                elif self.mode == "trickle" and unanswered:
                    # bulk, status, error, integer and array replies, one byte per write
                    data = b"$5\r\nhello\r\n+OK\r\n-ERR no\r\n:42\r\n*2\r\n$1\r\na\r\n$-1\r\n"
                    data = data * (unanswered // 5) + b"$-1\r\n" * (unanswered % 5)
                    unanswered = 0
                    for i in range(len(data)):
                        await stream.send_all(data[i : i + 1])
                        await trio.sleep(0.001)


async def start(nursery: trio.Nursery, fake: FakeBackend) -> BackendConn:
    serve = functools.partial(trio.serve_tcp, fake.handle, 0, host="127.0.0.1")
    listeners = await nursery.start(serve)
    port = listeners[0].socket.getsockname()[1]
    conn = BackendConn(
        ("127.0.0.1", port),
        label=f"127.0.0.1:{port}",
        timeout=1.0,
        max_queue=4,
        fail_after=3,
        reconnect_interval=1.0,
        password=None,
        epoch=1,
        latency=FastHistogram(),
        on_flush=lambda clients: [c.flush() for c in clients],
    )
    await nursery.start(conn.run)
    return conn


async def until(predicate: Callable[[], bool]) -> None:
    """Wait, in virtual time (the clock jumps whenever every task is idle)."""
    while not predicate():  # noqa: ASYNC110 -- polling costs nothing on a mock clock
        await trio.sleep(TICK / 10)


def submit(conn: BackendConn, owner: FakeClient, n: int) -> list[Pending]:
    now = trio.current_time()
    out = []
    for _ in range(n):
        p = Pending(owner, now, now + conn.timeout)
        conn.submit(p, 0, b"*1\r\n$4\r\nPING\r\n")
        out.append(p)
    return out


async def test_replies_match_in_order_and_queue_cap(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeBackend()
    async with trio.open_nursery() as nursery:
        conn = await start(nursery, fake)
        owner = FakeClient()
        pendings = submit(conn, owner, 4)
        assert conn.refusal() == conn.busy_error  # max_queue=4
        with trio.fail_after(5):
            await until(lambda: all(p.reply is not None for p in pendings))
        assert [p.reply for p in pendings] == [b":1\r\n", b":2\r\n", b":3\r\n", b":4\r\n"]
        assert conn.refusal() is None and conn.inflight == 0
        nursery.cancel_scope.cancel()


async def test_stalled_backend_times_out_then_fails_fast_then_backs_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeBackend()
    fake.mode = "stall"
    async with trio.open_nursery() as nursery:
        conn = await start(nursery, fake)
        owner = FakeClient()
        t0 = trio.current_time()
        pendings = submit(conn, owner, 3)
        fake.mode = "refuse"  # the current connection stays stalled; new ones are hung up on
        with trio.fail_after(5):
            await until(lambda: all(p.reply is not None for p in pendings))
        elapsed = trio.current_time() - t0
        assert 1.0 <= elapsed <= 1.0 + TICK + 0.001, elapsed  # timeout + one check tick
        assert all(p.reply == conn.timeout_error for p in pendings)
        assert conn.timeouts == 3
        # three consecutive timeouts: the connection is dropped and requests fail fast
        with trio.fail_after(5):
            await until(lambda: not conn.up)
        assert conn.refusal() == conn.down_error
        # reconnection: at most one attempt per second, measured from the previous attempt
        with trio.fail_after(10):
            await until(lambda: len(fake.connects) >= 4)
        gaps = [b - a for a, b in zip(fake.connects, fake.connects[1:])]
        assert all(g >= 1.0 - 0.001 for g in gaps[1:]), gaps
        # the backend comes back: service resumes on the next attempt
        fake.mode = "reply"
        with trio.fail_after(5):
            await until(lambda: bool(conn.up))
        ok = submit(conn, owner, 1)
        with trio.fail_after(5):
            await until(lambda: ok[0].reply is not None)
        assert ok[0].reply == b":1\r\n"
        nursery.cancel_scope.cancel()


async def test_late_reply_after_timeout_does_not_shift_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeBackend()
    fake.mode = "stall"
    async with trio.open_nursery() as nursery:
        conn = await start(nursery, fake)
        owner = FakeClient()
        first = submit(conn, owner, 1)
        with trio.fail_after(5):
            await until(lambda: first[0].reply is not None)
        assert first[0].reply == conn.timeout_error and conn.up  # one timeout: still up
        fake.mode = "reply"
        second = submit(conn, owner, 1)  # the backend now answers the late one, then this one
        with trio.fail_after(5):
            await until(lambda: second[0].reply is not None)
        assert first[0].reply == conn.timeout_error  # the late ":1" was dropped
        assert second[0].reply == b":2\r\n"  # not shifted onto the late reply
        assert conn.inflight == 0 and conn.health.consecutive_timeouts == 0
        nursery.cancel_scope.cancel()


async def test_replies_split_at_every_byte(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeBackend()
    fake.mode = "trickle"
    async with trio.open_nursery() as nursery:
        conn = await start(nursery, fake)
        conn.max_queue = 100
        owner = FakeClient()
        pendings = submit(conn, owner, 10)
        with trio.fail_after(50):
            await until(lambda: all(p.reply is not None for p in pendings))
        expected = [b"$5\r\nhello\r\n", b"+OK\r\n", b"-ERR no\r\n", b":42\r\n"]
        expected.append(b"*2\r\n$1\r\na\r\n$-1\r\n")
        assert [p.reply for p in pendings] == expected * 2
        nursery.cancel_scope.cancel()
