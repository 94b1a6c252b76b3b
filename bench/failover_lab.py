"""The shardgate side of ``bench failover``: the lab, driven through its CLI (``shardgate lab``).

Kills are sent by the bench itself (SIGKILL to the node's process group, which is what
``shardgate lab kill`` does) so the kill time is the signal's time, not a CLI's start-up later;
restarts go through ``shardgate lab start``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from bench.failover import (
    Address,
    FailoverError,
    ask,
    command,
    existing,
    replica_synced,
    sentinel_primary,
    wait_for,
)
from shardgate.slots import SLOTS, slot_for_key


def shard_tags(shards: int) -> dict[str, bytes]:
    """A hash tag per shard whose slot lies in that shard's even slot range (the lab's split)."""
    tags: dict[str, bytes] = {}
    i = 0
    while len(tags) < shards:
        tag = b"fo%d" % i
        shard = slot_for_key(tag) * shards // SLOTS
        tags.setdefault(f"shard{shard}", tag)
        i += 1
    return tags


class ShardgateLabSystem:
    def __init__(
        self, directory: Path, base_port: int, *, shards: int, replicas: int, sync: bool
    ) -> None:
        self.dir = directory
        self.base_port = base_port
        self.shards = [f"shard{i}" for i in range(shards)]
        self.replicas = replicas
        self.sync = sync
        self.tags = shard_tags(shards)

    def lab(self, *args: str, check: bool = True) -> str:
        argv = [sys.executable, "-m", "shardgate", "lab", *args, "--dir", str(self.dir)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if check and done.returncode != 0:
            raise FailoverError(f"{' '.join(argv[2:])} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def status(self) -> list[dict[str, Any]]:
        return list(json.loads(self.lab("status", "--json")))

    def by_role(self, role: str) -> list[dict[str, Any]]:
        return [p for p in self.status() if p["role"] == role]

    @property
    def sentinels(self) -> list[Address]:
        return [(p["host"], p["port"]) for p in self.by_role("sentinel")]

    @property
    def proxies(self) -> dict[str, Address]:
        return {p["name"]: (p["host"], p["port"]) for p in self.by_role("proxy")}

    def up(self) -> None:
        self.lab(
            "up",
            "--base-port",
            str(self.base_port),
            "--replicas",
            str(self.replicas),
            "--sentinels",
            "3",
        )
        if self.sync:
            self._make_semi_sync()
        self.settle()
        self._check_tags()

    def _make_semi_sync(self) -> None:
        """``sync_replicas = 1`` in every node's config (not settable at run time), restarting
        the replicas first and then each primary (the sentinels fail it over meanwhile)."""
        nodes = sorted(
            (p for p in self.status() if p["role"] in ("primary", "replica")),
            key=lambda p: p["role"] == "primary",
        )
        for p in nodes:
            path = self.dir / f"{p['name']}.toml"
            path.write_text(path.read_text() + "sync_replicas = 1  # bench failover --sync\n")
            self.lab("kill", p["name"])
            self.lab("start", p["name"])
            self.settle()

    def settle(self) -> None:
        """Every shard has a primary the sentinels agree on, with an online replica, and a
        write through every proxy succeeds on it."""
        for shard in self.shards:
            wait_for(partial(self._healthy, shard), timeout=60, what=f"{shard} to settle")

    def _healthy(self, shard: str) -> bool:
        primary = sentinel_primary(self.sentinels, shard)
        if not replica_synced(primary, want=self.replicas):
            return False  # not a primary yet, or no replica in sync
        key = b"{%s}:probe" % self.tags[shard]
        return all(ask(addr, b"SET", key, b"1") == b"+OK" for addr in self.proxies.values())

    def _check_tags(self) -> None:
        for shard, tag in self.tags.items():
            key = b"{%s}:tagcheck" % tag
            proxy = next(iter(self.proxies.values()))
            ask(proxy, b"SET", key, b"1")
            if not existing(sentinel_primary(self.sentinels, shard), [key]):
                raise FailoverError(
                    f"key {key!r} written through a proxy is not on {shard}'s primary: the lab's "
                    "slot split is not the even one this bench assumes"
                )

    def primary(self, shard: str) -> tuple[str, Address]:
        addr = sentinel_primary(self.sentinels, shard)
        for p in self.status():
            if p["port"] == addr[1] and p["role"] in ("primary", "replica"):
                return str(p["name"]), addr
        raise FailoverError(f"no lab process listens on {addr}")

    def kill(self, name: str) -> float:
        """SIGKILL the node's process group; returns the monotonic time of the signal."""
        pid = next(p["pid"] for p in self.status() if p["name"] == name)
        at = time.monotonic()
        os.killpg(pid, signal.SIGKILL)
        return at

    def start(self, name: str) -> None:
        self.lab("kill", name, check=False)  # the lab's own bookkeeping of the dead process
        self.lab("start", name)

    def down(self) -> None:
        self.lab("down", check=False)


__all__ = ["ShardgateLabSystem", "command", "shard_tags"]
