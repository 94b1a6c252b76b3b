"""Sending and receiving on plain non-blocking sockets from trio: try the syscall first and park
on the socket only when it would block (performance-notes.md: stream wrappers checkpoint on every
call, which costs a scheduler pass per syscall)."""

from __future__ import annotations

import socket

import trio

RECV_SIZE = 64 * 1024


class Stalled(Exception):
    """The peer did not read for longer than allowed."""


async def send_all(
    sock: socket.socket, data: bytes | bytearray, stall_seconds: float = 60.0
) -> None:
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    if sent == len(data):
        return
    view = memoryview(data)[sent:]
    while view:
        with trio.move_on_after(stall_seconds):
            await trio.lowlevel.wait_writable(sock)
            try:
                view = view[sock.send(view) :]
            except BlockingIOError:
                pass
            continue
        raise Stalled(f"peer did not read {len(view)} bytes for {stall_seconds}s")


async def recv_some(sock: socket.socket, size: int = RECV_SIZE) -> bytes:
    """The next bytes from the peer; b"" at end of stream."""
    while True:
        try:
            return sock.recv(size)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)


async def connect(host: str, port: int) -> socket.socket:
    """Open a TCP connection and hand back a plain non-blocking socket."""
    tsock = trio.socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        await tsock.connect((host, port))
    except BaseException:
        tsock.close()
        raise
    sock = socket.socket(fileno=tsock.detach())
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
