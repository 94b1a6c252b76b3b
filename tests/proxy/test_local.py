from __future__ import annotations

import hiredis

from proxy.local import NOAUTH, WRONGPASS, Action, LocalContext, Session, execute
from proxy.router import lookup


def ctx(requirepass: str | None = None) -> LocalContext:
    return LocalContext(
        requirepass=requirepass,
        now=1700000000.25,
        info=lambda: {"Server": {"redis_version": "7.0.0"}, "Topology": {"epoch": 4}},
        config={"maxclients": "10000", "timeout-ms": "1000"},
    )


def run(*args: bytes, session: Session | None = None, c: LocalContext | None = None) -> object:
    s = session or Session(1, authenticated=True)
    spec = lookup(args[0])
    assert spec is not None
    reply, _ = execute(list(args), spec, s, c or ctx())
    r = hiredis.Reader()
    r.feed(reply)
    return r.gets()


def test_ping_echo_time_select() -> None:
    assert run(b"PING") == b"PONG"
    assert run(b"ping", b"hi") == b"hi"
    assert run(b"echo", b"x") == b"x"
    assert run(b"TIME") == [b"1700000000", b"250000"]
    assert run(b"select", b"0") == b"OK"
    assert str(run(b"select", b"1")) == "ERR DB index is out of range"


def test_auth_and_hello() -> None:
    s = Session(1, authenticated=False)
    c = ctx("pw")
    assert str(run(b"auth", b"bad", session=s, c=c)).startswith("WRONGPASS")
    assert not s.authenticated
    assert str(run(b"hello", b"3", session=s, c=c)).startswith("NOAUTH")
    reply = run(b"hello", b"3", b"AUTH", b"default", b"pw", b"SETNAME", b"me", session=s, c=c)
    assert s.authenticated and s.resp3 and s.name == b"me"
    assert isinstance(reply, dict) and reply[b"proto"] == 3
    assert run(b"hello", b"4", session=s, c=c).__class__.__name__ == "ReplyError"
    s2 = Session(2, authenticated=False)
    assert run(b"auth", b"pw", session=s2, c=c) == b"OK" and s2.authenticated
    assert str(run(b"auth", b"x")).startswith("ERR AUTH <password> called without")
    assert NOAUTH.startswith(b"-NOAUTH") and WRONGPASS.startswith(b"-WRONGPASS")


def test_client_commands() -> None:
    s = Session(42, authenticated=True)
    assert run(b"client", b"id", session=s) == 42
    assert run(b"client", b"getname", session=s) is None
    assert run(b"client", b"setname", b"app", session=s) == b"OK"
    assert run(b"client", b"getname", session=s) == b"app"
    assert str(run(b"client", b"setname", b"a b", session=s)).startswith("ERR Client names")
    assert run(b"client", b"setinfo", b"lib-name", b"redis-py", session=s) == b"OK"
    assert "supports only" in str(run(b"client", b"kill", b"x", session=s))


def test_info_command_cluster_config() -> None:
    info = run(b"INFO")
    assert isinstance(info, bytes) and b"# Topology\r\nepoch:4" in info
    assert run(b"info", b"topology") == b"# Topology\r\nepoch:4\r\n"
    cmds = run(b"command")
    assert isinstance(cmds, list) and any(c[0] == b"get" for c in cmds)
    assert isinstance(run(b"command", b"count"), int)
    assert run(b"command", b"docs", b"get")
    assert isinstance(run(b"cluster", b"keyslot", b"foo"), int)
    assert run(b"cluster", b"keyslot", b"{a}x") == run(b"cluster", b"keyslot", b"a")
    assert run(b"config", b"get", b"max*") == [b"maxclients", b"10000"]
    spec = lookup(b"config")
    assert spec is not None
    _, action = execute([b"config", b"reload"], spec, Session(1, authenticated=True), ctx())
    assert action is Action.RELOAD
    spec = lookup(b"quit")
    assert spec is not None
    assert execute([b"quit"], spec, Session(1, authenticated=True), ctx()) == (
        b"+OK\r\n",
        Action.CLOSE,
    )
