"""The store node as users meet it: a real process, driven by redis-py, redis-cli and raw bytes."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest
import redis

from tests.procs import Proc, free_port, running


@pytest.fixture(scope="module")
def node() -> Iterator[Proc]:
    with running(["node", "--port", "0", "--maxmemory", "64mb"]) as proc:
        yield proc


@pytest.fixture
def r(node: Proc) -> Iterator[redis.Redis]:
    client = redis.Redis(host=node.host, port=node.port, socket_timeout=5)
    client.flushall()
    yield client
    client.close()


def raw_exchange(proc: Proc, payload: bytes, *, wait: float = 0.3) -> tuple[bytes, bool]:
    """Send bytes, collect whatever comes back; report whether the server closed the socket."""
    with socket.create_connection((proc.host, proc.port), timeout=5) as s:
        s.sendall(payload)
        s.settimeout(wait)
        chunks = []
        closed = False
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    closed = True
                    break
                chunks.append(data)
        except TimeoutError:
            pass
        except ConnectionResetError:
            closed = True
        return b"".join(chunks), closed


def test_redis_py_round_trip(r: redis.Redis) -> None:
    assert r.ping()
    assert r.set("k", "v", ex=100)
    assert r.get("k") == b"v"
    assert r.ttl("k") == 100
    assert r.incr("n") == 1
    assert r.mset({"a": "1", "b": "2"})
    assert r.mget("a", "b", "missing") == [b"1", b"2", None]
    assert r.delete("a", "b", "missing") == 2
    assert r.dbsize() == 2
    assert r.type("k") == b"string"
    with pytest.raises(redis.ResponseError, match="not an integer"):
        r.incr("k")


def test_resp3_hello(node: Proc) -> None:
    client = redis.Redis(host=node.host, port=node.port, protocol=3)
    try:
        client.set("x", "1")
        assert client.get("x") == b"1"
        info = client.execute_command("HELLO", "3")
        assert info[b"proto"] == 3
        assert client.get("nope") is None
    finally:
        client.close()


def test_pipeline_of_many_commands_in_order(r: redis.Redis) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(5000):
        pipe.set(f"key:{i}", i)
        pipe.get(f"key:{i}")
    results = pipe.execute()
    assert results[1::2] == [str(i).encode() for i in range(5000)]


def test_unknown_commands_get_the_redis_error_not_a_hang(r: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError, match="unknown command 'LPUSH'"):
        r.execute_command("LPUSH", "l", "a")
    with pytest.raises(redis.ResponseError, match="unknown command 'HSET'"):
        r.execute_command("HSET", "h", "f", "v")
    assert r.ping()


def test_wrong_arity(r: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'get'"):
        r.execute_command("GET")


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli not installed")
def test_redis_cli_interactive_and_one_shot(node: Proc) -> None:
    cli = ["redis-cli", "-p", str(node.port)]
    assert (
        subprocess.run(
            [*cli, "set", "cli", "hello"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        == "OK"
    )
    out = subprocess.run(
        cli, input="get cli\nping\nlpush x y\n", capture_output=True, text=True, timeout=10
    )
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "hello"
    assert lines[1] == "PONG"
    assert "unknown command" in lines[2]


@pytest.mark.skipif(shutil.which("redis-benchmark") is None, reason="redis-benchmark missing")
def test_redis_benchmark_runs_clean(node: Proc) -> None:
    out = subprocess.run(
        ["redis-benchmark", "-p", str(node.port), "-t", "set,get,incr,mset", "-n", "2000", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert "error" not in text.lower(), text
    for name in ("SET", "GET", "INCR", "MSET"):
        assert f"{name}:" in text or f"{name} (10 keys)" in text, text


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"*abc\r\n", b"-ERR Protocol error: invalid multibulk length"),
        (b"*1\r\n$-5\r\n", b"-ERR Protocol error: invalid bulk length"),
        (b"*1\r\n+GET\r\n", b"-ERR Protocol error: expected '$', got '+'"),
        (b"*1\r\n$3\r\nGETxx", b"-ERR Protocol error: expected CRLF after bulk"),
        (b"*1\r\n$999999999999\r\n", b"-ERR Protocol error: invalid bulk length"),
        (b"*99999999999\r\n", b"-ERR Protocol error: invalid multibulk length"),
        (b"x" * (70 * 1024), b"-ERR Protocol error: too big inline request"),
    ],
)
def test_malformed_requests_get_protocol_error_and_close(
    node: Proc, payload: bytes, error: bytes
) -> None:
    reply, closed = raw_exchange(node, payload)
    assert reply.startswith(error), reply
    assert closed
    assert redis.Redis(host=node.host, port=node.port).ping()


def test_replies_before_a_protocol_error_are_kept(node: Proc) -> None:
    reply, closed = raw_exchange(node, b"PING\r\n*1\r\n$4\r\nPING\r\n*x\r\n")
    assert reply == b"+PONG\r\n+PONG\r\n-ERR Protocol error: invalid multibulk length\r\n"
    assert closed


def test_http_request_is_closed_without_reply(node: Proc) -> None:
    reply, closed = raw_exchange(node, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert reply == b""
    assert closed
    reply, closed = raw_exchange(node, b"POST /x HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
    assert (reply, closed) == (b"", True)


def test_declared_huge_bulk_reserves_nothing_and_others_keep_working(
    node: Proc, r: redis.Redis
) -> None:
    before = int(r.info("memory")["used_memory_rss"])
    with socket.create_connection((node.host, node.port)) as s:
        s.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$536870000\r\npartial")
        time.sleep(0.2)
        assert r.set("other", "fine")
        assert r.get("other") == b"fine"
        after = int(r.info("memory")["used_memory_rss"])
    assert after - before < 16 * 1024 * 1024


def test_inline_commands_work(node: Proc) -> None:
    reply, _ = raw_exchange(node, b'SET inline "hello world"\r\nGET inline\r\n')
    assert reply == b"+OK\r\n$11\r\nhello world\r\n"


def test_unbalanced_quotes_inline(node: Proc) -> None:
    reply, closed = raw_exchange(node, b'SET x "oops\r\n')
    assert reply == b"-ERR Protocol error: unbalanced quotes in request\r\n"
    assert closed


# --- auth, limits, config ---------------------------------------------------------------------


def test_requirepass_and_preauth_limits() -> None:
    with running(["node", "--port", "0", "--requirepass", "s3cret"]) as proc:
        anon = redis.Redis(host=proc.host, port=proc.port)
        with pytest.raises(redis.AuthenticationError):
            anon.get("x")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=proc.host, port=proc.port, password="wrong").ping()
        good = redis.Redis(host=proc.host, port=proc.port, password="s3cret")
        assert good.set("x", "1")
        # Before AUTH: at most 10 arguments and 16 KB bulks (Redis 7's limits).
        reply, closed = raw_exchange(proc, b"*11\r\n")
        assert reply.startswith(b"-ERR Protocol error: unauthenticated multibulk length")
        assert closed
        reply, closed = raw_exchange(proc, b"*2\r\n$4\r\nAUTH\r\n$20000\r\n")
        assert reply.startswith(b"-ERR Protocol error: unauthenticated bulk length")
        reply, _ = raw_exchange(proc, b"*2\r\n$4\r\nAUTH\r\n$6\r\ns3cret\r\nGET x\r\n")
        assert reply == b"+OK\r\n$1\r\n1\r\n"
        hello = redis.Redis(host=proc.host, port=proc.port, password="s3cret", protocol=3)
        assert hello.get("x") == b"1"


def test_maxclients_refuses_extra_connections() -> None:
    with running(["node", "--port", "0", "--maxclients", "2"]) as proc:
        a = socket.create_connection((proc.host, proc.port))
        b = socket.create_connection((proc.host, proc.port))
        try:
            a.sendall(b"PING\r\n")
            assert a.recv(100) == b"+PONG\r\n"
            b.sendall(b"PING\r\n")
            assert b.recv(100) == b"+PONG\r\n"
            reply, closed = raw_exchange(proc, b"PING\r\n")
            assert reply == b"-ERR max number of clients reached\r\n"
            assert closed
        finally:
            a.close()
            b.close()


def test_config_get_set(r: redis.Redis) -> None:
    assert r.config_get("maxmemory") == {"maxmemory": str(64 * 1024 * 1024)}
    assert r.config_set("maxmemory", "100mb")
    assert r.config_get("maxmemory")["maxmemory"] == str(100 * 1024 * 1024)
    assert r.config_set("maxmemory-policy", "volatile-ttl")
    assert r.info("memory")["maxmemory_policy"] == "volatile-ttl"
    with pytest.raises(redis.ResponseError, match="maxmemory-policy"):
        r.config_set("maxmemory-policy", "bogus")
    with pytest.raises(redis.ResponseError, match="Unknown option"):
        r.config_set("nonsense", "1")
    with pytest.raises(redis.ResponseError):
        r.config_set("maxmemory", "lots")
    r.config_set("maxmemory", "64mb")
    r.config_set("maxmemory-policy", "allkeys-lru")


def test_info_has_redis_field_names(r: redis.Redis) -> None:
    r.set("a", "1")
    r.get("a")
    r.get("missing")
    info = r.info("everything")
    for field in ("redis_version", "connected_clients", "used_memory", "maxmemory_policy",
                  "total_commands_processed", "keyspace_hits", "keyspace_misses",
                  "expired_keys", "evicted_keys", "role"):  # fmt: skip
        assert field in info, field
    assert info["db0"]["keys"] == 1
    assert "cmdstat_get" in info


def test_client_commands(r: redis.Redis) -> None:
    assert r.client_setname("worker-1")
    assert r.client_getname() == "worker-1"
    assert isinstance(r.client_id(), int)
    assert any(c["name"] == "worker-1" for c in r.client_list())
    with pytest.raises(redis.ResponseError, match="cannot contain spaces"):
        r.client_setname("bad name")
    assert r.execute_command("SELECT", 0)
    with pytest.raises(redis.ResponseError, match="DB index is out of range"):
        r.execute_command("SELECT", 1)


def test_command_count_getkeys_and_docs(node: Proc) -> None:
    reply, _ = raw_exchange(node, b"COMMAND COUNT\r\nCOMMAND GETKEYS MSET a 1 b 2\r\n")
    count, rest = reply.split(b"\r\n", 1)
    assert count.startswith(b":") and int(count[1:]) > 40
    assert rest == b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"
    reply, _ = raw_exchange(node, b"COMMAND DOCS get\r\n")
    assert b"Get the value of a key" in reply


def test_metrics_endpoint() -> None:
    mport = free_port()
    with running(["node", "--port", "0", "--metrics-port", str(mport)]) as proc:
        redis.Redis(host=proc.host, port=proc.port).set("m", "1")
        body = ""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                body = (
                    urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=2)
                    .read()
                    .decode()
                )
                break
            except OSError:
                time.sleep(0.1)
        assert 'shardgate_node_commands_total{command="set"' in body
        assert "shardgate_node_used_memory_bytes" in body
        assert "shardgate_node_command_duration_seconds_bucket" in body


# --- config files -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("port = [", "invalid TOML"),
        ("nonsense = 1", "unknown setting"),
        ('maxmemory = "lots"', "maxmemory"),
        ('maxmemory-policy = "whatever"', "maxmemory-policy"),
        ("port = 99999", "port"),
        ("maxclients = 0", "maxclients"),
        ('requirepass = "a\\nb"', "requirepass"),
    ],
)
def test_bad_config_files_are_refused_clearly(tmp_path, content: str, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "node.toml"
    path.write_text(content)
    out = subprocess.run(
        [sys.executable, "-m", "shardgate", "node", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 2
    assert message in out.stderr


def test_oversized_and_binary_config_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    big = tmp_path / "big.toml"
    big.write_text("# x\n" * 300_000)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00port=1")
    for path, message in (
        (big, "more than"),
        (binary, "UTF-8"),
        (tmp_path / "missing.toml", "cannot read"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "shardgate", "node", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert out.returncode == 2, out
        assert message in out.stderr


def test_config_file_settings_apply(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "node.toml"
    path.write_text('maxmemory = "10mb"\nmaxmemory-policy = "allkeys-random"\nport = 0\n')
    with running(["node", "--config", str(path)]) as proc:
        info = redis.Redis(host=proc.host, port=proc.port).info("memory")
        assert info["maxmemory"] == 10 * 1024 * 1024
        assert info["maxmemory_policy"] == "allkeys-random"


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "shardgate", "node", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert out.returncode == 1
    assert "cannot listen" in out.stderr


def test_client_that_never_reads_is_disconnected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "node.toml"
    path.write_text("port = 0\nclient_output_stall_seconds = 1.0\n")
    with running(["node", "--config", str(path)]) as proc:
        r = redis.Redis(host=proc.host, port=proc.port)
        r.set("big", b"x" * 1024 * 1024)
        s = socket.create_connection((proc.host, proc.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            s.sendall(b"GET big\r\n" * 200)  # 200 MB of replies that nobody reads
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if r.info("stats")["client_output_limit_disconnections"] >= 1:
                    break
                time.sleep(0.2)
            assert r.info("stats")["client_output_limit_disconnections"] == 1
            assert r.info("clients")["connected_clients"] == 1
            rss = r.info("memory")["used_memory_rss"]
            assert rss < 200 * 1024 * 1024
        finally:
            s.close()
