"""``bench compare``: its options, the MGET and 500-client modes, the idle-client RSS part and the
report written from them, on known inputs (no timings)."""

from __future__ import annotations

import argparse
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import compare, compare_cli, idle_clients, redis_benchmark
from bench.idle_clients import IdleError, IdleMemory, group_rss, idle_connections, render_idle
from bench.redis_benchmark import BenchRow, parse_csv
from bench.report import (
    MODE_BY_KEY,
    MODES,
    Sample,
    idle_ratio,
    missed_by,
    mode_tests,
    ratio,
    render,
    render_mode,
    summarize,
)
from bench.targets import Endpoint
from shardgate.cli import build_parser

MIB = 2**20


def compare_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["bench", "compare", *argv])


def test_missing_debian_packages_are_named_and_nothing_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def must_not_run(argv: object) -> int:
        raise AssertionError("bench.compare ran although programs are missing")

    monkeypatch.setattr(compare, "main", must_not_run)
    code = compare_cli.main(compare_args("--quick"), which=lambda prog: None)
    out = capsys.readouterr().out
    assert code == 2
    assert "missing: nutcracker, redis-benchmark, redis-cli, redis-server." in out
    assert "sudo apt-get install nutcracker redis-server redis-tools" in out
    assert "installs nothing itself" in out


def test_only_the_missing_package_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    code = compare_cli.main(
        compare_args(), which=lambda prog: None if prog == "nutcracker" else f"/usr/bin/{prog}"
    )
    assert code == 2
    assert "sudo apt-get install nutcracker\n" in capsys.readouterr().out


def test_profile_without_py_spy_stops_before_running(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import profile

    def must_not_run(argv: object) -> int:
        raise AssertionError("bench.compare ran without py-spy for --profile")

    monkeypatch.setattr(compare, "main", must_not_run)
    monkeypatch.setattr(profile, "py_spy", lambda: None)
    assert compare_cli.main(compare_args("--profile"), which=lambda p: f"/usr/bin/{p}") == 2
    assert "--profile needs py-spy: .venv/bin/pip install 'shardgate[bench]'" in (
        capsys.readouterr().out
    )


def test_options_reach_bench_compare() -> None:
    args = compare_args(
        "--quick", "--only", "a,b,c", "--idle-clients", "0", "--rounds", "2", "--write", "/x.md"
    )
    assert compare_cli.forwarded_argv(args) == [
        "--quick", "--rounds", "2", "--only", "a,b,c", "--idle-clients", "0", "--write", "/x.md",
    ]  # fmt: skip
    assert compare_cli.forwarded_argv(compare_args()) == []


def test_compare_rejects_a_negative_idle_client_count() -> None:
    with pytest.raises(SystemExit):
        compare.main(["--idle-clients", "-1"])


def test_compare_rejects_a_base_tree_without_proxy_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing starts: an A/B against a directory that is not a checkout is refused up front.
    with pytest.raises(SystemExit) as info:
        compare.main(["--base-tree", str(tmp_path), "--only", "c,c0"])
    assert info.value.code == 2
    assert "holds no proxy source" in capsys.readouterr().err


def test_modes_cover_the_issue() -> None:
    shape = {m.key: (m.clients, m.pipeline, m.tests) for m in MODES}
    assert shape == {
        "P1": (50, 1, ("set", "get")),
        "P16": (50, 16, ("set", "get")),
        "mget10": (50, 1, ("mget",)),
        "c500": (500, 1, ("set", "get")),
        "c1": (1, 1, ("set", "get")),
    }
    assert mode_tests("mget10") == ("mget",)
    assert mode_tests("unknown") == ("set", "get")


def test_mget_command_reads_ten_random_keys_of_the_keyspace() -> None:
    argv = redis_benchmark.command(host="h", port=1, test="mget", requests=10)
    assert "-t" not in argv
    assert argv[argv.index("--csv") :] == ["--csv", "MGET", *["key:__rand_int__"] * 10]
    assert argv[argv.index("-r") + 1] == "10000"
    short = redis_benchmark.command(host="h", port=1, test="mget", requests=10, mget_keys=2)
    assert short[-3:] == ["MGET", "key:__rand_int__", "key:__rand_int__"]


def test_parse_csv_reads_a_custom_command_row() -> None:
    text = (
        '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",'
        '"p99_latency_ms","max_latency_ms"\n'
        '"MGET key:__rand_int__ key:__rand_int__","32679.74","1.241","0.408","1.183","1.855",'
        '"2.367","5.295"\n'
    )
    (row,) = parse_csv(text)
    assert row == BenchRow(
        "MGET key:__rand_int__ key:__rand_int__", 32679.74, 1.241, 0.408, 1.183, 1.855, 2.367, 5.295
    )


def _sample(endpoint: str, mode: str, test: str, rps: float, cpu: float = 10.0) -> Sample:
    return Sample(endpoint, mode, test, BenchRow(test.upper(), rps, p50_ms=0.5, p99_ms=1.5), cpu)


def test_mget_ratio_uses_mget_only() -> None:
    summ = summarize(
        [
            _sample("b", "mget10", "mget", 20_000.0),
            _sample("c", "mget10", "mget", 15_000.0),
            _sample("b", "c500", "set", 40_000.0),
            _sample("b", "c500", "get", 40_000.0),
            _sample("c", "c500", "set", 10_000.0),
            _sample("c", "c500", "get", 30_000.0),
        ]
    )
    assert ratio(summ, "c", "b", "mget10") == pytest.approx(0.75)
    assert ratio(summ, "c", "b", "c500") == pytest.approx((0.25 + 0.75) / 2)


def test_mget_table_has_one_column_per_figure() -> None:
    summ = summarize(
        [_sample("b", "mget10", "mget", 20_000.0, 30.0), _sample("c", "mget10", "mget", 5_000.0)]
    )
    endpoints = [
        Endpoint("b", "nutcracker", "nutcracker", "127.0.0.1", 1, 1),
        Endpoint("c", "shardgate proxy", "proxy-redis", "127.0.0.1", 2, 2),
        Endpoint("d", "proxy → nodes", "proxy-nodes", unavailable="no nodes"),
    ]
    text = render_mode(MODE_BY_KEY["mget10"], endpoints, summ, 5000)
    assert text.startswith("#### MGET of 10 keys (one request reads 10), 50 clients, -P 1")
    assert "| endpoint | MGET ops/s | MGET p50 / p99 ms | CPU µs/req MGET | ops/s ratio |" in text
    assert "| (b) nutcracker | 20,000 | 0.500 / 1.500 | 30.0 | - |" in text
    assert "| (c) shardgate proxy | 5,000 | 0.500 / 1.500 | 10.0 | 0.25x (b) |" in text
    assert "| (d) proxy → nodes | not available |  |  | no nodes |" in text


IDLE = [
    IdleMemory("a", "redis-server", 1000, 8 * MIB, 8 * MIB + 20_480_000),
    IdleMemory("b", "nutcracker", 1000, 4 * MIB, 4 * MIB + 1_024_000),
    IdleMemory("c", "shardgate proxy", 1000, 40 * MIB, 40 * MIB + 10_240_000),
]


def test_idle_memory_per_connection() -> None:
    a, b, c = IDLE
    assert a.growth == 20_480_000
    assert a.kib_per_connection == pytest.approx(20.0)
    assert b.kib_per_connection == pytest.approx(1.0)
    assert idle_ratio(IDLE, "c", "b") == pytest.approx(10.0)
    assert idle_ratio(IDLE, "c", "d") is None
    assert idle_ratio([IdleMemory("b", "x", 10, 5, 5), c], "c", "b") is None  # no growth


def test_render_idle() -> None:
    text = render_idle(IDLE[1:], {"(d) proxy → nodes": "not available"})
    assert text.splitlines()[0] == (
        "| endpoint | idle clients | RSS, none | RSS, idle clients | growth | KiB/client |"
    )
    assert "| (b) nutcracker | 1,000 | 4.0 MiB | 5.0 MiB | 1.0 MiB | 1.0 |" in text
    assert "| (c) shardgate proxy | 1,000 | 40.0 MiB | 49.8 MiB | 9.8 MiB | 10.0 |" in text
    assert "| (d) proxy → nodes | not measured |  |  |  | not available |" in text


def test_group_rss_sums_members_and_skips_the_vanished() -> None:
    no_such_group = 2**31 - 1  # above any pid_max: no members, the leader is read alone
    assert group_rss(no_such_group, read=lambda pid: 4096) == 4096

    def gone(pid: int) -> int:
        raise FileNotFoundError(pid)

    assert group_rss(no_such_group, read=gone) == 0


def test_fd_limit_covers_the_idle_clients() -> None:
    assert idle_clients.fd_limit_needed(1000) == 1000 + idle_clients.FD_HEADROOM
    soft, need = idle_clients.raise_open_files_limit(10)  # never lowers the limit
    assert need == 10 + idle_clients.FD_HEADROOM
    assert soft >= need


def test_report_has_every_part_side_by_side() -> None:
    endpoints = [
        Endpoint(k, label, k, "127.0.0.1", 1, 1)
        for k, label in (("a", "redis-server"), ("b", "nutcracker"), ("c", "shardgate proxy"))
    ]
    samples = [
        _sample(k, m.key, t, rps)
        for k, rps in (("a", 80_000.0), ("b", 40_000.0), ("c", 30_000.0))
        for m in MODES
        for t in m.tests
    ]
    out = render(
        command="python -m bench.compare --quick",
        rounds=1,
        scale=0.1,
        endpoints=endpoints,
        samples=samples,
        mem=[],
        mem_unavailable={},
        machine=["- Machine: test"],
        idle=IDLE,
    )
    for heading in (
        "#### 50 clients, -P 1 — 10,000 requests per run",
        "#### 50 clients, -P 16 — 50,000 requests per run",
        "#### MGET of 10 keys (one request reads 10), 50 clients, -P 1 — 5,000 requests per run",
        "#### 500 clients, -P 1 — 10,000 requests per run",
        "#### 1 client, -P 1 (hop latency) — 1,000 requests per run",
        "#### RSS with 1,000 idle clients — fresh processes, before any load",
        "#### Bytes per key",
        "#### Targets from the issues",
    ):
        assert heading in out
    assert "--csv MGET key:__rand_int__ key:__rand_int__" in out
    assert "| (c) ÷ (b) ops/s, MGET of 10 keys | 0.75 | (context) | - |" in out
    assert "| (c) ÷ (b) ops/s at 500 clients, -P 1 | 0.75 | (context) | - |" in out
    assert "| (c) ÷ (b) RSS growth per idle client | 10.00 | (context) | - |" in out
    assert "| (c) ÷ (b) ops/s at -P 16 (issue 3) | 0.75 | ≥ 1.0x | **no**: 25% short |" in out
    assert "| (c) ÷ (b) ops/s at -P 1 (issue 3) | 0.75 | ≥ 0.7x | yes |" in out


def test_a_missed_target_says_by_how_much() -> None:
    assert missed_by(0.46, 1.0) == "54% short"
    assert missed_by(180.0, 150.0) == "20% over"
    assert missed_by(0.30, 0.5) == "40% short"


def test_report_without_the_idle_part() -> None:
    out = render(
        command="c",
        rounds=1,
        scale=1.0,
        endpoints=[],
        samples=[],
        mem=[],
        mem_unavailable={},
        machine=[],
    )
    assert "idle clients —" not in out
    assert "| (c) ÷ (b) RSS growth per idle client | not measured |" in out


# -- idle connections against a small real server (a thread answering PING) --------------------


@pytest.fixture
def ping_server() -> Iterator[tuple[int, list[bytes]]]:
    """A listener on an OS port whose connections answer each PING with +PONG, and what the
    server received, one entry per connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    received: list[bytes] = []
    conns: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conns.append(conn)
            data = conn.recv(64)
            received.append(data)
            conn.sendall(b"+PONG\r\n" if data == idle_clients.PING else b"-ERR unknown\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], received
    finally:
        stop.set()
        listener.close()
        thread.join(5)
        for conn in conns:
            conn.close()


def test_idle_connections_each_ping_and_stay_open(ping_server: tuple[int, list[bytes]]) -> None:
    port, received = ping_server
    with idle_connections("127.0.0.1", port, 5, timeout=5) as socks:
        assert len(socks) == 5
        assert all(s.fileno() >= 0 for s in socks)
        assert received == [idle_clients.PING] * 5
    assert all(s.fileno() == -1 for s in socks)  # closed on the way out


def test_a_wrong_ping_reply_is_an_idle_error() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"-NOAUTH Authentication required.\r\n")
        ours.settimeout(5)
        with pytest.raises(IdleError, match="NOAUTH"):
            idle_clients._ping(ours)
        assert theirs.recv(64) == idle_clients.PING


def test_a_closed_connection_fails_the_ping() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"+PO")
        theirs.shutdown(socket.SHUT_WR)  # EOF after a partial reply
        ours.settimeout(5)
        with pytest.raises(IdleError, match="closed after PING"):
            idle_clients._ping(ours)


def test_a_refused_connection_is_an_idle_error() -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nobody listens there now
    with (
        pytest.raises(IdleError, match="connection 1 of 3 failed"),
        idle_connections("127.0.0.1", port, 3, timeout=5),
    ):
        pass
