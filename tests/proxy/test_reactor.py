"""The reactor's busy wait (``proxy/reactor.py``) never holds trio's other work.

Most tests make the reactor's ``TICK`` a minute, so a busy wait that the event under test
fails to end shows as a stuck request (a socket timeout), not as a few slow milliseconds. The
proxy runs in this test's own trio loop, so its reactor shares the loop with the test's tasks.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import AsyncIterator

import pytest
import redis
import trio

from proxy import reactor
from proxy.config import ProxyConfig
from proxy.server import serve
from proxy.ticker import Ticker
from shardgate.topology import NodeAddress
from tests.proxy.conftest import Backend

STUCK = 60.0  # a busy wait nothing ends lasts this long


@pytest.fixture
async def proxy_port(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[int]:
    monkeypatch.setattr(reactor, "TICK", STUCK)
    async with running_proxy() as port:
        yield port


@contextlib.asynccontextmanager
async def running_proxy() -> AsyncIterator[int]:
    backend = Backend("redis").start()
    try:
        config = ProxyConfig(port=0, backends=(NodeAddress("127.0.0.1", backend.port),))
        async with trio.open_nursery() as nursery:
            _, port = await nursery.start(serve, config)
            yield port
            nursery.cancel_scope.cancel()
    finally:
        backend.stop()


async def test_trio_epoll_fd_is_found() -> None:
    """The one private detail the reactor reads: if a trio release moves it, this fails."""
    fd = reactor.trio_epoll_fd()
    assert fd is not None
    assert os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventpoll]"


async def test_a_client_in_the_same_trio_loop_is_served(proxy_port: int) -> None:
    """A trio task's socket is on trio's epoll, not the reactor's: trio's fd on ``hot_ep``
    ends the busy wait, so the task's replies are read at once."""
    stream = await trio.open_tcp_stream("127.0.0.1", proxy_port)
    with trio.fail_after(STUCK / 2):
        for i in range(50):
            await stream.send_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n%d\r\n" % (len(str(i)), i))
            assert await stream.receive_some(100) == b"+OK\r\n"
            await stream.send_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
            assert await stream.receive_some(100) == b"$%d\r\n%d\r\n" % (len(str(i)), i)
    await stream.aclose()


async def test_a_task_woken_by_a_pass_runs_at_once(proxy_port: int) -> None:
    """CONFIG RELOAD is answered by a task the pass starts: the instrument sees it scheduled,
    so the reactor yields before it waits. From a thread, so only the reactor is in trio."""

    def reload_five_times() -> list[object]:
        client = redis.Redis(port=proxy_port, socket_timeout=STUCK / 4)
        try:
            return [client.execute_command("CONFIG", "RELOAD") for _ in range(5)]
        except redis.ResponseError as exc:  # --backends has no file: still an answer
            return [exc]
        finally:
            client.close()

    answers = await trio.to_thread.run_sync(reload_five_times)
    assert answers


async def test_timers_run_while_clients_keep_it_busy() -> None:
    """A thread's client keeps the reactor busy without a pause; a trio timer still fires
    (on a ``TICK``), well before the thread gives up on its own."""
    async with running_proxy() as port:
        await _timer_fires_under_load(port)


async def _timer_fires_under_load(proxy_port: int) -> None:
    stop = threading.Event()
    busy = trio.Event()
    served = [0]
    stopped_by_timer = []

    def hammer() -> None:
        client = redis.Redis(port=proxy_port, socket_timeout=STUCK / 4)
        give_up = time.monotonic() + STUCK / 4
        try:
            while not stop.is_set() and time.monotonic() < give_up:
                client.get("k")
                served[0] += 1
                if served[0] == 100:  # the reactor is busy now
                    trio.from_thread.run_sync(busy.set)
            stopped_by_timer.append(stop.is_set())
        finally:
            client.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, hammer)
        await busy.wait()
        before = served[0]
        await trio.sleep(0.05)
        stop.set()
    assert served[0] > before  # the client was served while the timer waited
    assert stopped_by_timer == [True]


def test_the_ticker_ticks_until_stopped() -> None:
    ticker = Ticker(0.01)
    try:
        assert ticker.drain() == 0  # not started
        ticker.start()
        ready = select.select([ticker.fd], [], [], 5)[0]
        assert ready == [ticker.fd]
        assert ticker.drain() >= 1
        ticker.stop()
        assert select.select([ticker.fd], [], [], 0.05)[0] == []
    finally:
        ticker.close()
