"""A small trio RESP client for the sentinel's control traffic (nodes and peer sentinels).

Control traffic is a few commands a second per node, so this favours simplicity over speed:
trio streams, hiredis for replies, one outstanding command per connection (callers serialise
with the connection's lock), and a hard deadline on connect and on every call set by the caller
with a cancel scope.
"""

from __future__ import annotations

from typing import Any

import hiredis
import trio

from shardgate.resp import encode_command

MAX_REPLY_BYTES = 64 * 1024 * 1024


class ReplyError(Exception):
    """The server answered with a RESP error; ``str(exc)`` is its text."""


class RespClient:
    def __init__(self, host: str, port: int, *, password: str | None = None) -> None:
        self.host = host
        self.port = port
        self.password = password
        self.lock = trio.Lock()
        self._stream: trio.SocketStream | None = None
        self._reader: Any = None

    async def _connect(self) -> trio.SocketStream:
        stream = await trio.open_tcp_stream(self.host, self.port)
        self._stream = stream
        self._reader = hiredis.Reader(replyError=ReplyError)
        if self.password:
            await self._call_on(stream, ("AUTH", self.password))
        return stream

    async def call(self, *args: str | bytes | int) -> Any:
        """Send one command, return its reply (raises ReplyError on a RESP error, OSError on a
        broken connection, after which the next call reconnects)."""
        async with self.lock:
            try:
                stream = self._stream or await self._connect()
                return await self._call_on(stream, args)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                # Translated once, here: callers handle a broken connection as OSError.
                await self.close()
                raise OSError(f"{self.host}:{self.port}: {exc}") from exc
            except BaseException:
                await self.close()
                raise

    async def _call_on(self, stream: trio.SocketStream, args: tuple[str | bytes | int, ...]) -> Any:
        raw = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        await stream.send_all(encode_command(raw))
        received = 0
        while True:
            reply = self._reader.gets()
            if reply is not False:
                if isinstance(reply, ReplyError):
                    raise reply
                return reply
            data = await stream.receive_some(65536)
            if not data:
                raise OSError(f"{self.host}:{self.port} closed the connection")
            received += len(data)
            if received > MAX_REPLY_BYTES:
                raise OSError(f"{self.host}:{self.port} sent an oversized reply")
            self._reader.feed(data)

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()


def parse_info(text: bytes | str) -> dict[str, str]:
    """INFO's ``field:value`` lines as a dict."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, sep, value = line.partition(":")
            if sep:
                out[key] = value
    return out
