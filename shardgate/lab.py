"""The local lab: run a planned cluster of real processes on one machine, and supervise them.

How it works
- ``shardgate.lab_plan`` computes the processes and files (pure, from ``shardgate.lab_config``,
  which also renders ``compose/config``); ``up`` checks every port, writes the files and starts
  the processes in three steps, each waited for before the next: the store nodes answer PING;
  the sentinels and proxies answer PING; then the cluster has **settled**: every ``--managed``
  node holds the role a sentinel assigned it (replicas with their link up), and every proxy
  holds a topology (with sentinels, the one it fetched from them). Only then does ``up`` return,
  so a client of ``lab up`` can write at once.
- ``Lab`` supervises: each process starts in its own session, so its process group holds
  anything it forks (proxy workers), with stdout and stderr appended to a log in the lab
  directory. ``state.json`` records each process's spec, pid and the kernel's start time of that
  pid; a pid whose start time no longer matches belongs to someone else and is never signalled.
  Signals go to the whole process group.
- A process that exits early or misses a deadline fails ``up`` with the tail of its log, after
  everything started is stopped.

Nothing here imports a role: roles are started as ``python -m shardgate node|proxy|sentinel``
processes. The planning and probing names are re-exported, so ``shardgate.lab`` is the one
import tests and the bench need.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
import hiredis

from shardgate.lab_config import TARGETS_FILE, LabTopology, render
from shardgate.lab_plan import (
    CLUSTER_FILE,
    METRICS_PORT_OFFSET,
    NODE_KINDS,
    NODE_PORT_OFFSET,
    PROXY_KINDS,
    SENTINEL_DOWN_AFTER_MS,
    SENTINEL_FAILOVER_TIMEOUT_MS,
    SENTINEL_PORT_OFFSET,
    SLOTS,
    LabConfig,
    LabError,
    LabPlan,
    NodeKind,
    ProcessSpec,
    ProxyKind,
    Role,
    cluster_toml,
    node_argv,
    node_name,
    nutcracker_argv,
    nutcracker_file,
    nutcracker_yaml,
    plan_lab,
    ports_needed,
    proxy_argv,
    slot_ranges,
)
from shardgate.lab_procs import (
    LOG_TAIL_LINES,
    ProcStat,
    free_ports,
    group_members,
    log_tail,
    parse_proc_stat,
    ping,
    port_in_use,
    read_proc_stat,
    resp_request,
)

__all__ = [
    "CLUSTER_FILE",
    "DEFAULT_READY_TIMEOUT",
    "DEFAULT_STOP_GRACE",
    "LOG_TAIL_LINES",
    "METRICS_PORT_OFFSET",
    "NODE_KINDS",
    "NODE_PORT_OFFSET",
    "PROXY_KINDS",
    "SENTINEL_DOWN_AFTER_MS",
    "SENTINEL_FAILOVER_TIMEOUT_MS",
    "SENTINEL_PORT_OFFSET",
    "SLOTS",
    "STATE_FILE",
    "TARGETS_FILE",
    "Lab",
    "LabConfig",
    "LabError",
    "LabPlan",
    "LabTopology",
    "NodeKind",
    "ProcStat",
    "ProcessRecord",
    "ProcessSpec",
    "ProcessStatus",
    "ProxyKind",
    "Role",
    "check_ports_free",
    "cluster_toml",
    "free_ports",
    "group_members",
    "info_fields",
    "log_tail",
    "node_argv",
    "node_name",
    "nutcracker_argv",
    "nutcracker_file",
    "nutcracker_yaml",
    "parse_proc_stat",
    "ping",
    "plan_lab",
    "port_in_use",
    "ports_needed",
    "proxy_argv",
    "read_proc_stat",
    "render",
    "resp_request",
    "slot_ranges",
    "up",
]

STATE_FILE = "state.json"
DEFAULT_READY_TIMEOUT = 30.0  # seconds; a trio process starts in ~0.5 s, CI machines are slow
DEFAULT_STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL

# --- supervising ---------------------------------------------------------------------------------


@attrs.frozen(slots=True, kw_only=True)
class ProcessRecord:
    spec: ProcessSpec
    pid: int
    start_time: int

    def to_json(self) -> dict[str, Any]:
        s = self.spec
        return {
            "name": s.name,
            "role": s.role,
            "shard": s.shard,
            "host": s.host,
            "port": s.port,
            "metrics_port": s.metrics_port,
            "pid": self.pid,
            "start_time": self.start_time,
            "argv": list(s.argv),
            "log": s.log,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ProcessRecord:
        spec = ProcessSpec(
            name=d["name"],
            role=d["role"],
            shard=d["shard"],
            host=d["host"],
            port=d["port"],
            metrics_port=d["metrics_port"],
            argv=tuple(d["argv"]),
            log=d["log"],
        )
        return cls(spec=spec, pid=d["pid"], start_time=d["start_time"])


@attrs.frozen(slots=True, kw_only=True)
class ProcessStatus:
    name: str
    role: str
    shard: str | None
    host: str
    port: int
    metrics_port: int | None
    pid: int
    alive: bool
    state: str  # running, paused or dead

    def to_json(self) -> dict[str, Any]:
        """Exactly the fields ``lab status --json`` promises."""
        return {
            "name": self.name,
            "role": self.role,
            "shard": self.shard,
            "host": self.host,
            "port": self.port,
            "metrics_port": self.metrics_port,
            "pid": self.pid,
            "alive": self.alive,
        }


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the process that started it dies (PR_SET_PDEATHSIG),
    so a crashed foreground lab, test or bench leaves nothing behind."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def info_fields(host: str, port: int, section: str, *, timeout: float = 0.3) -> dict[str, str]:
    """``INFO section`` as a dict (empty when the process does not answer)."""
    try:
        info = resp_request(host, port, "INFO", section, timeout=timeout)
    except (OSError, hiredis.ProtocolError):
        return {}
    if not isinstance(info, bytes):
        return {}
    out = {}
    for line in info.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition(":")
        if sep and not key.startswith("#"):
            out[key.strip()] = value.strip()
    return out


def _role_from_info(info: dict[str, str]) -> Role | None:
    value = info.get("role")
    if value in ("master", "primary"):
        return "primary"
    if value in ("slave", "replica"):
        return "replica"
    return None


def settled(spec: ProcessSpec, *, managed: bool) -> bool:
    """Ready for clients beyond answering PING: a managed node holds its assigned role (a
    replica with its link up), a shardgate proxy holds a topology."""
    if spec.role in ("primary", "replica") and managed:
        info = info_fields(spec.host, spec.port, "replication")
        if info.get("shardgate_role") not in ("primary", "replica"):
            return False
        return info.get("role") != "slave" or info.get("master_link_status") == "up"
    if spec.role == "proxy" and spec.argv[0] != "nutcracker":
        shards = info_fields(spec.host, spec.port, "topology").get("shards", "0")
        return shards.isdigit() and int(shards) > 0
    return True


class Lab:
    """The processes of one lab directory. Use as a context manager to stop them all on exit."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).resolve()
        self.records: dict[str, ProcessRecord] = {}
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # state file
    @property
    def state_path(self) -> Path:
        return self.directory / STATE_FILE

    @classmethod
    def load(cls, directory: str | Path) -> Lab:
        lab = cls(directory)
        try:
            data = json.loads(lab.state_path.read_text())
        except FileNotFoundError:
            return lab
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot read {lab.state_path}: {exc}") from None
        for d in data.get("processes", []):
            rec = ProcessRecord.from_json(d)
            lab.records[rec.spec.name] = rec
        return lab

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = {"version": 1, "processes": [r.to_json() for r in self.records.values()]}
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.state_path)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # queries
    def record(self, name: str) -> ProcessRecord:
        try:
            return self.records[name]
        except KeyError:
            known = ", ".join(self.records) or "none"
            raise LabError(
                f"no process named {name!r} in {self.directory} (known: {known})"
            ) from None

    def address(self, name: str) -> tuple[str, int]:
        spec = self.record(name).spec
        return spec.host, spec.port

    def _stat(self, rec: ProcessRecord) -> ProcStat | None:
        """The process's stat if the recorded pid is still that process and not a zombie."""
        child = self._children.get(rec.spec.name)
        if child is not None and child.pid == rec.pid:
            child.poll()  # reap it if it died, so it is not a zombie
        st = read_proc_stat(rec.pid)
        if st is None or st.start_time != rec.start_time or st.state in "ZX":
            return None
        return st

    def is_alive(self, name: str) -> bool:
        return self._stat(self.record(name)) is not None

    def status(self, *, probe_roles: bool = True) -> list[ProcessStatus]:
        rows = []
        for rec in self.records.values():
            st = self._stat(rec)
            spec = rec.spec
            role: str = spec.role
            state = "dead" if st is None else ("paused" if st.state in "Tt" else "running")
            if probe_roles and state == "running" and role in ("primary", "replica"):
                role = _role_from_info(info_fields(spec.host, spec.port, "replication")) or role
            rows.append(
                ProcessStatus(
                    name=spec.name,
                    role=role,
                    shard=spec.shard,
                    host=spec.host,
                    port=spec.port,
                    metrics_port=spec.metrics_port,
                    pid=rec.pid,
                    alive=st is not None,
                    state=state,
                )
            )
        return rows

    # starting
    def start(self, spec: ProcessSpec, *, die_with_parent: bool = False) -> ProcessRecord:
        """Start one process (not waiting for it to be ready) and record it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # Make ``python -m shardgate`` work from any directory, installed or not.
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        log_path = self.directory / spec.log
        with open(log_path, "ab") as log:
            log.write(
                f"--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} start: {' '.join(spec.argv)}\n".encode()
            )
            log.flush()
            try:
                child = subprocess.Popen(
                    spec.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.directory,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent if die_with_parent else None,
                )
            except OSError as exc:
                raise LabError(
                    f"{spec.name}: cannot run {spec.argv[0]!r}: {exc.strerror or exc}"
                ) from None
        st = read_proc_stat(child.pid)
        rec = ProcessRecord(spec=spec, pid=child.pid, start_time=st.start_time if st else 0)
        self.records[spec.name] = rec
        self._children[spec.name] = child
        self.save()
        return rec

    def wait_ready(self, names: Iterable[str], *, timeout: float = DEFAULT_READY_TIMEOUT) -> None:
        """Wait until each named process answers PING; raise ``LabError`` with its log if not."""
        self.wait_until(
            names,
            lambda spec: ping(spec.host, spec.port, timeout=0.25),
            what="did not answer PING",
            timeout=timeout,
        )

    def wait_until(
        self,
        names: Iterable[str],
        check: Callable[[ProcessSpec], bool],
        *,
        what: str,
        timeout: float = DEFAULT_READY_TIMEOUT,
    ) -> None:
        """Wait until ``check`` holds for each named (running) process; ``LabError`` saying
        ``what`` did not happen, with the log, if not."""
        waiting = list(names)
        deadline = time.monotonic() + timeout
        while waiting:
            for name in list(waiting):
                rec = self.record(name)
                if self._stat(rec) is None:
                    raise self._failure(name, "exited before it was ready")
                if check(rec.spec):
                    waiting.remove(name)
            if waiting:
                if time.monotonic() > deadline:
                    raise self._failure(waiting[0], f"{what} within {timeout:g} s")
                time.sleep(0.05)

    def _failure(self, name: str, what: str) -> LabError:
        rec = self.record(name)
        path = self.directory / rec.spec.log
        tail = log_tail(path)
        return LabError(
            f"{name} ({' '.join(rec.spec.argv)}) {what}.\nLast lines of {path}:\n{tail}"
        )

    def restart(self, name: str, *, timeout: float = DEFAULT_READY_TIMEOUT) -> ProcessRecord:
        """Start a dead process again with the same command line, port and log."""
        rec = self.record(name)
        if self._stat(rec) is not None:
            raise LabError(f"{name} is still running (pid {rec.pid})")
        if port_in_use(rec.spec.host, rec.spec.port):
            raise LabError(f"{name}: port {rec.spec.port} is in use by another process")
        new = self.start(rec.spec)
        self.wait_ready([name], timeout=timeout)
        return new

    # signals
    def send_signal(self, name: str, sig: signal.Signals) -> None:
        rec = self.record(name)
        if self._stat(rec) is None:
            raise LabError(f"{name} is not running (pid {rec.pid} is gone)")
        self._signal_group(rec, sig)

    def kill(self, name: str) -> None:
        self.send_signal(name, signal.SIGKILL)
        self._reap(name, timeout=2.0)
        # Not our child (a lab loaded from state.json): wait until the kernel shows it gone.
        rec = self.record(name)
        deadline = time.monotonic() + 2.0
        while self._stat(rec) is not None and time.monotonic() < deadline:
            time.sleep(0.005)

    def pause(self, name: str) -> None:
        self.send_signal(name, signal.SIGSTOP)
        self._await_state(name, stopped=True)

    def resume(self, name: str) -> None:
        self.send_signal(name, signal.SIGCONT)
        self._await_state(name, stopped=False)

    def _await_state(self, name: str, *, stopped: bool, timeout: float = 2.0) -> None:
        """Signals arrive asynchronously; return once /proc shows the process (un)stopped."""
        rec = self.record(name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self._stat(rec)
            if st is None or (st.state in "Tt") == stopped:
                return
            time.sleep(0.005)

    def _signal_group(self, rec: ProcessRecord, sig: signal.Signals) -> bool:
        """Signal the process group of ``rec``; False when nothing of it is left.

        If the leader is gone, only members that started no earlier than it and share its
        session are signalled (a reused pgid would belong to a newer session leader)."""
        if self._stat(rec) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(rec.pid, sig)
                return True
        found = False
        for member in group_members(rec.pid):
            if member.session == rec.pid and member.start_time >= rec.start_time:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(member.pid, sig)
                    found = True
        return found

    def _group_alive(self, rec: ProcessRecord) -> bool:
        if self._stat(rec) is not None:
            return True
        return any(
            m.session == rec.pid and m.start_time >= rec.start_time for m in group_members(rec.pid)
        )

    def _reap(self, name: str, *, timeout: float) -> None:
        child = self._children.get(name)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout)

    def stop(self, names: Iterable[str], *, grace: float = DEFAULT_STOP_GRACE) -> list[str]:
        """SIGTERM (and SIGCONT, for paused ones), then SIGKILL after ``grace``; returns the
        names that needed SIGKILL. Records stay (``down`` forgets them)."""
        recs = [self.record(n) for n in names]
        live = [r for r in recs if self._signal_group(r, signal.SIGTERM)]
        for rec in live:
            self._signal_group(rec, signal.SIGCONT)
        deadline = time.monotonic() + grace
        while live and time.monotonic() < deadline:
            live = [r for r in live if self._group_alive(r)]
            if live:
                time.sleep(0.05)
        killed = []
        for rec in live:
            if self._signal_group(rec, signal.SIGKILL):
                killed.append(rec.spec.name)
        for rec in recs:
            self._reap(rec.spec.name, timeout=2.0)
        return killed

    def down(self, *, grace: float = DEFAULT_STOP_GRACE) -> list[str]:
        """Stop everything this lab started and remove the state file. Proxies go first, then
        sentinels (so stopping the nodes sets off no failover), then the nodes."""
        rank = {"proxy": 0, "sentinel": 1}
        order = sorted(self.records, key=lambda n: rank.get(self.records[n].spec.role, 2))
        killed = self.stop(order, grace=grace)
        self.records.clear()
        self._children.clear()
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()
        return killed


# --- up --------------------------------------------------------------------------------------------


def check_ports_free(plan: LabPlan) -> None:
    for spec in plan.processes:
        for port, what in ((spec.port, "port"), (spec.metrics_port, "metrics port")):
            if port and port_in_use(spec.host, port):
                raise LabError(
                    f"{what} {port} on {spec.host} (for {spec.name}) is already in use; "
                    "choose another --base-port, or stop what holds it (`lab status`, `lab down`, "
                    f"`ss -ltnp 'sport = :{port}'`)"
                )


def up(
    config: LabConfig,
    *,
    timeout: float = DEFAULT_READY_TIMEOUT,
    die_with_parent: bool = False,
    echo: Callable[[str], None] = lambda _line: None,
) -> Lab:
    """Plan, check ports, write the config files, start the nodes, then the sentinels and the
    proxies, and wait until the cluster has settled (module doc). On any failure everything
    started is stopped before the error is raised."""
    directory = Path(config.directory).resolve()
    existing = Lab.load(directory)
    running = [s.name for s in existing.status(probe_roles=False) if s.alive]
    if running:
        raise LabError(
            f"a lab is already running in {directory} ({', '.join(running)}); "
            f"run `shardgate lab down --dir {config.directory}` first"
        )
    proxies = config.proxy_kind != "none" and config.proxies > 0
    if proxies and config.proxy_kind == "shardgate" and not _module_available("proxy.cli"):
        raise LabError(
            "the shardgate proxy is not available yet (no proxy/cli.py); "
            "use --proxy-command nutcracker or --proxy-command none"
        )
    if config.sentinels and not _module_available("sentinel.cli"):
        raise LabError("the shardgate sentinel is not available yet; use --sentinels 0")
    if (
        config.sentinels
        and proxies
        and config.proxy_kind == "shardgate"
        and not _module_available("proxy.sentinels")
    ):
        raise LabError("the shardgate proxy cannot follow sentinels yet; use --sentinels 0")
    if config.node_kind == "shardgate" and not _module_available("storenode.cli"):
        raise LabError("the shardgate store node is not available yet; use --node-command redis")
    config = attrs.evolve(config, directory=str(directory))
    ports = free_ports(ports_needed(config), config.host) if config.base_port == 0 else ()
    plan = plan_lab(config, ports=ports)
    check_ports_free(plan)
    directory.mkdir(parents=True, exist_ok=True)
    # A new lab is a new cluster: sentinel state left by an earlier lab in this directory would
    # carry that cluster's topology (a higher epoch wins over the fresh config) and its ports.
    for stale in directory.glob("*.state"):
        stale.unlink()
    for name, content in plan.files:
        (directory / name).write_text(content)
    lab = Lab(directory)
    try:
        # Nodes first (everyone else connects to them); sentinels and proxies together (a
        # proxy retries its sentinels with a short backoff); then wait for the roles and
        # topologies the sentinels hand out.
        for roles in (("primary", "replica"), ("sentinel", "proxy")):
            group = [spec for spec in plan.processes if spec.role in roles]
            for spec in group:
                lab.start(spec, die_with_parent=die_with_parent)
                echo(f"started {spec.name} (pid {lab.record(spec.name).pid}) on {spec.address}")
            lab.wait_ready([spec.name for spec in group], timeout=timeout)
        managed = config.managed and config.node_kind == "shardgate"
        lab.wait_until(
            [spec.name for spec in plan.processes],
            lambda spec: settled(spec, managed=managed),
            what="did not get its role or topology from the sentinels",
            timeout=timeout,
        )
    except BaseException:
        lab.down(grace=1.0)
        raise
    return lab


def _module_available(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
