"""Snapshots with real processes: restarts inside and beyond the backlog, commands, bad files."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from storenode import snapshot_file
from tests.procs import ROOT, Proc, running, wait_until
from tests.storenode.test_replication import client, dump, offset

pytestmark = pytest.mark.slow


def persistence(p: Proc) -> dict[str, object]:
    return client(p).info("persistence")


def write_batch(r: redis.Redis, prefix: str, n: int) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        key = f"{prefix}:{i}"
        if i % 3 == 0:
            pipe.set(key, key, ex=1000 + i)
        elif i % 3 == 1:
            pipe.set(key, key * 3)
        else:
            pipe.incrby(f"{prefix}:counter", i)
    pipe.execute()


@contextlib.contextmanager
def primary_with_dir(tmp_path: Path, *extra: str) -> Iterator[tuple[Proc, list[str]]]:
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    with running(["node", "--port", "0", "--dir", str(tmp_path / "p"), *extra]) as primary:
        replica_args = [
            "node", "--port", "0", "--replicaof", f"{primary.host}:{primary.port}",
            "--dir", str(tmp_path / "r"), "--save", "",
        ]  # fmt: skip
        yield primary, replica_args


def wait_synced(primary: Proc, replica: Proc) -> None:
    wait_until(
        lambda: (
            client(replica).info("replication")["master_link_status"] == "up"
            and offset(replica) == offset(primary)
        ),
        15,
        "replica in sync",
    )


def syncs(primary: Proc) -> tuple[int, int, int]:
    s = client(primary).info("stats")
    return s["sync_full"], s["sync_partial_ok"], s["sync_partial_err"]


def stop_with(p: Proc, sig: signal.Signals) -> None:
    os.kill(p.pid, sig)
    p.popen.wait(15)


def test_replica_sigtermed_and_restarted_inside_the_backlog_resyncs_partially(
    tmp_path: Path,
) -> None:
    with primary_with_dir(tmp_path) as (primary, replica_args):
        r = client(primary)
        write_batch(r, "a", 600)
        with running(replica_args) as replica:
            wait_synced(primary, replica)
            saved_at = offset(replica)
            stop_with(replica, signal.SIGTERM)  # the shutdown save
        assert any("saved" in line for line in replica.output)
        write_batch(r, "b", 300)  # a few KB: well inside the 1 MB backlog
        r.delete("a:1", "a:4")
        r.expire("a:7", 500)
        assert syncs(primary) == (1, 0, 0)
        with running(replica_args) as again:
            info = persistence(again)
            assert info["rdb_last_load_keys_loaded"] == 401
            assert client(again).info("replication")["master_replid"]  # loaded, then synced
            wait_synced(primary, again)
            assert syncs(primary) == (1, 1, 0)  # partial: no second full sync
            assert dump(client(again)) == dump(r)  # every key, value and absolute expiry
            assert offset(again) > saved_at


@pytest.mark.parametrize("how", ["bgsave", "periodic"])
def test_replica_killed_after_a_background_save_resyncs_partially(tmp_path: Path, how: str) -> None:
    with primary_with_dir(tmp_path) as (primary, replica_args):
        if how == "periodic":
            replica_args[-1] = "1"  # --save 1: every second when anything changed
        r = client(primary)
        write_batch(r, "a", 600)
        with running(replica_args) as replica:
            wait_synced(primary, replica)
            target = offset(replica)
            if how == "bgsave":
                assert client(replica).bgsave()
            wait_until(
                lambda: (
                    persistence(replica)["shardgate_snapshot_offset"] == target
                    and persistence(replica)["rdb_bgsave_in_progress"] == 0
                ),
                15,
                "background save done",
            )
            assert persistence(replica)["rdb_last_bgsave_status"] == "ok"
            write_batch(r, "b", 200)  # reaches the replica but not its snapshot
            wait_synced(primary, replica)
            stop_with(replica, signal.SIGKILL)  # no shutdown save
        write_batch(r, "c", 200)
        with running(replica_args) as again:
            assert persistence(again)["rdb_last_load_keys_loaded"] == 401
            wait_synced(primary, again)
            assert syncs(primary) == (1, 1, 0)
            assert dump(client(again)) == dump(r)


def _churn(r: redis.Redis, stop: threading.Event, keys: int) -> None:
    """Overwrite, delete and re-expire keys the save is walking, until told to stop."""
    rng = random.Random(3)
    while not stop.is_set():
        pipe = r.pipeline(transaction=False)
        for _ in range(20):
            key = f"bulk:{rng.randrange(keys)}"
            kind = rng.randrange(4)
            if kind == 0:
                pipe.set(key, "changed", ex=rng.randrange(100, 5000))
            elif kind == 1:
                pipe.delete(key)
            elif kind == 2:
                pipe.set(key, "new")
            else:
                pipe.pexpire(key, rng.randrange(100_000, 900_000))
        pipe.execute()
        time.sleep(0.002)


def test_background_save_under_writes_holds_exactly_its_offset(tmp_path: Path) -> None:
    """The chunked BGSAVE walks while writes go on: restarted from the file, the replica
    continues from the file's offset and ends equal to the primary, key by key."""
    with primary_with_dir(tmp_path) as (primary, replica_args):
        r = client(primary)
        keys = 60_000
        for start in range(0, keys, 10_000):
            pipe = r.pipeline(transaction=False)
            for i in range(start, start + 10_000):
                pipe.set(f"bulk:{i}", "v" * 20, ex=3600) if i % 2 else pipe.set(f"bulk:{i}", i)
            pipe.execute()
        with running(replica_args) as replica:
            wait_synced(primary, replica)
            stop = threading.Event()
            writer = threading.Thread(target=_churn, args=(client(primary), stop, keys))
            writer.start()
            try:
                time.sleep(0.1)
                assert client(replica).bgsave()
                wait_until(
                    lambda: persistence(replica)["rdb_bgsave_in_progress"] == 0, 30, "bgsave"
                )
            finally:
                stop.set()
                writer.join(10)
            info = persistence(replica)
            assert info["rdb_last_bgsave_status"] == "ok" and info["rdb_saves"] == 1
            saved = info["shardgate_snapshot_offset"]
            wait_synced(primary, replica)
            assert offset(replica) >= saved
            stop_with(replica, signal.SIGKILL)
        with running(replica_args) as again:
            wait_synced(primary, again)
            assert syncs(primary) == (1, 1, 0)
            assert dump(client(again)) == dump(r)


def test_replica_restarted_beyond_the_backlog_does_a_full_sync(tmp_path: Path) -> None:
    with primary_with_dir(tmp_path, "--repl-backlog-size", "16kb") as (primary, replica_args):
        r = client(primary)
        write_batch(r, "a", 300)
        with running(replica_args) as replica:
            wait_synced(primary, replica)
            stop_with(replica, signal.SIGTERM)
        for i in range(300):
            r.set(f"big{i}", "x" * 200)  # 60 KB: past a 16 KB backlog
        with running(replica_args) as again:
            wait_synced(primary, again)
            assert syncs(primary) == (2, 0, 1)  # asked to continue, refused, full sync
            assert dump(client(again)) == dump(r)


def test_primary_restarted_from_its_shutdown_snapshot_keeps_data_and_history(
    tmp_path: Path,
) -> None:
    d = tmp_path / "p"
    d.mkdir()
    args = ["node", "--port", "0", "--dir", str(d)]
    with running(args) as first:
        r = client(first)
        write_batch(r, "k", 300)
        want = dump(r)
        replid = r.info("replication")["master_replid"]
        with pytest.raises(redis.ConnectionError):
            r.execute_command("SHUTDOWN")  # no reply: the connection closes
        first.popen.wait(15)
    assert first.popen.returncode == 0
    with running(args) as second:
        r2 = client(second)
        assert dump(r2) == want
        info = r2.info("replication")
        assert info["master_replid2"] == replid and info["master_replid"] != replid


def test_managed_node_with_a_snapshot_still_waits_for_its_role(tmp_path: Path) -> None:
    with running(["node", "--port", "0", "--dir", str(tmp_path)]) as first:
        client(first).set("kept", "1")
        stop_with(first, signal.SIGTERM)
    with running(["node", "--port", "0", "--dir", str(tmp_path), "--managed"]) as p:
        r = client(p)
        assert r.get("kept") == b"1"
        with pytest.raises(redis.ReadOnlyError, match="no role"):
            r.set("x", "1")
        assert r.execute_command("SG.ROLE", "primary", 3)
        assert r.set("x", "1")


def test_persistence_commands_match_redis(tmp_path: Path) -> None:
    with running(["node", "--port", "0", "--dir", str(tmp_path), "--save", ""]) as p:
        r = client(p)
        before = r.lastsave()
        r.set("k", "v")
        assert persistence(p)["rdb_changes_since_last_save"] == 1
        time.sleep(1.1)
        assert r.save() is True
        assert r.lastsave() > before
        assert persistence(p)["rdb_changes_since_last_save"] == 0
        # One pipeline: the second BGSAVE and the SAVE run before the first child is reaped.
        with socket.create_connection((p.host, p.port), timeout=5) as s:
            s.sendall(b"BGSAVE\r\nBGSAVE\r\nSAVE\r\nLASTSAVE\r\n")
            want = (
                b"+Background saving started\r\n"
                b"-ERR Background save already in progress\r\n"
                b"-ERR Background save already in progress\r\n:"
            )
            got = b""
            while not got.endswith(b"\r\n") or len(got) <= len(want):
                got += s.recv(4096)
            assert got.startswith(want)
        wait_until(lambda: persistence(p)["rdb_bgsave_in_progress"] == 0, 10, "bgsave")
        for bad, text in [
            (["BGSAVE", "now"], "^syntax error$"),
            (["SAVE", "x"], "^wrong number of arguments for 'save' command$"),
            (["LASTSAVE", "x"], "^wrong number of arguments for 'lastsave' command$"),
            (["SHUTDOWN", "nosave", "save"], "^syntax error$"),
            (["SHUTDOWN", "abort"], r"^No shutdown in progress\.$"),
            (["CONFIG", "SET", "dir", "/tmp"], "can't set protected config"),
            (["CONFIG", "SET", "save", "abc 1"], "Invalid save parameters"),
        ]:
            with pytest.raises(redis.ResponseError, match=text):
                r.execute_command(*bad)
        assert r.config_get("save") == {"save": ""}
        assert r.config_set("save", "60 1")
        assert r.config_get("save") == {"save": "60 1"}
        assert r.config_get("dir") == {"dir": str(tmp_path)}
        assert r.config_get("dbfilename") == {"dbfilename": "dump.sg"}
        r.set("after", "1")
        with pytest.raises(redis.ConnectionError):
            r.execute_command("SHUTDOWN", "NOSAVE")
        p.popen.wait(15)
    with running(["node", "--port", "0", "--dir", str(tmp_path)]) as p:
        assert client(p).get("k") == b"v" and client(p).get("after") is None


def test_without_a_dir_nothing_is_saved() -> None:
    with running(["node", "--port", "0"]) as p:
        r = client(p)
        for cmd in (["SAVE"], ["BGSAVE"]):
            with pytest.raises(redis.ResponseError, match="persistence is off"):
                r.execute_command(*cmd)
        with pytest.raises(redis.ResponseError, match="Errors trying to SHUTDOWN"):
            r.execute_command("SHUTDOWN", "SAVE")
        assert persistence(p)["shardgate_snapshot_enabled"] == 0


def _start_failure(tmp_path: Path, content: bytes) -> subprocess.CompletedProcess[str]:
    (tmp_path / "dump.sg").write_bytes(content)
    return subprocess.run(
        [sys.executable, "-m", "shardgate", "node", "--port", "0", "--dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _good() -> bytes:
    return snapshot_file.encode_bytes(
        snapshot_file.Snapshot("cd" * 20, 99, 0, [(b"k", b"v", 0), (b"t", b"w", 0)])
    )


def _versioned(version: int) -> bytes:
    body = bytearray(_good()[:-4])
    body[8:12] = struct.pack("<I", version)
    return bytes(body) + struct.pack("<I", zlib.crc32(body))


def _hostile() -> bytes:
    head = struct.pack("<8sIq", snapshot_file.MAGIC, 1, 0)
    record = struct.pack("<BIIq", 1, 2**32 - 1, 2**32 - 1, 0)
    body = head + record + struct.pack("<BQ40sq", 0xFF, 1, b"cd" * 20, 0)
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (_good()[:-7], "checksum mismatch"),
        (_good()[:30], "truncated"),
        (_good()[:40] + b"\x00" + _good()[41:], "checksum mismatch"),
        (_versioned(9), "unsupported snapshot version 9"),
        (_hostile(), "longer than the file"),
        (b"REDIS0011\xfa", "bad magic"),
        (b"", "bad magic"),
    ],
    ids=["truncated-end", "truncated-header", "corrupt", "version", "hostile", "rdb", "empty"],
)
def test_a_bad_snapshot_stops_the_start_with_exit_status_2(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    result = _start_failure(tmp_path, content)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and reason in lines[0] and "dump.sg" in lines[0], result.stderr
    assert "listening" not in result.stdout
