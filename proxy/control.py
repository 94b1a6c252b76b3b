"""A small RESP client for the proxy's control traffic: sentinels and INFO polls of nodes.

A few commands a second per peer, so simple beats fast: one trio stream, hiredis for replies,
one command at a time. Callers put every call under their own cancel scope (``fail_after``);
an error or a cancellation in the middle of a call leaves the stream unusable, so the owner
closes it and reconnects.
"""

from __future__ import annotations

from typing import Any

import hiredis
import trio

from shardgate.resp import encode_command

# SG.TOPOLOGY and INFO replies are a few KB; anything this large is a broken peer.
MAX_REPLY_BYTES = 16 * 1024 * 1024


class ControlError(Exception):
    """The peer answered with an error, closed, or sent garbage; ``str`` says which."""


class ControlClient:
    __slots__ = ("_reader", "address", "stream")

    def __init__(self, stream: trio.abc.Stream, address: str) -> None:
        self.stream = stream
        self.address = address
        self._reader: Any = hiredis.Reader(replyError=ControlError)

    @classmethod
    async def connect(cls, host: str, port: int, *, password: str | None) -> ControlClient:
        stream = await trio.open_tcp_stream(host, port)
        client = cls(stream, f"{host}:{port}")
        try:
            if password:
                await client.call(b"AUTH", password.encode())
        except BaseException:
            await client.aclose()
            raise
        return client

    async def send(self, *args: bytes) -> None:
        await self.stream.send_all(encode_command(list(args)))

    async def reply(self) -> Any:
        """The next reply (a pub/sub push, too); a RESP error raises ``ControlError``."""
        received = 0
        while True:
            item = self._reader.gets()
            if item is not False:
                if isinstance(item, ControlError):
                    raise item
                return item
            data = await self.stream.receive_some(65536)
            if not data:
                raise ControlError(f"{self.address} closed the connection")
            received += len(data)
            if received > MAX_REPLY_BYTES:
                raise ControlError(f"{self.address} sent an oversized reply")
            self._reader.feed(data)

    async def call(self, *args: bytes) -> Any:
        await self.send(*args)
        return await self.reply()

    async def aclose(self) -> None:
        await self.stream.aclose()
