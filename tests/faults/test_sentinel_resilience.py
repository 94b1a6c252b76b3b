"""A sentinel survives its clients' network faults (found by the Jepsen scenario, scenario 3;
fixed in 1b80b62, kept as a regression test).

When a partition heals, the TCP connections a proxy held to the sentinels across it are reset.
Every process must survive a peer's reset; here one client connection is reset with an RST.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import trio

from tests.faults.cluster import Cluster, ShardSpec
from tests.faults.processes import Services, in_thread


async def test_a_client_connection_reset_does_not_kill_the_sentinel(
    procs: Services, tmp_path: Path
) -> None:
    def body() -> None:
        cluster = Cluster(
            procs, [ShardSpec(name="s", replicas=0)], workdir=tmp_path, proxies=0, sentinels=1
        ).start()
        sentinel = cluster.sentinels[0]
        host, port = sentinel.address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"PING\r\n")
            assert s.recv(64) == b"+PONG\r\n"
            # close with an RST, as a peer's kernel does after a partition heals
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        time.sleep(0.5)  # a crash takes a moment: trio unwinds and prints the traceback
        assert sentinel.running, "".join(sentinel.output[-12:])
        assert sentinel.client(timeout=2).ping()

    with trio.fail_after(30):
        await in_thread(body)
