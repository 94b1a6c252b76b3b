"""Per-connection state of a store node client (what CLIENT LIST shows)."""

from __future__ import annotations

from collections.abc import Callable

from shardgate.resp import RequestLimits, RequestParser


class Session:
    __slots__ = (
        "addr",
        "authenticated",
        "closing",
        "created",
        "fd",
        "flags",
        "id",
        "kill",
        "laddr",
        "last_cmd",
        "last_interaction",
        "lib_name",
        "lib_ver",
        "name",
        "parser",
        "resp3",
    )

    def __init__(
        self,
        *,
        client_id: int,
        addr: str,
        laddr: str,
        fd: int,
        now: float,
        limits: RequestLimits,
        needs_auth: bool,
    ) -> None:
        self.id = client_id
        self.addr = addr
        self.laddr = laddr
        self.fd = fd
        self.created = now
        self.last_interaction = now
        self.name = b""
        self.lib_name = b""
        self.lib_ver = b""
        self.resp3 = False
        self.authenticated = not needs_auth
        self.closing = False
        self.flags = "N"  # CLIENT LIST flags: N normal, S a replica link
        # Set by the server: drops the connection now, whatever it is doing (CLIENT KILL).
        self.kill: Callable[[], None] = lambda: None
        self.last_cmd = "NULL"
        self.parser = RequestParser(limits, authenticated=not needs_auth)

    def set_authenticated(self, value: bool) -> None:
        self.authenticated = value
        self.parser.authenticated = value

    def describe(self, now: float) -> str:
        """One CLIENT LIST line, with Redis's field names."""
        fields = (
            ("id", str(self.id)),
            ("addr", self.addr),
            ("laddr", self.laddr),
            ("fd", str(self.fd)),
            ("name", self.name.decode("utf-8", "replace")),
            ("age", str(int(now - self.created))),
            ("idle", str(int(now - self.last_interaction))),
            ("flags", self.flags),
            ("db", "0"),
            ("sub", "0"),
            ("psub", "0"),
            ("ssub", "0"),
            ("multi", "-1"),
            ("qbuf", str(self.parser.buffered)),
            ("qbuf-free", "0"),
            ("argv-mem", "0"),
            ("multi-mem", "0"),
            ("rbs", "0"),
            ("rbp", "0"),
            ("obl", "0"),
            ("oll", "0"),
            ("omem", "0"),
            ("tot-mem", "0"),
            ("events", "r"),
            ("cmd", self.last_cmd),
            ("user", "default"),
            ("redir", "-1"),
            ("resp", "3" if self.resp3 else "2"),
            ("lib-name", self.lib_name.decode("utf-8", "replace")),
            ("lib-ver", self.lib_ver.decode("utf-8", "replace")),
        )
        return " ".join(f"{k}={v}" for k, v in fields)
