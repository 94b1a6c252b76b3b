"""redis-py and raw sockets through a real proxy process to three real backends."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import hiredis
import pytest
import redis
import trio

from proxy.router import Router
from shardgate.topology import NodeAddress, Topology
from tests.proxy.conftest import Backend, Proxy

Cluster = tuple[Proxy, list[Backend]]


async def blocking(fn: Callable[..., Any], *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)


def router_for(bs: list[Backend]) -> Router:
    return Router(Topology.even([NodeAddress("127.0.0.1", b.port) for b in bs]))


async def test_single_keys_land_on_their_shard(cluster: Cluster) -> None:
    proxy, bs = cluster
    router = router_for(bs)

    def body() -> None:
        r = proxy.client()
        r.flushall()
        for i in range(300):
            assert r.set(f"key:{i}", f"v{i}")
        for i in range(300):
            assert r.get(f"key:{i}") == f"v{i}".encode()
        assert r.incr("counter") == 1
        assert r.expire("counter", 100)
        assert 0 < r.ttl("counter") <= 100
        direct = [b.client() for b in bs]
        per_shard = [0, 0, 0]
        for i in range(300):
            key = f"key:{i}".encode()
            shard = router.shard_for_key(key)
            assert direct[shard].get(key) == f"v{i}".encode()
            per_shard[shard] += 1
        assert all(per_shard)
        # hash tags: all on one shard, and multi-key commands on them are allowed
        assert r.msetnx({"{user7}.a": 1, "{user7}.b": 2})
        shard = router.shard_for_key(b"user7")
        assert direct[shard].mget("{user7}.a", "{user7}.b") == [b"1", b"2"]
        assert r.cluster("keyslot", "{user7}.a") == r.cluster("keyslot", "user7")
        with pytest.raises(redis.ResponseError, match="hash to the same slot"):
            r.msetnx({"a": 1, "b": 2, "c": 3, "d": 4})
        with pytest.raises(redis.ResponseError, match="not supported by the shardgate proxy"):
            r.hset("h", "f", "v")

    with trio.fail_after(30):
        await blocking(body)


async def test_multi_key_commands_across_every_shard(cluster: Cluster) -> None:
    proxy, bs = cluster
    router = router_for(bs)

    def body() -> None:
        r = proxy.client()
        r.flushall()
        keys = [f"mk:{i}" for i in range(60)]
        assert {router.shard_for_key(k.encode()) for k in keys} == {0, 1, 2}
        assert r.mset({k: k.upper() for k in keys})
        order = [*keys, "missing", *keys[::-1]]
        random.Random(1).shuffle(order)
        got = r.mget(order)
        assert got == [None if k == "missing" else k.upper().encode() for k in order]
        assert r.exists(*keys, "missing", keys[0]) == 61
        assert r.touch(*keys[:10]) == 10
        assert r.delete(*keys[:30], "missing") == 30
        assert r.unlink(*keys) == 30
        assert r.dbsize() == 0

    with trio.fail_after(30):
        await blocking(body)


async def test_scan_keys_dbsize_randomkey(cluster: Cluster) -> None:
    proxy, _ = cluster

    def body() -> None:
        r = proxy.client()
        r.flushall()
        keys = {f"s:{i}".encode() for i in range(2000)}
        with r.pipeline(transaction=False) as p:
            for k in keys:
                p.set(k, b"1")
            p.execute()
        seen: list[bytes] = []
        cursor = 0
        while True:
            cursor, page = r.scan(cursor, count=100)
            seen.extend(page)
            if cursor == 0:
                break
        assert len(seen) == len(keys) and set(seen) == keys  # every key exactly once
        assert set(r.scan_iter(match="s:1*", count=500)) == {
            k for k in keys if k.startswith(b"s:1")
        }
        assert set(r.keys("*")) == keys
        assert r.dbsize() == 2000
        assert r.randomkey() in keys
        assert r.flushdb()
        assert r.dbsize() == 0 and r.randomkey() is None

    with trio.fail_after(30):
        await blocking(body)


async def test_pipeline_of_10000_commands_in_order(cluster: Cluster) -> None:
    proxy, _ = cluster

    def body() -> None:
        r = proxy.client()
        r.flushall()
        with r.pipeline(transaction=False) as p:
            for i in range(10000):
                if i % 4 == 0:
                    p.set(f"p:{i}", i)
                elif i % 4 == 1:
                    p.get(f"p:{i - 1}")
                elif i % 4 == 2:
                    p.incr("p:counter")
                else:
                    p.echo(f"e{i}")
            replies = p.execute()
        counter = 0
        for i, reply in enumerate(replies):
            if i % 4 == 0:
                assert reply is True
            elif i % 4 == 1:
                assert reply == str(i - 1).encode()
            elif i % 4 == 2:
                counter += 1
                assert reply == counter
            else:
                assert reply == f"e{i}".encode()

    with trio.fail_after(60):
        await blocking(body)


async def _raw_client(port: int, cid: int, rounds: int, batch: int) -> None:
    """One raw socket client pipelining SET/GET/ECHO and checking every reply in order."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    reader = hiredis.Reader()
    async with stream:
        for rnd in range(rounds):
            expected: list[object] = []
            out = []
            for j in range(batch):
                key = f"c{cid}:{rnd}:{j}".encode()
                out.append(hiredis.pack_command((b"SET", key, b"%d" % j)))
                out.append(hiredis.pack_command((b"GET", key)))
                out.append(hiredis.pack_command((b"ECHO", key)))
                expected += [b"OK", b"%d" % j, key]
            await stream.send_all(b"".join(out))
            got: list[object] = []
            while len(got) < len(expected):
                data = await stream.receive_some(65536)
                assert data, "proxy closed the connection"
                reader.feed(data)
                while (item := reader.gets()) is not False:
                    got.append(item)
            assert got == expected


@pytest.mark.slow
async def test_200_concurrent_clients(cluster: Cluster) -> None:
    proxy, _ = cluster
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for cid in range(200):
                nursery.start_soon(_raw_client, proxy.port, cid, 5, 20)


async def test_bad_input_is_never_forwarded(cluster: Cluster) -> None:
    proxy, bs = cluster

    async def exchange(payload: bytes) -> bytes:
        async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as s:
            await s.send_all(payload)
            data = b""
            while True:
                chunk = await s.receive_some(65536)
                if not chunk:
                    return data
                data += chunk

    with trio.fail_after(20):
        await blocking(lambda: proxy.client().flushall())
        # a good command, then a frame whose bulk length is not a number
        reply = await exchange(b"*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET\r\n$3\r\nbad\r\n$x\r\nzz\r\n")
        assert reply.startswith(b"+PONG\r\n-ERR Protocol error")
        # the SET whose value was malformed never reached a backend
        assert await blocking(lambda: sum(b.client().dbsize() for b in bs)) == 0
        reply = await exchange(b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nkXX\r\n")
        assert reply == b"+PONG\r\n-ERR Protocol error: expected CRLF after bulk\r\n"
        reply = await exchange(b"*1\r\n$999999999999\r\n")
        assert b"invalid bulk length" in reply
        reply = await exchange(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reply == b""  # silently closed, as Redis does
        # inline commands work, and everyone else is still served
        reply = await exchange(b"SET inline 1\r\nGET inline\r\nQUIT\r\n")
        assert reply == b"+OK\r\n$1\r\n1\r\n+OK\r\n"
        assert await blocking(lambda: proxy.client().get("inline")) == b"1"


async def test_info_reports_backends_and_epoch(cluster: Cluster) -> None:
    proxy, bs = cluster

    def body() -> None:
        r = proxy.client()
        info = r.info("all")
        assert info["epoch"] == 1 and info["shards"] == 3
        backends = r.info("backends")
        assert sorted(v["addr"] for v in backends.values()) == sorted(b.address for b in bs)
        assert all(v["state"] == "up" for v in backends.values())
        assert r.ping() and r.echo("x") == b"x"
        assert r.client_id() > 0
        assert r.client_setname("me") and r.client_getname() == "me"
        assert r.config_get("maxclients") == {"maxclients": "10000"}
        assert len(r.time()) == 2
        assert r.execute_command("SELECT", 0)

    with trio.fail_after(20):
        await blocking(body)


def _resp3_client(port: int) -> redis.Redis:
    return redis.Redis(port=port, protocol=3, socket_timeout=5)


async def test_resp3_hello(cluster: Cluster) -> None:
    proxy, _ = cluster

    def body() -> None:
        r = _resp3_client(proxy.port)
        assert r.set("r3", "v") and r.get("r3") == b"v"
        assert r.mget("r3", "nope", "r3") == [b"v", None, b"v"]
        assert r.config_get("port") == {b"port": str(proxy.port).encode()} or r.config_get("port")

    with trio.fail_after(20):
        await blocking(body)


async def test_large_values_and_large_replies(cluster: Cluster) -> None:
    proxy, _ = cluster

    def body() -> None:
        r = proxy.client()
        r.flushall()
        big = bytes(range(256)) * (5 * 4096)  # 5 MiB, every byte value
        assert r.set("big", big)
        assert r.get("big") == big
        values = {f"bv{i}": bytes([i]) * (300 * 1024) for i in range(12)}
        assert r.mset(values)
        assert r.mget(list(values)) == list(values.values())
        with r.pipeline(transaction=False) as p:
            for i in range(20000):
                p.set(f"many:{i}", "x")
            p.execute()
        assert len(r.keys("many:*")) == 20000

    with trio.fail_after(60):
        await blocking(body)
