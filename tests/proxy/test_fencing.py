"""The proxy announces its topology epoch to shardgate nodes (SG.FENCE) on every connection."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import redis
import trio

from shardgate.topology import NodeAddress, Topology
from tests.proxy.conftest import Proxy, backends, node_available
from tests.proxy.test_integration import blocking

pytestmark = pytest.mark.skipif(not node_available(), reason="storenode server not available")


def node_epoch(client: redis.Redis) -> int:
    return int(client.info("all")["shardgate_epoch"])


async def test_epoch_is_announced_and_stale_proxies_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    with backends("node", 2) as bs:
        addrs = [NodeAddress("127.0.0.1", b.port) for b in bs]
        path.write_text(Topology.even(addrs, epoch=3).to_toml())
        proxy = Proxy("--config", str(path)).start()
        try:

            def announced() -> None:
                assert proxy.client().set("k", "v")
                assert [node_epoch(b.client()) for b in bs] == [3, 3]

            with trio.fail_after(20):
                await blocking(announced)
                # a reload to a newer epoch is announced on the live connections
                path.write_text(Topology.even(addrs, epoch=5).to_toml())
                assert proxy.proc is not None
                proxy.proc.send_signal(signal.SIGHUP)
                with trio.fail_after(5):
                    while await blocking(lambda: [node_epoch(b.client()) for b in bs]) != [5, 5]:  # noqa: ASYNC110
                        await trio.sleep(0.05)
                assert await blocking(lambda: proxy.client().get("k")) == b"v"
        finally:
            proxy.stop()

        # a proxy still routing by epoch 3 is refused by nodes that have seen epoch 5
        path.write_text(Topology.even(addrs, epoch=3).to_toml())
        stale = Proxy("--config", str(path)).start()
        try:

            def refused() -> None:
                with pytest.raises(redis.ResponseError, match="is down"):
                    stale.client().get("k")
                backends_info = stale.client().info("backends")
                assert all("STALE" in str(v["last_error"]) for v in backends_info.values())

            with trio.fail_after(20):
                await blocking(refused)
        finally:
            stale.stop()
