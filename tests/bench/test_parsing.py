"""The bench's parsing and bookkeeping, on known inputs (speed is measured, never asserted)."""

from __future__ import annotations

import os
import sys

import pytest

from bench import keymem, profile, redis_benchmark
from bench.compare import load_line
from bench.markdown import SectionError, replace_section, table
from bench.procstats import cpu_us_per_request, parse_vm_rss
from bench.redis_benchmark import BenchmarkError, BenchRow, parse_csv
from bench.report import (
    Sample,
    added_p50_us,
    cpu_ratio,
    ratio,
    render,
    summarize,
)
from bench.targets import Endpoint

CSV = (
    '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",'
    '"p99_latency_ms","max_latency_ms"\n'
    '"SET","78125.00","0.342","0.096","0.311","0.495","0.911","1.511"\n'
    '"GET","86206.90","0.310","0.112","0.295","0.431","0.487","0.719"\n'
)


def test_parse_csv_redis7() -> None:
    rows = parse_csv("SET: rps=0.0 (overall: -nan)\r\n" + CSV)
    assert rows == [
        BenchRow("SET", 78125.0, 0.342, 0.096, 0.311, 0.495, 0.911, 1.511),
        BenchRow("GET", 86206.9, 0.310, 0.112, 0.295, 0.431, 0.487, 0.719),
    ]


def test_parse_csv_without_latency_columns() -> None:
    (row,) = parse_csv('"test","rps"\n"PING_INLINE","12345.67"\n')
    assert row == BenchRow("PING_INLINE", 12345.67)
    assert row.p99_ms is None


@pytest.mark.parametrize("text", ["", "Could not connect to Redis", '"test","rps"\n"SET","fast"\n'])
def test_parse_csv_rejects_garbage(text: str) -> None:
    with pytest.raises(BenchmarkError):
        parse_csv(text)


def test_command_is_the_documented_workload() -> None:
    argv = redis_benchmark.command(host="h", port=1, test="get", requests=10, pipeline=16)
    assert argv == [
        "redis-benchmark", "-h", "h", "-p", "1", "-c", "50", "-n", "10", "-d", "100",
        "-r", "10000", "-P", "16", "-t", "get", "--csv",
    ]  # fmt: skip


def _fake_benchmark(stdout: str, stderr: str = "", code: int = 0) -> list[str]:
    script = f"import sys; print({stdout!r}); print({stderr!r}, file=sys.stderr); sys.exit({code})"
    return [sys.executable, "-c", script]


def test_run_reads_one_row_and_fails_on_server_errors() -> None:
    one = '"test","rps","p50_latency_ms"\n"SET","1000.00","0.100"'
    assert redis_benchmark.run(_fake_benchmark(one), timeout=30).p50_ms == 0.1
    with pytest.raises(BenchmarkError, match="OOM"):
        redis_benchmark.run(_fake_benchmark(one, "Error from server: OOM command"), timeout=30)
    with pytest.raises(BenchmarkError, match="exit 1"):
        redis_benchmark.run(_fake_benchmark("", "Could not connect", 1), timeout=30)
    with pytest.raises(BenchmarkError, match="longer than"):
        redis_benchmark.run([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.2)


def test_load_line_says_whether_the_machine_was_busy() -> None:
    cores = os.cpu_count() or 1
    assert "otherwise quiet" in load_line(0.1, 0.2)
    assert "other work competed" in load_line(cores + 1.0, 0.2)


def test_cpu_us_per_request() -> None:
    # 250 ticks at 100 Hz = 2.5 s of CPU over 50,000 requests = 50 µs each
    assert cpu_us_per_request(100, 350, 50_000, clk_tck=100) == pytest.approx(50.0)
    assert cpu_us_per_request(7, 7, 10, clk_tck=100) == 0.0
    assert cpu_us_per_request(0, 1000, 1_000_000, clk_tck=1000) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        cpu_us_per_request(10, 5, 100)
    with pytest.raises(ValueError):
        cpu_us_per_request(0, 5, 0)


def test_parse_vm_rss() -> None:
    status = "Name:\tredis-server\nVmPeak:\t  9000 kB\nVmRSS:\t   12196 kB\nThreads:\t5\n"
    assert parse_vm_rss(status) == 12196 * 1024
    with pytest.raises(ValueError):
        parse_vm_rss("Name:\tkthreadd\n")


def test_info_field() -> None:
    info = b"# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n"
    assert keymem.info_field(info, "used_memory") == 1048576
    with pytest.raises(KeyError):
        keymem.info_field(info, "used_memory_rss")


def test_set_commands_are_distinct_pipelined_sets() -> None:
    data = keymem.set_commands(5, 2)
    assert data == (
        b"*3\r\n$3\r\nSET\r\n$14\r\nkey:0000000005\r\n$100\r\n" + b"v" * 100 + b"\r\n"
        b"*3\r\n$3\r\nSET\r\n$14\r\nkey:0000000006\r\n$100\r\n" + b"v" * 100 + b"\r\n"
    )


DOC = """# Performance

intro

<!-- lru:begin -->
LRU numbers by someone else
<!-- lru:end -->

<!-- compare:begin -->
old table
<!-- compare:end -->

outro
"""


def test_replace_section_keeps_everything_else() -> None:
    new = replace_section(DOC, "compare", "| new | table |\n")
    assert new == DOC.replace("old table", "| new | table |")
    assert replace_section(new, "compare", "old table") == DOC  # round trip


def test_replace_section_appends_a_missing_section() -> None:
    assert replace_section("# Doc\n", "codec", "x") == (
        "# Doc\n\n<!-- codec:begin -->\nx\n<!-- codec:end -->\n"
    )
    assert replace_section("", "codec", "x") == "<!-- codec:begin -->\nx\n<!-- codec:end -->\n"


@pytest.mark.parametrize(
    "doc",
    [
        "<!-- compare:begin -->\nno end\n",
        "<!-- compare:end -->\n<!-- compare:begin -->\n",
        "<!-- compare:begin -->a<!-- compare:end --><!-- compare:begin -->b<!-- compare:end -->",
    ],
)
def test_replace_section_refuses_broken_markers(doc: str) -> None:
    with pytest.raises(SectionError):
        replace_section(doc, "compare", "x")


def test_table() -> None:
    assert table(["a", "b"], [["1", "2"]]) == "| a | b |\n|:---|---:|\n| 1 | 2 |"


def _sample(endpoint: str, mode: str, test: str, rps: float, p50: float, cpu: float) -> Sample:
    return Sample(
        endpoint, mode, test, BenchRow(test.upper(), rps, p50_ms=p50, p99_ms=p50 * 3), cpu
    )


def test_summaries_are_medians_and_ratios_use_set_and_get() -> None:
    samples = [
        _sample("b", "P16", "set", 100.0, 0.2, 5.0),
        _sample("b", "P16", "set", 300.0, 0.4, 9.0),
        _sample("b", "P16", "set", 200.0, 0.3, 7.0),
        _sample("b", "P16", "get", 400.0, 0.3, 4.0),
        _sample("c", "P16", "set", 100.0, 0.5, 20.0),
        _sample("c", "P16", "get", 400.0, 0.5, 10.0),
        Sample("c", "P16", "get", None, None, "redis-benchmark failed"),
    ]
    summ = summarize(samples)
    b_set = summ[("b", "P16", "set")]
    assert (b_set.rps, b_set.p50_ms, b_set.cpu_us, b_set.runs) == (200.0, 0.3, 7.0, 3)
    assert summ[("c", "P16", "get")].runs == 1
    assert summ[("c", "P16", "get")].error == "redis-benchmark failed"
    assert ratio(summ, "c", "b", "P16") == pytest.approx((0.5 + 1.0) / 2)
    assert ratio(summ, "c", "a", "P16") is None
    assert cpu_ratio(summ, "c", "b", "P16") == pytest.approx((20.0 / 7.0 + 10.0 / 4.0) / 2)
    assert cpu_ratio(summ, "c", "b", "P1") is None


def test_added_p50_is_the_worse_of_set_and_get() -> None:
    summ = summarize(
        [
            _sample("a", "c1", "set", 1.0, 0.030, 1.0),
            _sample("a", "c1", "get", 1.0, 0.028, 1.0),
            _sample("c", "c1", "set", 1.0, 0.120, 1.0),
            _sample("c", "c1", "get", 1.0, 0.140, 1.0),
        ]
    )
    assert added_p50_us(summ, "c", "a") == pytest.approx(112.0)
    assert added_p50_us(summ, "b", "a") is None


def test_render_marks_unavailable_endpoints_and_keeps_numbers() -> None:
    endpoints = [
        Endpoint("a", "redis-server", "r0", "127.0.0.1", 1, 1),
        Endpoint("c", "shardgate proxy", "proxy-redis", unavailable="proxy not available"),
    ]
    samples = [
        _sample("a", mode, test, 70000.0, 0.3, 10.7)
        for mode in ("P1", "P16", "c1")
        for test in ("set", "get")
    ]
    mem = [keymem.KeyMemory("redis-server", 1000, 80_000, 100_000)]
    out = render(
        command="python -m bench.compare --quick",
        rounds=1,
        scale=0.1,
        endpoints=endpoints,
        samples=samples,
        mem=mem,
        mem_unavailable={"shardgate node": "not built"},
        machine=["- Machine: test"],
    )
    assert "`python -m bench.compare --quick`" in out
    assert "| (a) redis-server | 70,000 | 70,000 | 0.300 / 0.900 |" in out
    assert "| (c) shardgate proxy | not available |" in out
    assert "| redis-server | 1,000 | 0.1 MiB | 80 | 0.1 MiB | 100 |" in out
    assert "| shardgate node | not available |" in out
    assert "not measured" in out  # the targets that need (b), (c) or the node


def test_profile_headline() -> None:
    collapsed = "\n".join(
        [
            "run (trio/_core/_run.py:10);epoll (trio/_core/_io_epoll.py:5) 60",
            "main (proxy/server.py:3);feed (proxy/client.py:7) 30",
            "main (proxy/server.py:3) 10",
        ]
    )
    text = profile.headline(collapsed, top=2)
    assert text.startswith(
        "100 samples; self time in trio's own code (run loop, epoll, traps): 60%."
    )
    assert "epoll (trio/_core/_io_epoll.py) 60%" in text
    assert "feed (proxy/client.py) 30%" in text
    assert profile.headline("") == "py-spy collected no samples."
