"""``shardgate bench``: option parsing, request making, statistics on known inputs."""

from __future__ import annotations

import argparse
import random
import socket

import pytest

from bench import compare_cli
from bench.cli import spec_from_args
from bench.loadconn import ClientLoad
from bench.loadspec import (
    KeyChooser,
    LoadSpec,
    RequestMaker,
    SpecError,
    parse_distribution,
    parse_ratio,
    parse_value_size,
    split_evenly,
)
from bench.loadstats import Latency, Recorder, Result, combine, format_cpu, format_table, to_json
from bench.serverpid import listening_inodes, pids_listening_on
from shardgate.cli import build_parser


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["bench", *argv])


def test_defaults_make_a_30_second_run() -> None:
    spec = spec_from_args(parse())
    assert (spec.port, spec.clients, spec.pipeline, spec.keys) == (7000, 50, 1, 10_000)
    assert (spec.get_weight, spec.set_weight) == (9, 1)
    assert spec.warmup + (spec.duration or 0) == 25.0
    assert spec.rate is None and spec.prefill


def test_every_option_reaches_the_spec() -> None:
    args = parse(
        "--host", "10.0.0.1", "--port", "6379", "--password", "pw", "--clients", "8",
        "--pipeline", "16", "--ratio", "1:3", "--keys", "500", "--distribution", "zipf:1.2",
        "--value-size", "64-512", "--ttl", "60", "--requests", "1000", "--warmup", "0",
        "--mget", "10", "--rate", "5000", "--procs", "2", "--no-prefill", "--seed", "7",
    )  # fmt: skip
    spec = spec_from_args(args)
    assert spec == LoadSpec(
        host="10.0.0.1", port=6379, password="pw", clients=8, pipeline=16, get_weight=1,
        set_weight=3, keys=500, zipf_s=1.2, value_min=64, value_max=512, ttl=60,
        duration=None, requests=1000, warmup=0.0, mget=10, rate=5000.0, procs=2,
        prefill=False, seed=7,
    )  # fmt: skip


def test_sub_commands_parse() -> None:
    args = parse("compare", "--quick", "--only", "a,b", "--write", "x.md")
    assert args.bench_command == "compare"
    assert compare_cli.forwarded_argv(args) == ["--quick", "--only", "a,b", "--write", "x.md"]
    args = parse("failover", "--kills", "5", "--system", "redis", "--mode", "sync")
    assert (args.kills, args.system, args.mode) == (5, "redis", "sync")


@pytest.mark.parametrize(("text", "expected"), [("9:1", (9, 1)), ("0:1", (0, 1)), ("1:0", (1, 0))])
def test_ratio(text: str, expected: tuple[int, int]) -> None:
    assert parse_ratio(text) == expected


@pytest.mark.parametrize("text", ["9", "a:b", "1:2:3", "-1:2"])
def test_bad_ratio(text: str) -> None:
    with pytest.raises(SpecError):
        parse_ratio(text)


def test_value_size_and_distribution() -> None:
    assert parse_value_size("100") == (100, 100)
    assert parse_value_size("64-512") == (64, 512)
    for bad in ("0", "512-64", "x", "1-"):
        with pytest.raises(SpecError):
            parse_value_size(bad)
    assert parse_distribution("uniform") is None
    assert parse_distribution("zipf:0.99") == 0.99
    assert parse_distribution("zipf") == 0.99
    for bad in ("gauss", "zipf:x", "zipf:0"):
        with pytest.raises(SpecError):
            parse_distribution(bad)


@pytest.mark.parametrize(
    "change",
    [
        {"clients": 0},
        {"get_weight": 0, "set_weight": 0},
        {"duration": None},
        {"requests": 10},  # with the default duration: both given
        {"procs": 51},
        {"rate": 0.0},
        {"ttl": 0},
    ],
)
def test_spec_rejects(change: dict[str, object]) -> None:
    with pytest.raises(SpecError):
        LoadSpec(**change)  # type: ignore[arg-type]


def test_share_splits_clients_requests_and_rate() -> None:
    spec = LoadSpec(clients=10, procs=3, requests=100, duration=None, rate=1000.0)
    parts = [spec.share(i) for i in range(3)]
    assert [p.clients for p in parts] == [4, 3, 3]
    assert [p.requests for p in parts] == [34, 33, 33]
    assert [p.rate for p in parts] == [400.0, 300.0, 300.0]
    assert len({p.seed for p in parts}) == 3
    assert split_evenly(7, 7) == [1] * 7


def test_zipf_favours_low_ranks_and_uniform_covers_the_range() -> None:
    zipf = KeyChooser(1000, 1.0, random.Random(1))
    counts = [0] * 1000
    for _ in range(20_000):
        counts[zipf.next()] += 1
    assert counts[0] > counts[1] > counts[10] and counts[0] > 20_000 * 0.1
    uniform = KeyChooser(10, None, random.Random(1))
    assert {uniform.next() for _ in range(1000)} == set(range(10))


def test_requests_follow_ratio_mget_and_ttl() -> None:
    spec = LoadSpec(get_weight=1, set_weight=1, mget=3, ttl=60, value_min=5, value_max=9)
    maker = RequestMaker(spec, random.Random(3))
    made = [maker.next() for _ in range(2000)]
    reads = [m for m in made if m[1]]
    assert 900 < len(reads) < 1100
    assert all(r[0].startswith(b"*4\r\n$4\r\nMGET\r\n") and r[2] == 3 for r in reads)
    writes = [m[0] for m in made if not m[1]]
    assert all(
        w.startswith(b"*5\r\n$3\r\nSET\r\n") and w.endswith(b"$2\r\nEX\r\n$2\r\n60\r\n")
        for w in writes
    )
    sizes = {int(w.split(b"\r\n")[5][1:]) for w in writes}
    assert sizes == set(range(5, 10))


def _sim(*, rate: float | None, stall: tuple[float, float], until: float) -> Recorder:
    """A server that answers at once except during ``stall``; time advances in 1 ms steps."""
    rec = Recorder(0.0)
    client = ClientLoad(lambda: (b"x", False, 0), rec, pipeline=10_000, rate=rate, start=0.0)
    if rate is None:
        client = ClientLoad(lambda: (b"x", False, 0), rec, pipeline=1)
    for step in range(int(until * 1000)):
        now = step / 1000
        client.fill(now)
        if not stall[0] <= now < stall[1] and client.inflight:
            client.feed(b"+OK\r\n" * len(client.inflight), now)
    return rec


def test_open_loop_charges_a_stall_to_every_request_it_delayed() -> None:
    rec = _sim(rate=1000.0, stall=(1.0, 2.0), until=3.0)
    lat = Latency.of(rec.histogram)
    assert lat.count == 3000
    assert lat.max == pytest.approx(1_000_000, rel=0.01)  # the first request of the stall
    # the stall's 1000 requests waited 1000, 999, ... 1 ms: the top third of all latencies
    assert rec.histogram.get_value_at_percentile(90) == pytest.approx(700_000, rel=0.01)
    assert lat.p50 <= 1000  # outside the stall: answered within one 1 ms step


def test_closed_loop_records_the_stall_once() -> None:
    rec = _sim(rate=None, stall=(1.0, 2.0), until=3.0)
    lat = Latency.of(rec.histogram)
    assert lat.max == pytest.approx(1_000_000, rel=0.01)
    assert rec.histogram.get_count_at_value(lat.max) == 1  # coordinated omission: one sample
    assert lat.p99 <= 1


def test_hits_errors_and_lost_connections_are_counted() -> None:
    rec = Recorder(0.0)
    made = iter([(b"g", True, 1), (b"m", True, 3), (b"s", False, 0), (b"g", True, 1)])
    client = ClientLoad(lambda: next(made), rec, pipeline=4)
    client.fill(0.0)
    client.feed(b"$1\r\na\r\n*3\r\n$1\r\nx\r\n$-1\r\n$1\r\ny\r\n-ERR oom\r\n", 0.5)
    assert (rec.ops, rec.errors, rec.reads, rec.read_keys, rec.hits) == (2, 1, 2, 4, 3)
    assert client.lost(0.6) == 1 and rec.errors == 2 and not client.inflight


def _recorder(latency_s: float, n: int, second: float) -> Recorder:
    rec = Recorder(0.0)
    rec.record(latency_s, second, n)
    rec.reads = rec.read_keys = n
    rec.hits = n // 2
    return rec


def test_combine_merges_histograms_and_timeline() -> None:
    a, b = _recorder(0.001, 100, 0.5), _recorder(0.003, 100, 1.5)
    b.error(1.7, 4)
    result = combine([a.encode(), b.encode()], elapsed_s=2.0, loadgen_cpu_s=0.5)
    assert (result.ops, result.errors, result.procs) == (200, 4, 2)
    assert result.ops_per_s == 100.0
    assert result.latency.p50 == pytest.approx(1000, rel=0.001)
    assert result.latency.p99 == pytest.approx(3000, rel=0.001)
    assert result.hit_rate == 0.5
    assert [(s.second, s.ops, s.errors) for s in result.timeline] == [(0, 100, 0), (1, 100, 4)]
    assert result.loadgen_cores == 0.25
    assert result.loadgen_us_per_req == 2500.0


def test_report_table_and_json() -> None:
    result = Result(
        ops=50_000, errors=3, elapsed_s=2.0, latency=Latency(250, 400, 900, 1500, 4000, 300.0, 50_000),
        reads=100, read_keys=100, hits=97, timeline=(), loadgen_cpu_s=1.9, procs=1,
        server_cpu_us_per_req=4.5, server_pids=(42,),
    )  # fmt: skip
    lines = format_table(result).splitlines()
    assert lines[0].split() == ["ops/s", "p50", "ms", "p90", "ms", "p99", "ms", "p99.9", "ms", "max", "ms", "errors", "hit", "rate"]  # fmt: skip
    assert lines[1].split() == ["25,000", "0.250", "0.400", "0.900", "1.500", "4.000", "3", "97.0%"]
    cpu = format_cpu(result)
    assert "0.95 cores busy" in cpu and "warning" in cpu and "pid 42): 4.50 µs CPU/req" in cpu
    doc = to_json(result, {"port": 1}, "shardgate bench")
    assert doc["latency_us"]["p99.9"] == 1500 and doc["server"]["cpu_us_per_req"] == 4.5


TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1B58 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0
   1: 0100007F:1B58 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0
   2: 00000000:1B59 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4444 1 0
"""


def test_listening_inodes_from_proc_net_tcp() -> None:
    assert listening_inodes(TCP, 7000) == {4242}  # the established row is not a listener
    assert listening_inodes(TCP, 7001) == {4444}


def test_finds_our_own_listener() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        import os

        assert os.getpid() in pids_listening_on(s.getsockname()[1])


def test_compare_names_missing_debian_packages() -> None:
    missing = compare_cli.missing_programs(lambda p: None if p != "redis-cli" else "/x")
    assert missing == {
        "redis-server": "redis-server",
        "redis-benchmark": "redis-tools",
        "nutcracker": "nutcracker",
    }
    hint = compare_cli.install_hint(missing)
    assert "apt-get install nutcracker redis-server redis-tools" in hint


def test_compare_tables_show_ratios_to_b_and_a() -> None:
    from bench.report import MODES, Summary, render_mode
    from bench.targets import Endpoint

    def s(rps: float) -> Summary:
        return Summary(rps, 0.5, 1.0, 10.0, 1)

    rates = {"a": 100.0, "b": 50.0, "c": 40.0}
    summ = {(k, "P1", t): s(v) for k, v in rates.items() for t in ("set", "get")}
    endpoints = [Endpoint(k, k, k, "127.0.0.1", 1, 1) for k in rates]
    text = render_mode(MODES[0], endpoints, summ, 1000)
    assert "| 0.50x (a) |" in text  # (b) against redis-server
    assert "| 0.80x (b), 0.40x (a) |" in text  # a proxy against nutcracker and redis-server
