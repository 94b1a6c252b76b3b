"""The namespace lab network: hosts reach each other, a partition times out, healing restores."""

from __future__ import annotations

import re
import socket
import time

import pytest
import redis
import trio

from tests.faults import netns
from tests.faults.cluster import link_up, wait_until
from tests.faults.processes import Service, Services, in_thread


def connect_outcome(address: str, timeout: float) -> str:
    host, port = address.rsplit(":", 1)
    start = time.monotonic()
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return "connected"
    except TimeoutError:
        return f"timeout after {time.monotonic() - start:.1f}s"
    except OSError as exc:
        return f"error {exc}"  # refused/unreachable: a partition must never look like this


async def test_partition_drops_silently_and_heal_restores(
    network: netns.Network, procs: Services
) -> None:
    def body() -> None:
        a = procs.add(Service("a", ["node"], host=network.add_host("a")))
        b = procs.add(Service("b", ["node", "--replicaof", a.address], host=network.add_host("b")))
        wait_until(lambda: link_up(b), 10, "replication link across the router")
        a.client().set("k", "1")
        wait_until(lambda: b.client().get("k") == b"1", 5, "replicated")
        # the namespace really is separate: b's address is not on the client's loopback
        assert connect_outcome(f"127.0.0.1:{b.port}", 0.5) != "connected"

        network.partition(["client"], ["b"])
        assert connect_outcome(b.address, 0.5).startswith("timeout")
        assert connect_outcome(a.address, 0.5) == "connected"  # only the cut pair is affected
        slow = b.client(timeout=0.5)
        with pytest.raises(redis.TimeoutError):
            slow.ping()
        a.client().set("k", "2")  # a and b are on the same side: replication goes on
        network.heal()
        assert connect_outcome(b.address, 2) == "connected"
        assert b.client().get("k") == b"2"

        network.partition(["a"], ["b"])
        a.client().set("k", "3")
        time.sleep(0.3)
        assert b.client().get("k") == b"2"  # nothing crosses
        network.heal()
        wait_until(lambda: b.client().get("k") == b"3", 30, "replication after healing")

    with trio.fail_after(90):
        await in_thread(body)


def test_close_removes_every_namespace_and_the_sweep_spares_live_runs(
    netns_reason: str | None,
) -> None:
    if netns_reason is not None:
        pytest.skip(netns_reason)
    with netns.network() as net:
        net.add_host("x")
        mine = [n for n in netns.namespaces() if n.startswith(net.tag)]
        assert len(mine) == 2  # the router and x
        assert netns.sweep_stale() == []  # this process is alive: nothing of ours is stale
        # a namespace left by a process that no longer exists is swept
        stale = "sg-999999999x0-r"
        netns.ip("netns", "add", stale)
    assert not [n for n in netns.namespaces() if n.startswith(net.tag)]
    assert stale in netns.sweep_stale()
    assert stale not in netns.namespaces()
    assert not re.search(rf"\b{net.root_link}[@:]", netns.ip("-o", "link").stdout)
    assert f"10.{net.octet}." not in netns.ip("route").stdout
