"""A TCP forwarder that injects link faults: latency, stalls, resets, tiny segments, bandwidth.

How it works
- ``FaultProxy`` listens on one address and forwards every accepted connection to one target.
  Each connection has two pumps (client -> target is "up", target -> client is "down"). A pump
  reader receives bytes, stamps each chunk with the time it arrived and hands it to the pump
  sender through a small bounded channel, so a stalled or throttled sender pushes back on the
  reader and, through TCP, on the peer: the proxy's memory stays bounded whatever the fault.
- The sender applies the faults in force *when it sends*, so switching a fault on or off takes
  effect on connections already open: latency (a chunk is not sent before arrival + latency +
  jitter, and never overtakes the chunk before it), stall (nothing is sent until un-stalled),
  bandwidth (a token bucket in bytes per second), slicing (chunks of at most N bytes, each its
  own ``send`` with Nagle off, so the receiver sees tiny segments) and close-after-N-bytes (a
  connection that has carried N bytes since the fault was set is cut: RST to both sides).
- ``reset_connections()`` aborts every open connection with an RST (SO_LINGER 0), and
  ``refuse`` resets each new connection as soon as it is accepted.
- Faults are changed in-process (``proxy.faults = Faults(...)``, ``reset_connections()``) or
  from outside through a line-based control port (``python -m shardgate.faultproxy``):
  ``latency MS [JITTER_MS]``, ``stall on|off``, ``bandwidth BYTES_PER_S|off``, ``slice N|off``,
  ``close-after N|off``, ``refuse on|off``, ``direction up|down|both``, ``reset``, ``clear``,
  ``status``. Each answers one line: ``OK`` or ``ERR ...`` (``status`` answers the settings);
  ``python -m shardgate.faultproxy ctl HOST:PORT COMMAND`` sends one from a shell.

Traffic goes only where it is told: the listen and target addresses given on the command line.
"""

from __future__ import annotations

import argparse
import random
import socket
import struct
import sys
from collections.abc import Sequence
from typing import Literal

import attrs
import trio
import trio.lowlevel

Direction = Literal["up", "down", "both"]
CHUNK = 65536  # bytes per receive; one chunk is the unit of latency and of the pump channel
PUMP_CHUNKS = 16  # chunks buffered between reader and sender: at most 1 MiB per direction
BANDWIDTH_STEP_S = 0.01  # the token bucket sends at most 10 ms worth of bytes at a time
POLL_S = 0.005  # how often a stalled sender looks at the faults again


@attrs.frozen(slots=True, kw_only=True)
class Faults:
    """The link faults in force. The default is a clean link."""

    latency: float = 0.0  # seconds added to every chunk
    jitter: float = 0.0  # up to this many more seconds, uniformly random, order kept
    stall: bool = False  # deliver nothing (bytes queue up, then TCP pushes back)
    bandwidth: int | None = None  # bytes per second per connection and direction
    slice: int | None = None  # deliver in segments of at most this many bytes
    close_after: int | None = None  # cut a connection after it carried this many bytes
    refuse: bool = False  # reset each new connection at once
    direction: Direction = "both"  # which direction the delivery faults apply to

    def __attrs_post_init__(self) -> None:
        if self.latency < 0 or self.jitter < 0:
            raise ValueError("latency and jitter must be >= 0")
        for name in ("bandwidth", "slice", "close_after"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or off")
        if self.direction not in ("up", "down", "both"):
            raise ValueError("direction must be up, down or both")

    def applies(self, direction: Direction) -> bool:
        return self.direction == "both" or self.direction == direction


CLEAN = Faults()


def _abort(stream: trio.SocketStream) -> None:
    """Close with an RST instead of a FIN, as a crashed or reset peer does."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


class _Connection:
    def __init__(self, proxy: FaultProxy, client: trio.SocketStream) -> None:
        self.proxy = proxy
        self.client = client
        self.target: trio.SocketStream | None = None
        self.cancel = trio.CancelScope()
        self.carried = {"up": 0, "down": 0}  # bytes since the close-after fault was (re)armed
        self.armed_generation = proxy.generation

    def abort(self) -> None:
        for stream in (self.client, self.target):
            if stream is not None:
                _abort(stream)
        self.cancel.cancel()

    async def run(self) -> None:
        try:
            with self.cancel:
                await self._forward()
        finally:
            for stream in (self.client, self.target):
                if stream is not None:
                    with trio.CancelScope(shield=True):
                        await trio.aclose_forcefully(stream)

    async def _forward(self) -> None:
        if self.proxy.faults.refuse:
            self.abort()
            return
        try:
            host, port = self.proxy.target
            self.target = await trio.open_tcp_stream(host, port)
            self.target.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
            self.client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, self.client, self.target, "up")
                nursery.start_soon(self._pump, self.target, self.client, "down")
        except* (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            self.abort()  # one side failed: the other sees a reset, as through a router

    async def _pump(
        self, src: trio.SocketStream, dst: trio.SocketStream, direction: Direction
    ) -> None:
        send, receive = trio.open_memory_channel[tuple[float, bytes]](PUMP_CHUNKS)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read, src, send)
            await self._deliver(receive, dst, direction)
            nursery.cancel_scope.cancel()
        # the source closed cleanly and everything was delivered: pass the FIN on, and let
        # the other direction finish (a half-closed connection still carries replies)
        await dst.send_eof()

    async def _read(
        self, src: trio.SocketStream, out: trio.MemorySendChannel[tuple[float, bytes]]
    ) -> None:
        async with out:
            while data := await src.receive_some(CHUNK):
                await out.send((trio.current_time(), data))

    async def _deliver(
        self,
        chunks: trio.MemoryReceiveChannel[tuple[float, bytes]],
        dst: trio.SocketStream,
        direction: Direction,
    ) -> None:
        proxy = self.proxy
        not_before = 0.0  # keeps chunks in order whatever the jitter
        async for arrived, data in chunks:
            faults = proxy.faults
            if faults.applies(direction) and (faults.latency or faults.jitter):
                due = arrived + faults.latency + random.uniform(0, faults.jitter)
                not_before = max(not_before, due)
                await trio.sleep_until(not_before)
            view = memoryview(data)
            while view:
                faults = proxy.faults
                on = faults.applies(direction)
                if on and faults.stall:
                    await trio.sleep(POLL_S)
                    continue
                size = len(view)
                if on and faults.slice is not None:
                    size = min(size, faults.slice)
                if on and faults.bandwidth is not None:
                    size = min(size, max(1, int(faults.bandwidth * BANDWIDTH_STEP_S)))
                if on and faults.close_after is not None:
                    if self.armed_generation != proxy.generation:
                        self.armed_generation = proxy.generation
                        self.carried = {"up": 0, "down": 0}
                    size = min(size, faults.close_after - self.carried[direction])
                    if size <= 0:
                        self.abort()
                        return
                await dst.send_all(view[:size])
                view = view[size:]
                self.carried[direction] += size
                proxy.forwarded[direction] += size
                if on and faults.bandwidth is not None:
                    await trio.sleep(size / faults.bandwidth)
                elif on and faults.slice is not None:
                    await trio.lowlevel.checkpoint()  # let the segment leave on its own


class FaultProxy:
    """Forward ``listen`` -> ``target``, with ``faults`` applied to every connection."""

    def __init__(self, target: tuple[str, int], *, faults: Faults = CLEAN) -> None:
        self.target = target
        self._faults = faults
        self.generation = 0  # bumped on every change so close-after counts from the change
        self.connections: set[_Connection] = set()
        self.accepted = 0
        self.forwarded: dict[str, int] = {"up": 0, "down": 0}
        self.address: tuple[str, int] = ("", 0)

    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        self._faults = value
        self.generation += 1

    def set(self, **changes: object) -> Faults:
        self.faults = attrs.evolve(self._faults, **changes)  # type: ignore[arg-type]
        return self._faults

    def clear(self) -> None:
        self.faults = CLEAN

    def reset_connections(self) -> int:
        """Abort every open connection with an RST; returns how many there were."""
        victims = list(self.connections)
        for conn in victims:
            conn.abort()
        return len(victims)

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        sockname = listeners[0].socket.getsockname()
        self.address = (sockname[0], sockname[1])
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            task_status.started()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                stream = await listener.accept()
                self.accepted += 1
                conn = _Connection(self, stream)
                self.connections.add(conn)
                nursery.start_soon(self._run, conn)

    async def _run(self, conn: _Connection) -> None:
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)


# --- control channel ---------------------------------------------------------------------------


def _switch(word: str) -> bool:
    if word not in ("on", "off"):
        raise ValueError("expected on or off")
    return word == "on"


def _amount(word: str) -> int | None:
    return None if word == "off" else int(word)


def apply_command(proxy: FaultProxy, line: str) -> str:
    """Run one control line against ``proxy``; returns the reply line (without newline)."""
    words = line.split()
    if not words:
        return "ERR empty command"
    verb, args = words[0].lower(), words[1:]
    try:
        if verb == "latency" and 1 <= len(args) <= 2:
            jitter = float(args[1]) / 1000 if len(args) == 2 else 0.0
            proxy.set(latency=float(args[0]) / 1000, jitter=jitter)
        elif verb == "stall" and len(args) == 1:
            proxy.set(stall=_switch(args[0]))
        elif verb == "refuse" and len(args) == 1:
            proxy.set(refuse=_switch(args[0]))
        elif verb == "bandwidth" and len(args) == 1:
            proxy.set(bandwidth=_amount(args[0]))
        elif verb == "slice" and len(args) == 1:
            proxy.set(slice=_amount(args[0]))
        elif verb == "close-after" and len(args) == 1:
            proxy.set(close_after=_amount(args[0]))
        elif verb == "direction" and len(args) == 1:
            proxy.set(direction=args[0])
        elif verb == "reset" and not args:
            return f"OK {proxy.reset_connections()}"
        elif verb == "clear" and not args:
            proxy.clear()
        elif verb == "status" and not args:
            f = proxy.faults
            fields = {**attrs.asdict(f), "connections": len(proxy.connections)}
            fields |= {"accepted": proxy.accepted, "up": proxy.forwarded["up"]}
            fields["down"] = proxy.forwarded["down"]
            return "OK " + " ".join(f"{k}={v}" for k, v in fields.items())
        else:
            return f"ERR unknown command or wrong arguments: {line.strip()!r}"
    except ValueError as exc:
        return f"ERR {exc}"
    return "OK"


async def serve_control(
    proxy: FaultProxy,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    listeners = await trio.open_tcp_listeners(port, host=host)
    sockname = listeners[0].socket.getsockname()

    async def handle(stream: trio.SocketStream) -> None:
        buffer = b""
        try:
            while data := await stream.receive_some(4096):
                buffer += data
                if len(buffer) > 4096:
                    return  # not a control client
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    reply = apply_command(proxy, line.decode("utf-8", "replace"))
                    await stream.send_all(reply.encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        task_status.started((sockname[0], sockname[1]))


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def send_control(address: tuple[str, int], line: str, *, timeout: float = 5.0) -> str:
    """Send one control line to a running fault proxy; returns its reply line."""
    with socket.create_connection(address, timeout=timeout) as s:
        s.sendall(line.encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            data = s.recv(4096)
            if not data:
                break
            reply += data
    return reply.decode().strip()


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ctl"]:
        # python -m shardgate.faultproxy ctl HOST:PORT stall on
        if len(argv) < 3:
            sys.exit("usage: python -m shardgate.faultproxy ctl CONTROL_HOST:PORT COMMAND [ARGS]")
        reply = send_control(_address(argv[1]), " ".join(argv[2:]))
        print(reply)
        sys.exit(0 if reply.startswith("OK") else 1)
    parser = argparse.ArgumentParser(
        prog="python -m shardgate.faultproxy",
        description="Forward TCP from --listen to --target with link faults switched at run time. "
        "`python -m shardgate.faultproxy ctl CONTROL_HOST:PORT COMMAND` sends one command.",
    )
    parser.add_argument("--listen", type=_address, default=("127.0.0.1", 0), metavar="HOST:PORT")
    parser.add_argument("--target", type=_address, required=True, metavar="HOST:PORT")
    parser.add_argument(
        "--control", type=_address, default=("127.0.0.1", 0), metavar="HOST:PORT",
        help="line-based control port (latency, stall, bandwidth, slice, close-after, reset, ...)",
    )  # fmt: skip
    args = parser.parse_args(argv)

    async def run() -> None:
        proxy = FaultProxy(args.target)
        async with trio.open_nursery() as nursery:
            control = await nursery.start(serve_control, proxy, *args.control)
            await nursery.start(proxy.serve, *args.listen)
            # the control line first: whoever waits for "listening on" can use both at once
            print(f"faultproxy control on {control[0]}:{control[1]}", flush=True)
            host, port = proxy.address
            print(f"faultproxy listening on {host}:{port}", flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
