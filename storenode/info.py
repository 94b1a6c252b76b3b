"""INFO sections with Redis's field names, built from a node's counters."""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from shardgate import __version__
from storenode.persistence import changes_since_save
from storenode.roles import Role

if TYPE_CHECKING:
    from storenode.node import Node

# Clients and tools parse redis_version to decide what to send; we speak Redis 7.0's dialect.
REDIS_COMPAT_VERSION = "7.0.0"

DEFAULT_SECTIONS = (
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "keyspace",
)
ALL_SECTIONS = (*DEFAULT_SECTIONS, "commandstats", "errorstats")


def human_bytes(n: int) -> str:
    """Redis's bytesToHuman: 1.00K, 2.50M, ..."""
    value = float(n)
    for unit in ("B", "K", "M", "G", "T", "P"):
        if value < 1024 or unit == "P":
            return f"{int(value)}B" if unit == "B" else f"{value:.2f}{unit}"
        value /= 1024
    return f"{n}B"


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _server(node: Node) -> list[tuple[str, object]]:
    now = time.time()
    uptime = int(now - node.started_wall)
    return [
        ("redis_version", REDIS_COMPAT_VERSION),
        ("shardgate_version", __version__),
        ("redis_mode", "standalone"),
        ("os", f"{platform.system()} {platform.release()} {platform.machine()}"),
        ("arch_bits", 64 if sys.maxsize > 2**32 else 32),
        ("multiplexing_api", "epoll"),
        ("process_id", os.getpid()),
        ("run_id", node.run_id),
        ("tcp_port", node.port),
        ("server_time_usec", int(now * 1_000_000)),
        ("uptime_in_seconds", uptime),
        ("uptime_in_days", uptime // 86400),
        ("hz", node.config.hz),
        ("executable", sys.executable),
        ("config_file", node.config_file or ""),
    ]


def _clients(node: Node) -> list[tuple[str, object]]:
    return [
        ("connected_clients", len(node.sessions)),
        ("cluster_connections", 0),
        ("maxclients", node.config.maxclients),
        ("blocked_clients", 0),
        ("tracking_clients", 0),
    ]


def _memory(node: Node) -> list[tuple[str, object]]:
    ks = node.keyspace
    used = ks.used_memory
    node.used_memory_peak = max(node.used_memory_peak, used)
    rss = rss_bytes()
    maxmem = ks.maxmemory
    return [
        ("used_memory", used),
        ("used_memory_human", human_bytes(used)),
        ("used_memory_rss", rss),
        ("used_memory_rss_human", human_bytes(rss)),
        ("used_memory_peak", node.used_memory_peak),
        ("used_memory_peak_human", human_bytes(node.used_memory_peak)),
        ("used_memory_dataset", used),
        ("maxmemory", maxmem),
        ("maxmemory_human", human_bytes(maxmem)),
        ("maxmemory_policy", ks.policy.value),
        ("mem_fragmentation_ratio", f"{rss / used:.2f}" if used else "0.00"),
    ]


def _persistence(node: Node) -> list[tuple[str, object]]:
    p = node.persistence
    running = p.bg_running
    return [
        ("loading", 0),  # a snapshot is loaded before the node listens
        ("async_loading", 0),
        ("rdb_changes_since_last_save", changes_since_save(node)),
        ("rdb_bgsave_in_progress", int(running)),
        ("rdb_last_save_time", p.lastsave),
        ("rdb_last_bgsave_status", "ok" if p.last_status_ok else "err"),
        ("rdb_last_bgsave_time_sec", p.last_bgsave_seconds),
        ("rdb_current_bgsave_time_sec", int(time.monotonic() - p.bg_started) if running else -1),
        ("rdb_saves", p.saves),
        ("rdb_last_load_keys_expired", p.load_expired),
        ("rdb_last_load_keys_loaded", p.loaded_keys),
        ("aof_enabled", 0),
        ("shardgate_snapshot_enabled", int(p.enabled)),
        ("shardgate_snapshot_offset", p.saved_offset),
        ("shardgate_bgsave_max_slice_usec", p.bg_max_slice_us),
    ]


def _stats(node: Node) -> list[tuple[str, object]]:
    s = node.stats
    k = node.keyspace.stats
    return [
        ("total_connections_received", s.connections_received),
        ("total_commands_processed", s.commands_processed),
        ("total_net_input_bytes", s.net_input_bytes),
        ("total_net_output_bytes", s.net_output_bytes),
        ("rejected_connections", s.rejected_connections),
        ("expired_keys", k.expired_keys),
        ("evicted_keys", k.evicted_keys),
        ("keyspace_hits", k.keyspace_hits),
        ("keyspace_misses", k.keyspace_misses),
        ("total_error_replies", s.error_replies),
        ("protocol_errors", s.protocol_errors),
        ("client_output_limit_disconnections", s.output_limit_disconnections),
        ("sync_full", node.repl.full_syncs),
        ("sync_partial_ok", node.repl.partial_syncs),
        ("sync_partial_err", node.repl.partial_refused),
        ("latest_fork_usec", 0),  # background saves do not fork (storenode/persistence.py)
    ]


def _replication(node: Node) -> list[tuple[str, object]]:
    state = node.roles
    repl = node.repl
    now = time.monotonic()
    out: list[tuple[str, object]] = []
    if state.role is Role.REPLICA and state.primary:
        host, _, port = state.primary.rpartition(":")
        out += [
            ("role", "slave"),
            ("master_host", host),
            ("master_port", port),
            ("master_link_status", "up" if repl.link_up else "down"),
            ("master_last_io_seconds_ago", int(now - repl.last_io) if repl.last_io else -1),
            ("master_sync_in_progress", int(repl.sync_in_progress)),
            (
                "master_link_down_since_seconds",
                -1 if repl.link_up or not repl.link_down_since else int(now - repl.link_down_since),
            ),
            ("slave_read_repl_offset", repl.offset),
            ("slave_repl_offset", repl.offset),
            ("slave_priority", node.config.replica_priority),
            ("slave_read_only", 1),
            ("replica_announced", 1),
        ]
    else:
        out.append(("role", "master"))
    table = repl.replicas.replicas
    out.append(("connected_slaves", len(table)))
    for i, r in enumerate(table.values()):
        host, _, port = r.addr.rpartition(":")
        lag = int(now - r.last_ack) if r.last_ack else -1
        state_name = "online" if r.online else "wait_bgsave"
        out.append(
            (
                f"slave{i}",
                f"ip={host},port={port},state={state_name},offset={r.ack_offset},lag={lag}",
            )
        )
    backlog = repl.backlog
    out += [
        ("master_failover_state", "no-failover"),
        ("master_replid", repl.replid),
        ("master_replid2", repl.replid2),
        ("master_repl_offset", repl.offset),
        ("second_repl_offset", repl.second_offset),
        ("repl_backlog_active", int(backlog is not None)),
        ("repl_backlog_size", node.config.repl_backlog_size),
        ("repl_backlog_first_byte_offset", backlog.start_offset + 1 if backlog else 0),
        ("repl_backlog_histlen", backlog.end_offset - backlog.start_offset if backlog else 0),
        ("shardgate_role", state.role.value),
        ("shardgate_epoch", state.epoch),
        ("shardgate_role_epoch", state.role_epoch),
        ("shardgate_fenced", int(state.fenced)),
        ("shardgate_sync_replicas", node.config.sync_replicas),
    ]
    return out


def _cpu(node: Node) -> list[tuple[str, object]]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return [("used_cpu_sys", f"{ru.ru_stime:.6f}"), ("used_cpu_user", f"{ru.ru_utime:.6f}")]


def _keyspace(node: Node) -> list[tuple[str, object]]:
    ks = node.keyspace
    if not len(ks):
        return []
    return [("db0", f"keys={len(ks)},expires={ks.expires_count},avg_ttl=0")]


def _commandstats(node: Node) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for name, (calls, usec, failed) in sorted(node.stats.command_calls.items()):
        if not calls:
            continue
        per = usec / calls if calls else 0.0
        out.append(
            (
                f"cmdstat_{name}",
                f"calls={calls},usec={int(usec)},usec_per_call={per:.2f},"
                f"rejected_calls=0,failed_calls={failed}",
            )
        )
    return out


def _errorstats(node: Node) -> list[tuple[str, object]]:
    return [
        (f"errorstat_{prefix}", f"count={count}")
        for prefix, count in sorted(node.stats.error_prefixes.items())
    ]


SECTIONS: dict[str, Callable[[Node], list[tuple[str, object]]]] = {
    "server": _server,
    "clients": _clients,
    "memory": _memory,
    "persistence": _persistence,
    "stats": _stats,
    "replication": _replication,
    "cpu": _cpu,
    "keyspace": _keyspace,
    "commandstats": _commandstats,
    "errorstats": _errorstats,
}


def render_info(node: Node, requested: list[str]) -> str:
    names: list[str] = []
    wanted = [r.lower() for r in requested] or ["default"]
    for r in wanted:
        if r == "default":
            names.extend(DEFAULT_SECTIONS)
        elif r in ("all", "everything"):
            names.extend(ALL_SECTIONS)
        elif r in SECTIONS:
            names.append(r)
    blocks: list[str] = []
    for name in dict.fromkeys(names):
        lines = [f"# {name.capitalize()}"]
        lines.extend(f"{k}:{v}" for k, v in SECTIONS[name](node))
        blocks.append("\r\n".join(lines) + "\r\n")
    return "\r\n".join(blocks)
