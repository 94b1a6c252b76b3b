"""Scenario 11: a slow backend. Latency on one shard's link leaves the other shards' latency
alone; the slow shard answers late while under the proxy's per-request timeout, and gets
timeout errors (never late replies, never a hang) past it; it recovers when the link does."""

from __future__ import annotations

import time
from pathlib import Path

import redis
import trio

from tests.faults.cluster import Cluster, ShardSpec, wait_until
from tests.faults.measure import key_in, percentile, sampling
from tests.faults.processes import Services, in_thread

TIMEOUT_MS = 300
PHASE_S = 1.5
# The fast shard must not inherit the slow one's latency (80 ms and more a request). Its exact
# p99 is printed, not asserted: on a shared 2-core machine the baseline alone moves by
# milliseconds between runs (timing is the bench's job, docs/performance.md).
FAST_P99_LIMIT_S = 0.03


async def test_slow_backend_only_slows_its_own_shard(procs: Services, tmp_path: Path) -> None:
    results: dict[str, object] = {}

    def body() -> None:
        cluster = Cluster(
            procs,
            [
                ShardSpec(name="fast", replicas=0),
                ShardSpec(name="slow", replicas=0, backend_link=True),
            ],
            workdir=tmp_path,
            proxy_args=["--timeout-ms", str(TIMEOUT_MS)],
        ).start()
        fast_shard, slow_shard = cluster.shards["fast"], cluster.shards["slow"]
        fast_key = key_in((fast_shard.slots.start, fast_shard.slots.end))
        slow_key = key_in((slow_shard.slots.start, slow_shard.slots.end))
        r = cluster.proxy_client(timeout=5)()
        r.set(fast_key, "f")
        r.set(slow_key, "s")
        link = slow_shard.backend_link
        assert link is not None
        connect = cluster.proxy_client(timeout=5)

        def phase(name: str, control: str | None) -> tuple[list[float], list[object], list[float]]:
            if control:
                link.send_control(control)
            with (
                sampling(connect, lambda c: c.get(fast_key)) as fast,
                sampling(connect, lambda c: c.get(slow_key)) as slow,
            ):
                time.sleep(PHASE_S)
            fast_ok = fast.ok()
            assert not fast.errors(), (name, fast.errors()[:3])
            results[name] = {
                "fast_p50_ms": round(percentile(fast_ok, 50) * 1000, 2),
                "fast_p99_ms": round(percentile(fast_ok, 99) * 1000, 2),
                "slow_p50_ms": round(percentile([s.took for s in slow.samples], 50) * 1000, 1),
                "slow_max_ms": round(max(s.took for s in slow.samples) * 1000, 1),
                "slow_errors": len(slow.errors()),
                "slow_requests": len(slow.samples),
            }
            return fast_ok, [s.result for s in slow.samples], [s.took for s in slow.samples]

        _, base_slow, _ = phase("baseline", None)
        assert all(v == b"s" for v in base_slow)

        # 40 ms each way: an 80 ms round trip, well under the 300 ms timeout: late, never an error
        fast_ok, slow_results, slow_took = phase("latency 40 ms", "latency 40 5")
        assert all(v == b"s" for v in slow_results), slow_results[:3]
        assert min(slow_took) >= 0.08 and max(slow_took) < TIMEOUT_MS / 1000
        assert percentile(fast_ok, 99) < FAST_P99_LIMIT_S, percentile(fast_ok, 99)

        # 250 ms each way: past the timeout. Every request ends in an error by timeout + 100 ms.
        fast_ok, slow_results, slow_took = phase("latency 250 ms", "latency 250")
        assert all(isinstance(v, redis.ResponseError) for v in slow_results), slow_results[:3]
        assert all(("timeout" in str(v) or "down" in str(v) or "connection lost" in str(v))
                   for v in slow_results)  # fmt: skip
        assert max(slow_took) <= TIMEOUT_MS / 1000 + 0.1, max(slow_took)
        assert any("timeout" in str(v) for v in slow_results)
        assert percentile(fast_ok, 99) < FAST_P99_LIMIT_S, percentile(fast_ok, 99)

        link.send_control("clear")
        took = wait_until(lambda: r.get(slow_key) == b"s", 10, "slow shard back")
        results["recovered_after_s"] = round(took, 2)

    with trio.fail_after(90):
        await in_thread(body)
        print(procs.check_survivors())  # every process the test did not end
    print(f"scenario 11 (slow backend, timeout {TIMEOUT_MS} ms): {results}")


async def test_consecutive_timeouts_on_a_slow_backend_trip_the_breaker(
    procs: Services, tmp_path: Path
) -> None:
    """docs/proxy.md: after 3 consecutive timeouts the connection is dropped, then requests
    fail fast (well under 5 ms) until a reconnection succeeds (at most one attempt a second)."""

    def body() -> list[tuple[float, str]]:
        cluster = Cluster(
            procs,
            [ShardSpec(name="slow", replicas=0, backend_link=True)],
            workdir=tmp_path,
            proxy_args=["--timeout-ms", str(TIMEOUT_MS)],
        ).start()
        link = cluster.shards["slow"].backend_link
        assert link is not None
        r = cluster.proxy_client(timeout=5)()
        r.set("k", "v")
        link.send_control("latency 250")  # every reply comes 200 ms after its deadline
        seen = []
        for _ in range(6):
            start = time.monotonic()
            try:
                r.get("k")
                outcome = "reply"
            except redis.ResponseError as exc:
                outcome = str(exc)
            seen.append((time.monotonic() - start, outcome))
        return seen

    with trio.fail_after(60):
        seen = await in_thread(body)
        print(procs.check_survivors())  # every process the test did not end
    print(f"six GETs on a backend 250 ms away each way, timeout {TIMEOUT_MS} ms: {seen}")
    assert all("timeout" in outcome for _, outcome in seen[:3])
    # the 4th request onwards: the breaker is open, so they fail at once
    assert all(took < 0.05 for took, _ in seen[3:]), seen
