"""``shardgate bench failover``: the kill loop, for the shardgate lab and for Redis Sentinel."""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import attrs

from bench.compare import machine_info
from bench.failover import (
    Address,
    FailoverError,
    RedisSentinelSystem,
    Writer,
    existing,
    replica_synced,
    sentinel_primary,
    wait_for,
)
from bench.failover_lab import ShardgateLabSystem
from bench.failover_stats import Kill, blackout, lost_keys, render
from bench.markdown import replace_section

SECTION = "bench-failover"
STEADY = 2.0  # seconds of steady writes before each kill
RECOVERY_TIMEOUT = 30.0  # seconds a path gets to acknowledge a write after a kill


class System(Protocol):
    replicas: int

    @property
    def sentinels(self) -> list[Address]: ...
    def up(self) -> None: ...
    def primary(self, shard: str) -> tuple[str, Address]: ...
    def kill(self, name: str) -> float: ...
    def start(self, name: str) -> None: ...
    def down(self) -> None: ...


def register(sub: Any, *, func: Callable[[argparse.Namespace], int]) -> None:
    p = sub.add_parser(
        "failover",
        help="write blackout and lost writes when a primary dies (shardgate vs Redis Sentinel)",
        description=(
            "Brings up the shardgate lab (3 shards x primary + replicas, 3 sentinels, 2 proxies) "
            "and/or Redis Sentinel (primary + replica redis-server, 3 redis-server --sentinel), "
            "both with down-after 1000 ms, writes steadily through every path (each proxy, and "
            "a Sentinel client that asks the sentinels for the primary), SIGKILLs a primary "
            "--kills times, and reports per path the blackout (kill -> first acknowledged write "
            "sent after it) p50/p99/max and the acknowledged writes lost. --sync: the lab's nodes "
            "run sync_replicas = 1 and Redis follows each SET with WAIT 1, both with 2 replicas (so a promoted primary still has one to acknowledge)."
        ),
    )
    p.add_argument("--kills", type=int, default=10, help="kills per system and mode (10)")
    p.add_argument(
        "--system",
        choices=("shardgate", "redis", "both"),
        default="both",
        help="which system(s) to measure (both)",
    )
    p.add_argument(
        "--mode",
        choices=("async", "sync", "both"),
        default="both",
        help="async replication, semi-sync, or both (both)",
    )
    p.add_argument("--base-port", type=int, default=26000, help="first port used (26000)")
    p.add_argument("--dir", default=None, help="lab directories and logs (default: a temp dir)")
    p.add_argument("--json", metavar="FILE", help="every kill's figures as JSON")
    p.add_argument("--write", metavar="FILE", help=f"replace the {SECTION} section of FILE")
    p.set_defaults(func=func)


def shard_keys(prefix: bytes) -> Iterator[bytes]:
    return (b"%s:%d" % (prefix, i) for i in itertools.count())


def run_kills(
    system: System,
    writers: dict[str, list[Writer]],
    *,
    kills: int,
    echo: Callable[[str], None],
) -> list[Kill]:
    """``writers``: shard → the writers (one per path) whose keys land in that shard."""
    shards = list(writers)
    out: list[Kill] = []
    cycle_start = time.monotonic()
    for k in range(kills):
        shard = shards[k % len(shards)]
        time.sleep(STEADY)
        victim, _ = system.primary(shard)
        kill_at = system.kill(victim)
        group = writers[shard]
        try:
            wait_for(
                partial(_recovered, group, kill_at),
                timeout=RECOVERY_TIMEOUT,
                what="every path to acknowledge a write",
            )
        except FailoverError as exc:
            echo(f"  kill {k + 1}: {exc}")
        blackouts = {w.path: blackout(w.writes, kill_at) for w in group}
        system.start(victim)
        # The restarted node must be a replica in sync before the next kill of this shard.
        wait_for(partial(_settled, system, shard), timeout=180, what=f"{shard} to resync")
        now = time.monotonic()
        acked = [
            wr.key
            for w in group
            for wr in w.writes
            if wr.acked is not None and cycle_start <= wr.sent < now
        ]
        primary = sentinel_primary(system.sentinels, shard)
        lost = lost_keys(acked, existing(primary, acked))
        cycle_start = now
        shown = ", ".join(
            f"{p} {'-' if v is None else f'{v * 1000:.0f} ms'}" for p, v in blackouts.items()
        )
        echo(f"  kill {k + 1}/{kills}: {victim} ({shard}): {shown}; lost {len(lost)}/{len(acked)}")
        out.append(Kill(victim, blackouts, len(acked), len(lost)))
    return out


def measure(
    which: str, sync: bool, *, kills: int, base: Path, port: int, echo: Callable[[str], None]
) -> list[Kill]:
    system: System
    writers: dict[str, list[Writer]] = {}
    if which == "shardgate":
        lab = ShardgateLabSystem(
            base / f"lab-{'sync' if sync else 'async'}",
            port,
            shards=3,
            replicas=2 if sync else 1,
            sync=sync,
        )
        system = lab
    else:
        rs = RedisSentinelSystem(
            base / f"redis-{'sync' if sync else 'async'}", port, replicas=2 if sync else 1
        )
        system = rs
    try:
        echo(f"bench failover: bringing up {which} ({'semi-sync' if sync else 'async'}) ...")
        system.up()
        if isinstance(system, ShardgateLabSystem):
            for shard, tag in system.tags.items():
                paths: list[Writer] = []
                for name, addr in system.proxies.items():
                    keys = shard_keys(b"{%s}:%s" % (tag, name.encode()))
                    paths.append(Writer(name, partial(_fixed, addr), keys, wait=False))
                sentinel = _sentinel_resolver(system, shard)
                keys = shard_keys(b"{%s}:sentinel-client" % tag)
                paths.append(Writer("sentinel client", sentinel, keys, wait=False))
                writers[shard] = paths
        else:
            resolver = _sentinel_resolver(system, RedisSentinelSystem.name)
            writers["mymaster"] = [
                Writer("sentinel client", resolver, shard_keys(b"fo"), wait=sync)
            ]
        all_writers = [w for group in writers.values() for w in group]
        for w in all_writers:
            w.start()
        try:
            return run_kills(system, writers, kills=kills, echo=echo)
        finally:
            for w in all_writers:
                w.stop.set()
            for w in all_writers:
                w.join(timeout=5)
    finally:
        system.down()


def _recovered(group: list[Writer], kill_at: float) -> bool:
    return all(blackout(w.writes[-5000:], kill_at) is not None for w in group)


def _settled(system: System, shard: str) -> bool:
    return replica_synced(sentinel_primary(system.sentinels, shard), want=system.replicas)


def _fixed(addr: Address) -> Address:
    return addr


def _sentinel_resolver(system: System, name: str) -> Callable[[], Address]:
    return partial(_ask_sentinels, system, name)


def _ask_sentinels(system: System, name: str) -> Address:
    return sentinel_primary(system.sentinels, name)


def main(args: argparse.Namespace) -> int:
    if args.kills < 1:
        print("shardgate bench failover: --kills must be at least 1", file=sys.stderr)
        return 2
    if args.system != "shardgate" and shutil.which("redis-server") is None:
        print(
            "shardgate bench failover: redis-server is missing (Debian: apt-get install "
            "redis-server), or use --system shardgate",
            file=sys.stderr,
        )
        return 2

    def echo(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    base = Path(args.dir or tempfile.mkdtemp(prefix="shardgate-failover-"))
    systems = ["shardgate", "redis"] if args.system == "both" else [args.system]
    modes = [False, True] if args.mode == "both" else [args.mode == "sync"]
    tables: list[str] = []
    results: dict[str, Any] = {}
    for which in systems:
        for sync in modes:
            port = args.base_port if which == "shardgate" else args.base_port + 1500
            try:
                kills = measure(which, sync, kills=args.kills, base=base, port=port, echo=echo)
            except FailoverError as exc:
                echo(f"bench failover: {which} {'sync' if sync else 'async'}: {exc}")
                continue
            mode = _mode_label(which, sync)
            tables.append(render(which, mode, kills))
            results[f"{which}/{'sync' if sync else 'async'}"] = [attrs.asdict(k) for k in kills]
    command = shlex.join(["shardgate", "bench", *args.argv])
    markdown = "\n".join(
        [
            "### Failover: write blackout and lost writes",
            "",
            *machine_info(),
            f"- Command: `{command}`",
            "- Blackout: SIGKILL of the shard's primary → first acknowledged SET sent after "
            "it, per path (writers: one SET at a time, at most 500/s, per path and shard, 1 s "
            "timeout; after an error the next SET goes 5 ms later). Lost: "
            "acknowledged keys of the killed shard missing from the new primary once settled.",
            "",
            "\n\n".join(tables),
        ]
    )
    print(markdown)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    if args.write:
        path = Path(args.write)
        document = path.read_text() if path.exists() else ""
        path.write_text(replace_section(document, SECTION, markdown))
        echo(f"bench failover: wrote the {SECTION} section of {path}")
    return 0 if tables else 1


def _mode_label(which: str, sync: bool) -> str:
    if not sync:
        return "async"
    return "sync_replicas=1" if which == "shardgate" else "SET+WAIT 1"
