"""Replication and fencing between real node processes."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from tests.procs import (
    Proc,
    running,
    wait_until,
)

pytestmark = pytest.mark.slow


def client(p: Proc) -> redis.Redis:
    return redis.Redis(host=p.host, port=p.port, socket_timeout=5)


def offset(p: Proc) -> int:
    info = client(p).info("replication")
    return int(info.get("slave_repl_offset", info["master_repl_offset"]))


def dump(r: redis.Redis) -> dict[bytes, tuple[bytes, int]]:
    keys = r.keys("*")
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.get(k)
        pipe.pexpiretime(k)
    values = pipe.execute()
    return {
        k: (values[2 * i], values[2 * i + 1])
        for i, k in enumerate(keys)
        if values[2 * i] is not None
    }


@contextlib.contextmanager
def shard(
    replicas: int, *primary_args: str, replica_args: tuple[str, ...] = ()
) -> Iterator[list[Proc]]:
    with contextlib.ExitStack() as stack:
        primary = stack.enter_context(running(["node", "--port", "0", *primary_args]))
        procs = [primary]
        for _ in range(replicas):
            procs.append(
                stack.enter_context(
                    running(
                        [
                            "node",
                            "--port",
                            "0",
                            "--replicaof",
                            f"{primary.host}:{primary.port}",
                            *replica_args,
                        ]
                    )
                )
            )
        for r in procs[1:]:
            wait_until(
                lambda r=r: client(r).info("replication")["master_link_status"] == "up",
                10,
                "link up",
            )
        yield procs


def test_writes_with_mixed_ttls_converge_on_every_replica() -> None:
    with shard(2) as (primary, *replicas):
        r = client(primary)
        rng = random.Random(7)
        for batch in range(100):
            pipe = r.pipeline(transaction=False)
            for i in range(1000):
                key = f"k:{batch}:{i}"
                kind = rng.randrange(5)
                if kind == 0:
                    pipe.set(key, key)
                elif kind == 1:
                    pipe.set(key, key, ex=rng.randrange(100, 10_000))
                elif kind == 2:
                    pipe.set(key, key, px=rng.randrange(1, 300))  # gone by the comparison
                elif kind == 3:
                    pipe.incrby(f"counter:{i % 50}", 1)
                else:
                    pipe.set(key, key, ex=1000)
                    pipe.persist(key)
            pipe.execute()
        r.delete(*[f"k:0:{i}" for i in range(100)])
        target = offset(primary)  # active expiry keeps adding DELs after this: >=
        took = max(
            wait_until(lambda p=p: offset(p) >= target, 10, "replica offsets") for p in replicas
        )
        assert took < 1.0, f"replicas caught up {took:.2f}s after the last write"
        time.sleep(0.35)  # let every PX key pass its expiry everywhere
        want = dump(r)
        assert len(want) > 60_000
        for p in replicas:
            assert dump(client(p)) == want


def test_replica_never_serves_an_expired_key_even_before_the_delete() -> None:
    with shard(1) as (primary, replica):
        client(primary).set("short", "v", px=300)
        wait_until(lambda: client(replica).get("short") == b"v", 5, "replicated")
        os.kill(primary.pid, signal.SIGSTOP)  # no DEL can arrive from the primary now
        try:
            time.sleep(0.4)
            assert client(replica).get("short") is None
            assert client(replica).exists("short") == 0
            assert client(replica).ttl("short") == -2
        finally:
            os.kill(primary.pid, signal.SIGCONT)


def test_replicas_are_read_only_and_report_their_role() -> None:
    with shard(1) as (primary, replica):
        with pytest.raises(redis.ReadOnlyError):
            client(replica).set("x", "1")
        role = client(replica).execute_command("ROLE")
        assert role[0] == b"slave" and role[2] == primary.port
        prole = client(primary).execute_command("ROLE")
        assert prole[0] == b"master" and len(prole[2]) == 1
        assert client(primary).info("replication")["connected_slaves"] == 1


def test_wait_counts_replicas_that_acked() -> None:
    with shard(2) as (primary, *_):
        r = client(primary)
        r.set("w", "1")
        assert r.execute_command("WAIT", 2, 2000) == 2
        assert r.execute_command("WAIT", 3, 200) == 2  # only two exist: times out with 2
        with pytest.raises(redis.ResponseError, match="replica"):
            client(_[0]).execute_command("WAIT", 1, 10)


def _replica_link_id(primary: Proc) -> int:
    links = [c for c in client(primary).client_list() if "S" in c["flags"]]
    assert len(links) == 1
    return int(links[0]["id"])


def test_reconnect_inside_the_backlog_is_a_partial_resync() -> None:
    with shard(1) as (primary, replica):
        r = client(primary)
        for i in range(200):
            r.set(f"a{i}", i)
        r.execute_command("CLIENT", "KILL", "ID", _replica_link_id(primary))
        for i in range(200):
            r.set(f"b{i}", i)
        target = offset(primary)
        wait_until(lambda: offset(replica) == target, 10, "catch up")
        stats = r.info("stats")
        assert (stats["sync_full"], stats["sync_partial_ok"]) == (1, 1)
        assert dump(client(replica)) == dump(r)


def test_reconnect_beyond_the_backlog_is_a_full_resync() -> None:
    with shard(1, "--repl-backlog-size", "16kb") as (primary, replica):
        r = client(primary)
        r.set("before", "1")
        os.kill(replica.pid, signal.SIGSTOP)
        try:
            r.execute_command("CLIENT", "KILL", "ID", _replica_link_id(primary))
            for i in range(300):
                r.set(f"big{i}", "x" * 200)  # 60 KB: past a 16 KB backlog
        finally:
            os.kill(replica.pid, signal.SIGCONT)
        target = offset(primary)
        wait_until(lambda: offset(replica) == target, 10, "catch up")
        stats = r.info("stats")
        assert stats["sync_full"] == 2 and stats["sync_partial_ok"] == 0
        assert dump(client(replica)) == dump(r)


def test_restarted_replica_does_a_full_sync_and_converges() -> None:
    with shard(0) as (primary,):
        r = client(primary)
        for i in range(1000):
            r.set(f"r{i}", i)
        args = ["node", "--port", "0", "--replicaof", f"{primary.host}:{primary.port}"]
        with running(args) as replica:
            wait_until(
                lambda: offset(replica) == offset(primary) and client(replica).dbsize() == 1000,
                10,
                "sync",
            )
            os.kill(replica.pid, signal.SIGKILL)
        with running(args) as replica2:
            wait_until(lambda: client(replica2).dbsize() == 1000, 10, "resync after restart")
        assert r.info("stats")["sync_full"] == 2


def _write_until_killed(r: redis.Redis, acked: list[str], stop: threading.Event, kind: str) -> None:
    i = 0
    while not stop.is_set():
        key = f"{kind}:{i}"
        try:
            r.set(key, i)
            acked.append(key)
        except redis.RedisError:
            return
        i += 1


@pytest.mark.parametrize("sync_replicas", [1, 0])
def test_primary_killed_under_load(sync_replicas: int) -> None:
    """With sync_replicas = 1 no acknowledged write is lost when the primary dies."""
    args = ("--sync-replicas", str(sync_replicas), "--sync-timeout-ms", "2000")
    with shard(2, *args) as (primary, *replicas):
        acked: list[str] = []
        stop = threading.Event()
        writers = [
            threading.Thread(
                target=_write_until_killed, args=(client(primary), acked, stop, f"w{n}")
            )
            for n in range(4)
        ]
        for t in writers:
            t.start()
        time.sleep(1.0)
        os.kill(primary.pid, signal.SIGKILL)
        stop.set()
        for t in writers:
            t.join(10)
        assert len(acked) > 100
        best = max(replicas, key=offset)  # what a sentinel would promote
        client(best).execute_command("REPLICAOF", "NO", "ONE")
        present = client(best)
        pipe = present.pipeline(transaction=False)
        for key in acked:
            pipe.exists(key)
        lost = len(acked) - sum(pipe.execute())
        print(f"sync_replicas={sync_replicas}: {len(acked)} acknowledged writes, {lost} lost")
        if sync_replicas:
            assert lost == 0
        assert present.set("after-promotion", "1")


def test_semi_sync_write_without_replicas_times_out_but_stays_applied() -> None:
    with running(["node", "--port", "0", "--sync-replicas", "1", "--sync-timeout-ms", "200"]) as p:
        r = client(p)
        start = time.monotonic()
        with pytest.raises(redis.ResponseError, match="TIMEOUT"):
            r.set("k", "v")
        assert 0.15 < time.monotonic() - start < 2
        assert r.get("k") == b"v"


def test_min_replicas_refuses_writes_then_recovers() -> None:
    with shard(1, "--min-replicas-to-write", "1", "--min-replicas-max-lag", "1") as (
        primary,
        replica,
    ):
        r = client(primary)
        assert r.set("x", "1")
        os.kill(replica.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:

            def refused() -> bool:
                try:
                    r.set("x", "2")
                except redis.ResponseError as exc:
                    return "NOREPLICAS" in str(exc)
                return False

            wait_until(refused, 5, "NOREPLICAS")
            assert time.monotonic() - stopped <= 1 + 1
        finally:
            os.kill(replica.pid, signal.SIGCONT)
        back = time.monotonic()
        wait_until(lambda: bool(r.set("x", "3")), 5, "writes again")
        assert time.monotonic() - back <= 1.0


def test_managed_node_fencing_rules() -> None:
    with running(["node", "--port", "0", "--managed"]) as p:
        r = client(p)
        with pytest.raises(redis.ReadOnlyError, match="no role"):
            r.set("x", "1")
        assert r.get("x") is None  # reads are fine
        assert r.execute_command("SG.ROLE", "primary", 5)
        assert r.set("x", "1")
        with pytest.raises(redis.ResponseError, match="STALE 5"):
            r.execute_command("SG.ROLE", "replica", 4, "127.0.0.1:1")
        with pytest.raises(redis.ResponseError, match="STALE 5"):
            r.execute_command("SG.FENCE", 3, "primary")
        assert r.execute_command("SG.FENCE", 5, "primary")
        assert r.execute_command("SG.FENCE", 6, "replica")  # a newer topology without us
        with pytest.raises(redis.ReadOnlyError, match="superseded in epoch 6"):
            r.set("x", "2")
        assert r.info("replication")["shardgate_fenced"] == 1
        assert r.execute_command("SG.ROLE", "primary", 6)
        assert r.set("x", "3")
        for bad in (["SG.ROLE", "boss", 7], ["SG.ROLE", "primary", "x"], ["SG.ROLE", "replica", 7],
                    ["SG.FENCE", -1], ["SG.FENCE", 7, "king"], ["SG.ROLE", "replica", 7, "nohost"]):  # fmt: skip
            with pytest.raises(redis.ResponseError):
                r.execute_command(*bad)
        assert r.set("x", "4")  # none of the bad ones changed anything


def test_demoted_primary_follows_the_new_one() -> None:
    with shard(1) as (old, new):
        client(old).set("k", "1")
        wait_until(lambda: client(new).get("k") == b"1", 5, "replicated")
        client(new).execute_command("SG.ROLE", "primary", 1)
        client(old).execute_command("SG.ROLE", "replica", 1, f"{new.host}:{new.port}")
        client(new).set("k", "2")
        wait_until(lambda: client(old).get("k") == b"2", 5, "old primary follows")
        with pytest.raises(redis.ReadOnlyError):
            client(old).set("k", "3")


def test_client_pause_write_holds_writes_not_reads() -> None:
    with running(["node", "--port", "0"]) as p:
        admin, other = client(p), client(p)
        admin.set("k", "0")
        assert admin.execute_command("CLIENT", "PAUSE", 400, "WRITE")
        start = time.monotonic()
        assert other.get("k") == b"0"  # reads go on
        assert time.monotonic() - start < 0.2
        assert other.set("k", "1")  # held until the pause ends
        assert 0.3 < time.monotonic() - start < 2
        assert admin.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
        done = threading.Event()
        threading.Thread(target=lambda: (other.set("k", "2"), done.set())).start()
        time.sleep(0.2)
        assert not done.is_set()
        admin.execute_command("CLIENT", "UNPAUSE")
        assert done.wait(2)
        assert admin.get("k") == b"2"
        with pytest.raises(redis.ResponseError):
            admin.execute_command("CLIENT", "PAUSE", -1)
        with pytest.raises(redis.ResponseError):
            admin.execute_command("CLIENT", "PAUSE", 10, "SOMETIMES")


def test_write_held_by_a_pause_fails_if_the_node_was_demoted_meanwhile() -> None:
    with running(["node", "--port", "0", "--managed"]) as p:
        admin, other = client(p), client(p)
        admin.execute_command("SG.ROLE", "primary", 1)
        admin.execute_command("CLIENT", "PAUSE", 2000, "WRITE")
        result: list[object] = []

        def write() -> None:
            try:
                result.append(other.set("k", "1"))
            except redis.RedisError as exc:
                result.append(exc)

        t = threading.Thread(target=write)
        t.start()
        time.sleep(0.2)
        admin.execute_command("SG.ROLE", "replica", 2, "127.0.0.1:1")
        admin.execute_command("CLIENT", "UNPAUSE")
        t.join(5)
        assert isinstance(result[0], redis.ReadOnlyError)
        assert admin.get("k") is None
