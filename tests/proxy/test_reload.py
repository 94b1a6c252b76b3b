"""Hot reload while clients pipeline: no connection dropped, replies in order, keys move."""

from __future__ import annotations

import signal
from pathlib import Path

import hiredis
import pytest
import trio

from proxy.router import Router
from shardgate.topology import NodeAddress, Shard, SlotRange, Topology
from tests.proxy.conftest import Backend, Proxy, backends
from tests.proxy.test_integration import blocking


def topology(epoch: int, owners: list[tuple[Backend, int, int]]) -> Topology:
    return Topology(
        epoch,
        tuple(
            Shard(f"s{b.port}", NodeAddress("127.0.0.1", b.port), (), (SlotRange(lo, hi),))
            for b, lo, hi in owners
        ),
    )


async def pipeliner(port: int, cid: int, stop: trio.Event, stats: dict[str, int]) -> None:
    """Pipeline SET/GET/ECHO batches on ONE connection until told to stop; check order."""
    reader = hiredis.Reader()
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        rnd = 0
        while not stop.is_set():
            out, expected = [], []
            for j in range(50):
                key = b"r%d:%d:%d" % (cid, rnd, j)
                out += [
                    hiredis.pack_command((b"SET", key, b"v")),
                    hiredis.pack_command((b"GET", key)),
                    hiredis.pack_command((b"ECHO", key)),
                ]
                expected += [b"OK", b"v", key]
            await stream.send_all(b"".join(out))
            got: list[object] = []
            while len(got) < len(expected):
                data = await stream.receive_some(65536)
                assert data, "the proxy dropped a client connection during reload"
                reader.feed(data)
                while (item := reader.gets()) is not False:
                    got.append(item)
            for i, (want, have) in enumerate(zip(expected, got)):
                if i % 3 == 1 and have is None:
                    stats["moved"] += 1  # SET went to the old owner, GET to the new one
                    continue
                assert have == want, (i, want, have)
            stats["batches"] += 1
            rnd += 1


@pytest.mark.slow
async def test_reload_while_pipelining(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    with backends("redis", 3) as (a, b, c):
        v1 = topology(1, [(a, 0, 8191), (b, 8192, 16383)])
        path.write_text(v1.to_toml())
        proxy = Proxy("--config", str(path)).start()
        try:
            stop = trio.Event()
            stats = {"batches": 0, "moved": 0}
            v2 = topology(2, [(a, 0, 5000), (c, 5001, 16383)])  # b leaves, c joins
            with trio.fail_after(40):
                async with trio.open_nursery() as nursery:
                    for cid in range(8):
                        nursery.start_soon(pipeliner, proxy.port, cid, stop, stats)
                    await trio.sleep(0.5)
                    before = stats["batches"]
                    path.write_text(v2.to_toml())
                    assert proxy.proc is not None
                    proxy.proc.send_signal(signal.SIGHUP)
                    await trio.sleep(0.7)
                    assert stats["batches"] > before
                    # an invalid file keeps the old config, and says why
                    path.write_text(v2.to_toml().replace("5001-16383", "5002-16383"))
                    r = proxy.client()
                    with pytest.raises(Exception, match="reload failed"):
                        await blocking(r.execute_command, "CONFIG", "RELOAD")
                    await trio.sleep(0.3)
                    stop.set()
            info = await blocking(r.info, "all")
            assert info["epoch"] == 2 and info["reloads_ok"] == 1 and info["reloads_failed"] == 1
            assert stats["batches"] > 10
            router = Router(v2)

            def keys_land_on_new_owners() -> None:
                direct = {a.port: a.client(), c.port: c.client()}
                for i in range(200):
                    key = b"after:%d" % i
                    assert r.set(key, b"1")
                    owner = router.topology.shard_for_slot(_slot(key)).primary.port
                    assert direct[owner].get(key) == b"1"
                assert b.client().get(b"after:0") is None

            await blocking(keys_land_on_new_owners)
        finally:
            proxy.stop()


def _slot(key: bytes) -> int:
    from shardgate.slots import slot_for_key

    return slot_for_key(key)


async def test_config_reload_through_one_worker_reloads_every_worker(tmp_path: Path) -> None:
    # --workers 2: a client reaches one worker; the reload must not leave the other on the old
    # topology (the parent forwards a SIGHUP to all), and no worker's epoch runs ahead.
    path = tmp_path / "cluster.toml"
    with backends("redis", 2) as (a, b):
        path.write_text(topology(1, [(a, 0, 16383)]).to_toml())
        proxy = Proxy("--config", str(path), "--workers", "2").start()
        try:

            def epochs_by_worker() -> dict[int, int]:
                seen: dict[int, int] = {}
                for _ in range(60):  # SO_REUSEPORT spreads new connections over the workers
                    r = proxy.client()
                    info = r.info("all")
                    seen[int(info["process_id"])] = int(info["epoch"])
                    r.close()
                return seen

            with trio.fail_after(40):
                before = await blocking(epochs_by_worker)
                assert len(before) == 2 and set(before.values()) == {1}
                # the same file, edited without bumping its epoch: b now owns half the slots
                path.write_text(topology(1, [(a, 0, 8191), (b, 8192, 16383)]).to_toml())
                r = proxy.client()
                assert await blocking(r.execute_command, "CONFIG", "RELOAD") in (b"OK", "OK")
                await trio.sleep(0.5)  # the other worker reloads on its SIGHUP
                after = await blocking(epochs_by_worker)
                assert len(after) == 2 and set(after.values()) == {2}, after
                router = Router(topology(2, [(a, 0, 8191), (b, 8192, 16383)]))

                def every_worker_routes_by_the_new_file() -> None:
                    for i in range(40):
                        key = b"w:%d" % i
                        client = proxy.client()
                        assert client.set(key, b"1")
                        client.close()
                        owner = router.topology.shard_for_slot(_slot(key)).primary.port
                        assert (a if owner == a.port else b).client().get(key) == b"1"

                await blocking(every_worker_routes_by_the_new_file)
        finally:
            proxy.stop()
