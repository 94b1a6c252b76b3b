"""The fault proxy with real sockets: an echo server behind it, a client in front of it."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from functools import partial

import pytest
import trio

from shardgate.faultproxy import FaultProxy, Faults, apply_command
from tests.procs import ROOT


async def echo(stream: trio.SocketStream) -> None:
    try:
        async with stream:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


@pytest.fixture
async def proxy(nursery: trio.Nursery) -> AsyncIterator[FaultProxy]:
    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    fp = FaultProxy(("127.0.0.1", port))
    await nursery.start(fp.serve, "127.0.0.1", 0)
    yield fp


async def connect(fp: FaultProxy) -> trio.SocketStream:
    return await trio.open_tcp_stream(*fp.address)


async def receive_exactly(stream: trio.SocketStream, n: int) -> tuple[bytes, int]:
    """Read ``n`` bytes; also return how many reads it took (how finely it was sliced)."""
    got, reads = bytearray(), 0
    while len(got) < n:
        data = await stream.receive_some(n - len(got))
        assert data, f"EOF after {len(got)} of {n} bytes"
        got += data
        reads += 1
    return bytes(got), reads


async def round_trip(stream: trio.SocketStream, payload: bytes) -> float:
    start = trio.current_time()
    await stream.send_all(payload)
    got, _ = await receive_exactly(stream, len(payload))
    assert got == payload
    return trio.current_time() - start


async def test_clean_link_forwards_everything_both_ways(proxy: FaultProxy) -> None:
    with trio.fail_after(10):
        async with await connect(proxy) as s:
            payload = os.urandom(3_000_000)
            async with trio.open_nursery() as n:
                n.start_soon(s.send_all, payload)
                got, _ = await receive_exactly(s, len(payload))
            assert got == payload
            assert await round_trip(s, b"ping") < 0.05


async def test_latency_and_jitter_delay_each_direction_and_keep_order(proxy: FaultProxy) -> None:
    with trio.fail_after(10):
        async with await connect(proxy) as s:
            proxy.faults = Faults(latency=0.05)
            rtt = await round_trip(s, b"x")
            assert 0.1 <= rtt < 0.3, rtt  # 50 ms each way
            proxy.faults = Faults(latency=0.02, jitter=0.05, direction="down")
            rtt = await round_trip(s, b"y")
            assert 0.02 <= rtt < 0.2, rtt
            # many small writes under jitter still arrive in order
            payload = b"".join(b"%06d" % i for i in range(500))
            async with trio.open_nursery() as n:

                async def dribble() -> None:
                    for i in range(0, len(payload), 60):
                        await s.send_all(payload[i : i + 60])
                        await trio.sleep(0.001)

                n.start_soon(dribble)
                got, _ = await receive_exactly(s, len(payload))
            assert got == payload
            proxy.clear()
            assert await round_trip(s, b"z") < 0.05


async def test_stall_delivers_nothing_then_everything_and_pushes_back(proxy: FaultProxy) -> None:
    with trio.fail_after(10):
        async with await connect(proxy) as s:
            proxy.set(stall=True)
            await s.send_all(b"held")
            with trio.move_on_after(0.3):
                await s.receive_some(10)
                raise AssertionError("bytes crossed a stalled link")
            # the sender is pushed back: tens of MB cannot all be written into a stalled link
            sent = 0
            with trio.move_on_after(1.0):
                while True:
                    await s.send_all(b"\0" * 65536)
                    sent += 65536
            assert sent < 32 * 1024 * 1024, sent
            proxy.set(stall=False)
            got, _ = await receive_exactly(s, 4 + sent)
            assert got.startswith(b"held")


async def test_slicing_delivers_tiny_segments_intact(proxy: FaultProxy) -> None:
    with trio.fail_after(10):
        async with await connect(proxy) as s:
            proxy.set(slice=1, direction="up")
            payload = bytes(range(256)) * 4
            await s.send_all(payload)
            got, reads = await receive_exactly(s, len(payload))
            assert got == payload
            assert reads > 20, reads  # the echo server saw (and echoed) many tiny pieces


async def test_bandwidth_cap(proxy: FaultProxy) -> None:
    with trio.fail_after(10):
        async with await connect(proxy) as s:
            proxy.set(bandwidth=200_000, direction="down")
            took = await round_trip(s, b"b" * 100_000)
            assert 0.4 <= took < 1.2, took  # 100 kB at 200 kB/s
            proxy.set(bandwidth=None)
            assert await round_trip(s, b"b" * 100_000) < 0.2


async def test_close_after_n_bytes_cuts_the_connection(proxy: FaultProxy) -> None:
    with trio.fail_after(10):
        async with await connect(proxy) as s:
            await round_trip(s, b"before")  # counted from the moment the fault is set
            proxy.set(close_after=1000, direction="down")
            await s.send_all(b"a" * 3000)
            got = bytearray()
            with pytest.raises(trio.BrokenResourceError):
                while data := await s.receive_some(65536):
                    got += data
                raise trio.BrokenResourceError  # a clean EOF is fine too
            # "up" is not counted, "down" stops at exactly 1000
            assert len(got) == 1000


async def test_reset_and_refuse(proxy: FaultProxy) -> None:
    with trio.fail_after(10):
        s = await connect(proxy)
        await round_trip(s, b"hello")
        assert proxy.reset_connections() == 1
        with pytest.raises(trio.BrokenResourceError):
            while await s.receive_some(10):
                pass
            raise trio.BrokenResourceError
        await s.aclose()
        proxy.set(refuse=True)
        s = await connect(proxy)  # accepted by the kernel, then reset
        with pytest.raises(trio.BrokenResourceError):
            await s.send_all(b"x")
            while await s.receive_some(10):
                pass
            raise trio.BrokenResourceError
        await s.aclose()
        proxy.set(refuse=False)
        async with await connect(proxy) as s:
            await round_trip(s, b"again")


async def test_a_target_that_goes_away_resets_the_client(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        accepted: list[trio.SocketStream] = []
        arrived = trio.Event()

        async def hold(stream: trio.SocketStream) -> None:
            accepted.append(stream)
            arrived.set()
            await trio.sleep_forever()

        listeners = await nursery.start(partial(trio.serve_tcp, hold, 0, host="127.0.0.1"))
        fp = FaultProxy(("127.0.0.1", listeners[0].socket.getsockname()[1]))
        await nursery.start(fp.serve, "127.0.0.1", 0)
        async with await connect(fp) as s:
            await arrived.wait()
            await s.send_all(b"x")
            accepted[0].socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            await accepted[0].aclose()  # as a SIGKILLed server: RST
            with pytest.raises(trio.BrokenResourceError):
                while await s.receive_some(10):
                    pass
                raise trio.BrokenResourceError
        # and nothing is left open in the proxy
        for _ in range(500):
            if not fp.connections:
                break
            await trio.sleep(0.01)
        assert not fp.connections


def test_control_commands() -> None:
    fp = FaultProxy(("127.0.0.1", 1))
    assert apply_command(fp, "latency 20 5") == "OK"
    assert (fp.faults.latency, fp.faults.jitter) == (0.02, 0.005)
    assert apply_command(fp, "stall on") == "OK" and fp.faults.stall
    assert apply_command(fp, "bandwidth 1000") == "OK" and fp.faults.bandwidth == 1000
    assert apply_command(fp, "slice 3") == "OK" and fp.faults.slice == 3
    assert apply_command(fp, "close-after 10") == "OK" and fp.faults.close_after == 10
    assert apply_command(fp, "direction down") == "OK" and fp.faults.direction == "down"
    assert apply_command(fp, "status").startswith("OK latency=0.02")
    assert apply_command(fp, "clear") == "OK" and fp.faults == Faults()
    assert apply_command(fp, "reset") == "OK 0"
    for bad in ("", "stall maybe", "bandwidth 0", "slice -1", "latency x", "direction left",
                "latency -5", "frobnicate", "reset now"):  # fmt: skip
        assert apply_command(fp, bad).startswith("ERR"), bad
    assert fp.faults == Faults()  # no bad command changed anything


async def test_command_line_proxy_with_control_port(nursery: trio.Nursery) -> None:
    """``python -m shardgate.faultproxy`` as lab users run it: forward, then slow it by command."""
    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    cmd = [sys.executable, "-m", "shardgate.faultproxy", "--target", f"127.0.0.1:{port}"]
    process = await trio.lowlevel.open_process(cmd, cwd=ROOT, stdout=subprocess.PIPE)
    try:
        with trio.fail_after(15):
            assert process.stdout is not None
            out = b""
            while out.count(b"\n") < 2:
                data = await process.stdout.receive_some(1024)
                assert data, out
                out += data
            lines = out.decode().splitlines()
            control = lines[0].split()[-1].rpartition(":")
            listen = lines[1].split()[-1].rpartition(":")
            async with (
                await trio.open_tcp_stream(control[0], int(control[2])) as ctl,
                await trio.open_tcp_stream(listen[0], int(listen[2])) as s,
            ):
                await round_trip(s, b"through")
                await ctl.send_all(b"latency 100\n")
                assert await ctl.receive_some(100) == b"OK\n"
                assert await round_trip(s, b"slow") >= 0.2
                await ctl.send_all(b"nonsense\n")
                assert (await ctl.receive_some(100)).startswith(b"ERR")
            # the shell way: one command per invocation, exit status 0 on OK
            ctl_cmd = [sys.executable, "-m", "shardgate.faultproxy", "ctl", lines[0].split()[-1]]
            done = await trio.run_process([*ctl_cmd, "clear"], cwd=ROOT, capture_stdout=True)
            assert done.stdout == b"OK\n"
            bad = await trio.run_process([*ctl_cmd, "stall", "maybe"], cwd=ROOT,
                                         capture_stdout=True, check=False)  # fmt: skip
            assert bad.returncode == 1 and bad.stdout.startswith(b"ERR")
    finally:
        process.kill()
        with trio.fail_after(5):
            await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()
