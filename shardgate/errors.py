"""Typed errors that become RESP error replies; each is translated to bytes in one place."""

from __future__ import annotations

from shardgate.resp import encode_error


class CommandError(Exception):
    """A command failed; ``message`` is the full error line without the dash, e.g.
    ``ERR syntax error`` or ``WRONGTYPE Operation against a key holding the wrong kind of value``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def reply(self) -> bytes:
        return encode_error(self.message)


def syntax_error() -> CommandError:
    return CommandError("ERR syntax error")


def not_integer() -> CommandError:
    return CommandError("ERR value is not an integer or out of range")


def wrong_arity(name: str) -> CommandError:
    return CommandError(f"ERR wrong number of arguments for '{name}' command")


def unknown_command(args: list[bytes]) -> CommandError:
    """Redis 7's text: the name, then up to the first arguments, each quoted."""
    name = args[0].decode("utf-8", "replace")
    shown = "".join(f"'{a.decode('utf-8', 'replace')[:128]}' " for a in args[1:])
    return CommandError(f"ERR unknown command '{name[:128]}', with args beginning with: {shown}")
