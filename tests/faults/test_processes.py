"""Process faults on a real node: SIGSTOP/SIGCONT, kill -9, restart on the same port."""

from __future__ import annotations

import socket

import pytest
import redis
import trio

from tests.faults.processes import Service, Services, in_thread


async def test_pause_resume_kill_restart(procs: Services) -> None:
    def body() -> None:
        node = procs.add(Service("n", ["node"]))
        port = node.port
        node.client().set("k", "v")
        node.pause()
        with pytest.raises(redis.TimeoutError):
            node.client(timeout=0.3).ping()  # frozen: connected, silent
        node.resume()
        assert node.client().get("k") == b"v"
        node.kill()
        assert not node.running
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", port), timeout=1),
        ):
            pass
        node.restart()  # the same port, an empty node (no persistence)
        assert node.port == port and node.running
        assert node.client().get("k") is None
        assert node.rss_bytes() > 0 and node.cpu_seconds() >= 0

    with trio.fail_after(30):
        await in_thread(body)
