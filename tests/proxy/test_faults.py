"""Real faults: a backend SIGKILLed and restarted, a backend SIGSTOPped, passwords and limits."""

from __future__ import annotations

import signal
import time

import hiredis
import pytest
import redis
import trio

from proxy.router import Router
from shardgate.topology import NodeAddress, Topology
from tests.proxy.conftest import Backend, Proxy, backends
from tests.proxy.test_integration import blocking

TIMEOUT_MS = 500


def key_on(router: Router, shard: int, prefix: str = "k") -> str:
    i = 0
    while router.shard_for_key(f"{prefix}{i}".encode()) != shard:
        i += 1
    return f"{prefix}{i}"


def setup(bs: list[Backend]) -> tuple[Proxy, Router]:
    proxy = Proxy(
        "--backends", ",".join(b.address for b in bs), "--timeout-ms", str(TIMEOUT_MS)
    ).start()
    router = Router(Topology.even([NodeAddress("127.0.0.1", b.port) for b in bs]))
    return proxy, router


def timed_get(r: redis.Redis, key: str) -> tuple[float, object]:
    start = time.monotonic()
    try:
        result: object = r.get(key)
    except redis.ResponseError as exc:
        result = exc
    return time.monotonic() - start, result


@pytest.mark.slow
async def test_killed_backend_fails_fast_and_recovers() -> None:
    with backends("redis", 2) as bs:
        proxy, router = setup(bs)
        try:
            live, dead = key_on(router, 0), key_on(router, 1)

            def body() -> None:
                r = proxy.client()
                assert r.set(live, "a") and r.set(dead, "b")
                bs[1].stop()
                time.sleep(0.2)  # the proxy sees the connection close
                latencies = []
                for _ in range(20):
                    elapsed, result = timed_get(r, dead)
                    assert isinstance(result, redis.ResponseError)
                    assert "down" in str(result) or "connection lost" in str(result)
                    latencies.append(elapsed)
                    assert r.get(live) == b"a"  # the other shard keeps serving
                assert max(latencies) < 0.05, latencies  # fail fast, no timeout wait
                # a split command touching the dead shard is an error, never a partial success
                with pytest.raises(redis.ResponseError, match="down"):
                    r.mset({live: "x", dead: "y"})
                assert r.get(live) == b"a"
                with pytest.raises(redis.ResponseError, match="down"):
                    r.mget(live, dead)
                bs[1].start()  # same port
                deadline = time.monotonic() + 5
                while True:
                    _, result = timed_get(r, dead)
                    if result is None:  # a fresh redis-server: the key is gone, no error
                        break
                    assert time.monotonic() < deadline, result
                    time.sleep(0.05)
                assert r.mset({live: "x", dead: "y"}) and r.mget(live, dead) == [b"x", b"y"]

            with trio.fail_after(30):
                await blocking(body)
        finally:
            proxy.stop()


async def _flood(port: int, key: str, count: int) -> list[object]:
    return await _pipeline(port, [key] * count)


async def _pipeline(port: int, keys: list[str], *, mixed: bool = False) -> list[object]:
    """GET every key in one write (the proxy takes it as one run) and read every reply; with
    ``mixed``, every other GET is a SET of the key to its own name (one batch of both)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    reader = hiredis.Reader()
    got: list[object] = []
    commands = [
        (b"SET", k.encode(), k.encode()) if mixed and i % 2 else (b"GET", k.encode())
        for i, k in enumerate(keys)
    ]
    async with stream:
        await stream.send_all(b"".join(hiredis.pack_command(c) for c in commands))  # type: ignore[arg-type]
        while len(got) < len(keys):
            data = await stream.receive_some(65536)
            assert data
            reader.feed(data)
            while (item := reader.gets()) is not False:
                got.append(item)
    return got


@pytest.mark.slow
async def test_stopped_backend_times_out_while_others_keep_serving() -> None:
    with backends("redis", 2) as bs:
        proxy, router = setup(bs)
        try:
            live, stalled = key_on(router, 0), key_on(router, 1)
            await blocking(lambda: proxy.client().set(live, "ok"))
            bs[1].signal(signal.SIGSTOP)
            try:
                with trio.fail_after(30):
                    r_slow, r_fast = proxy.client(), proxy.client()
                    async with trio.open_nursery() as nursery:
                        results: dict[str, tuple[float, object]] = {}

                        async def slow() -> None:
                            results["slow"] = await blocking(timed_get, r_slow, stalled)

                        nursery.start_soon(slow)
                        await trio.sleep(0.05)
                        fast = [await blocking(timed_get, r_fast, live) for _ in range(20)]
                    elapsed, result = results["slow"]
                    assert isinstance(result, redis.ResponseError) and "timeout" in str(result)
                    assert TIMEOUT_MS / 1000 - 0.06 <= elapsed <= TIMEOUT_MS / 1000 + 0.1, elapsed
                    assert all(v == b"ok" for _, v in fast)
                    assert max(t for t, _ in fast) < 0.05

                    # 50 clients pipelining against the stalled shard: errors, bounded memory
                    rss_before = proxy.rss_bytes()
                    floods: list[list[object]] = []

                    async def flood() -> None:
                        floods.append(await _flood(proxy.port, stalled, 2000))

                    async with trio.open_nursery() as nursery:
                        for _ in range(50):
                            nursery.start_soon(flood)
                    assert all(isinstance(x, hiredis.ReplyError) for got in floods for x in got)
                    assert proxy.rss_bytes() < 256 * 1024 * 1024, (rss_before, proxy.rss_bytes())
                    assert await blocking(lambda: proxy.client().get(live)) == b"ok"
            finally:
                bs[1].signal(signal.SIGCONT)

            def recovers() -> None:
                r = proxy.client()
                deadline = time.monotonic() + 5
                while True:
                    _, result = timed_get(r, stalled)
                    if result is None:
                        return
                    assert time.monotonic() < deadline, result
                    time.sleep(0.05)

            with trio.fail_after(10):
                await blocking(recovers)
        finally:
            proxy.stop()


@pytest.mark.slow
async def test_a_pipelined_run_fails_only_the_requests_of_the_lost_shard() -> None:
    # One write of GETs across both shards is forwarded as one run (of GETs and SETs, as one
    # batch); when one shard stalls or dies, each of its requests gets its own error in its own
    # place and the others their replies, never a shifted or merged reply.
    with backends("redis", 2) as bs:
        proxy, router = setup(bs)
        try:
            keys = [f"run{i}" for i in range(200)]
            on_one = [router.shard_for_key(k.encode()) == 1 for k in keys]
            assert 20 < sum(on_one) < 180
            await blocking(lambda: proxy.client().mset({k: k for k in keys}))
            assert await _pipeline(proxy.port, keys) == [k.encode() for k in keys]

            def check(got: list[object], error: str, mixed: bool = False) -> None:
                assert len(got) == len(keys)
                for i, (key, lost, reply) in enumerate(zip(keys, on_one, got, strict=True)):
                    if lost:
                        assert isinstance(reply, hiredis.ReplyError), (key, reply)
                        assert error in str(reply), reply
                    else:
                        assert reply == (b"OK" if mixed and i % 2 else key.encode())

            bs[1].signal(signal.SIGSTOP)
            try:
                with trio.fail_after(10):
                    start = time.monotonic()
                    check(await _pipeline(proxy.port, keys), "timeout")
                    assert time.monotonic() - start < TIMEOUT_MS / 1000 + 0.3
            finally:
                bs[1].signal(signal.SIGCONT)
            await trio.sleep(0.3)  # the proxy reconnects after the timeouts dropped the link
            bs[1].stop()
            await trio.sleep(0.2)  # the proxy sees the connection close
            with trio.fail_after(10):
                check(await _pipeline(proxy.port, keys), "down")
                # GETs and SETs mixed in one write: each in its place too
                check(await _pipeline(proxy.port, keys, mixed=True), "down", mixed=True)
        finally:
            proxy.stop()


async def test_passwords_and_pre_auth_limits() -> None:
    backend = Backend("redis")
    backend.start()
    try:
        backend.client().config_set("requirepass", "bpw")
        proxy = Proxy(
            "--backends", backend.address, "--requirepass", "pw", "--backend-password", "bpw"
        ).start()
        try:

            def body() -> None:
                r = proxy.client()
                with pytest.raises(redis.AuthenticationError):
                    r.get("x")
                with pytest.raises(redis.AuthenticationError):
                    proxy.client(password="wrong").ping()
                ok = proxy.client(password="pw")
                assert ok.set("x", "1") and ok.get("x") == b"1"
                r3 = redis.Redis(port=proxy.port, protocol=3, password="pw")
                assert r3.get("x") == b"1"

            async def unauth_big_frame() -> bytes:
                async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as s:
                    await s.send_all(b"*100\r\n")
                    data = b""
                    while chunk := await s.receive_some(1024):
                        data += chunk
                    return data

            with trio.fail_after(20):
                await blocking(body)
                reply = await unauth_big_frame()
                assert reply.startswith(b"-ERR Protocol error: unauthenticated multibulk")
        finally:
            proxy.stop()
    finally:
        backend.stop()


@pytest.mark.slow
async def test_slow_reader_and_maxclients_are_bounded() -> None:
    """A client that pipelines without reading is stopped being read: memory stays bounded."""
    with backends("redis", 1) as bs:
        proxy = Proxy("--backends", bs[0].address, "--maxclients", "3").start()
        try:
            value = b"v" * 10_000
            await blocking(lambda: proxy.client().set("big", value))
            request = hiredis.pack_command((b"GET", b"big")) * 1000
            async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream:
                sent = 0
                with trio.move_on_after(3):  # until TCP pushes back (the proxy stopped reading)
                    for _ in range(100):  # at most 100k GETs = 1 GB of replies if unbounded
                        await stream.send_all(request)
                        sent += 1000
                assert sent < 100_000, "the proxy kept reading a client that never reads"
                assert proxy.rss_bytes() < 256 * 1024 * 1024
                # a fresh client is still served while the slow one is stuck
                assert await blocking(lambda: proxy.client().get("big")) == value

                # maxclients 3: the slow client + 2 more; the next one is refused
                def over_limit() -> None:
                    extra = [proxy.client(), proxy.client()]
                    for r in extra:
                        assert r.ping()
                    with pytest.raises(redis.ConnectionError, match="max number of clients"):
                        proxy.client().ping()
                    for r in extra:
                        r.close()

                with trio.fail_after(20):
                    await blocking(over_limit)
        finally:
            proxy.stop()
