"""The local lab: plan a cluster of real processes on one machine and supervise them.

How it works
- ``plan_lab`` is pure: from a ``LabConfig`` (and, when the OS picks the ports, the list of
  ports it picked) it computes every process to start (name, role, shard, address, metrics port,
  argv, log file) and the files to write (the cluster config; nutcracker's YAML when nutcracker
  stands in for the proxy). Nothing is started, so plans are tested on their own.
- ``Lab`` supervises: each process starts in its own session, so its process group holds
  anything it forks (proxy workers), with stdout and stderr appended to a log in the lab
  directory. ``state.json`` records each process's spec, pid and the kernel's start time of that
  pid; a pid whose start time no longer matches belongs to someone else and is never signalled.
  Signals go to the whole process group.
- Ready means a RESP ``PING`` answered ``+PONG`` before a deadline. A process that exits first or
  misses the deadline fails ``up`` with the tail of its log, after everything started is stopped.
- Port layout for base port B: the proxy on B, store nodes on B+100.. (shard-major, the primary
  first), sentinels (later) on B+50..; every metrics port is its process's port + 1000.

Nothing here imports a role: roles are started as ``python -m shardgate node|proxy`` processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import hiredis

SLOTS = 16384  # as shardgate.slots; duplicated so planning stays import-light
STATE_FILE = "state.json"
CLUSTER_FILE = "cluster.toml"
NUTCRACKER_FILE = "nutcracker.yml"
NODE_PORT_OFFSET = 100  # nodes at base+100.. so a proxy port range never collides with nodes
SENTINEL_PORT_OFFSET = 50  # sentinels at base+50..
# A lab fails over in seconds (sentinel defaults are 5 s / 30 s): failovers are what it is for.
SENTINEL_DOWN_AFTER_MS = 1000
SENTINEL_FAILOVER_TIMEOUT_MS = 10_000
METRICS_PORT_OFFSET = 1000  # metrics port = service port + 1000
DEFAULT_READY_TIMEOUT = 30.0  # seconds; a trio process starts in ~0.5 s, CI machines are slow
DEFAULT_STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
LOG_TAIL_LINES = 20

NodeKind = Literal["shardgate", "redis"]
ProxyKind = Literal["shardgate", "nutcracker", "none"]
Role = Literal["primary", "replica", "proxy", "sentinel"]
NODE_KINDS: tuple[NodeKind, ...] = ("shardgate", "redis")
PROXY_KINDS: tuple[ProxyKind, ...] = ("shardgate", "nutcracker", "none")


class LabError(Exception):
    """The lab cannot do what was asked; the message says what and what to do about it."""


# --- planning (pure) ---------------------------------------------------------------------------


@attrs.frozen(slots=True, kw_only=True)
class LabConfig:
    directory: str = ".lab"
    shards: int = 3
    replicas: int = 0  # per shard
    base_port: int = 7000  # 0: the OS picks every port
    host: str = "127.0.0.1"
    node_kind: NodeKind = "shardgate"
    proxy_kind: ProxyKind = "shardgate"
    proxy_workers: int = 1
    maxmemory: str = "256mb"  # the node's default
    maxmemory_policy: str | None = None
    sentinels: int = 0
    python: str = sys.executable

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.shards <= 64:
            raise LabError(f"--shards must be between 1 and 64, got {self.shards}")
        if not 0 <= self.replicas <= 8:
            raise LabError(f"--replicas must be between 0 and 8, got {self.replicas}")
        if not (self.base_port == 0 or 1024 <= self.base_port <= 65535 - 2 * METRICS_PORT_OFFSET):
            raise LabError(
                f"--base-port must be 0 (OS-assigned) or 1024..63535, got {self.base_port}"
            )
        if self.node_kind not in NODE_KINDS:
            raise LabError(f"unknown node command {self.node_kind!r} ({', '.join(NODE_KINDS)})")
        if self.proxy_kind not in PROXY_KINDS:
            raise LabError(f"unknown proxy command {self.proxy_kind!r} ({', '.join(PROXY_KINDS)})")
        if self.proxy_workers < 1:
            raise LabError("--proxy-workers must be at least 1")
        if not 0 <= self.sentinels <= 9:
            raise LabError(f"--sentinels must be between 0 and 9, got {self.sentinels}")
        if self.sentinels and self.node_kind != "shardgate":
            raise LabError("sentinels need shardgate nodes (they speak SG.* to them)")


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen(slots=True, kw_only=True)
class ProcessSpec:
    """One process of the lab: what it is, where it listens, and how to start it."""

    name: str
    role: Role
    shard: str | None
    host: str
    port: int
    metrics_port: int | None
    argv: tuple[str, ...] = attrs.field(converter=_str_tuple)
    log: str  # file name inside the lab directory

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@attrs.frozen(slots=True)
class LabPlan:
    processes: tuple[ProcessSpec, ...]
    files: tuple[tuple[str, str], ...]  # (file name in the lab directory, content)

    def by_name(self, name: str) -> ProcessSpec:
        for spec in self.processes:
            if spec.name == name:
                return spec
        raise KeyError(name)


def ports_needed(config: LabConfig) -> int:
    """How many ports a lab uses: a service port each, plus a metrics port each."""
    processes = config.shards * (1 + config.replicas) + (config.proxy_kind != "none")
    return 2 * (processes + config.sentinels)


def node_name(shard: int, index: int) -> str:
    """``node0`` is the first node of shard0 (its initial primary); ``node0-1`` its first replica."""
    return f"node{shard}" if index == 0 else f"node{shard}-{index}"


def slot_ranges(shards: int) -> list[tuple[int, int]]:
    """Even split of the slots, as ``Topology.even`` and ``--backends`` do."""
    return [(i * SLOTS // shards, (i + 1) * SLOTS // shards - 1) for i in range(shards)]


def node_argv(
    kind: NodeKind,
    *,
    host: str,
    port: int,
    metrics_port: int | None,
    maxmemory: str,
    maxmemory_policy: str | None = None,
    replicaof: str | None = None,
    directory: str = ".",
    python: str = sys.executable,
) -> tuple[str, ...]:
    """The command line of one store node (a shardgate node or a stock ``redis-server``)."""
    if kind == "redis":
        argv = ["redis-server", "--bind", host, "--port", str(port), "--save", ""]
        argv += ["--appendonly", "no", "--daemonize", "no", "--dir", directory, "--logfile", ""]
        argv += ["--maxmemory", maxmemory]
        if maxmemory_policy:
            argv += ["--maxmemory-policy", maxmemory_policy]
        if replicaof:
            rhost, _, rport = replicaof.rpartition(":")
            argv += ["--replicaof", rhost, rport]
        return tuple(argv)
    argv = [python, "-m", "shardgate", "node", "--host", host, "--port", str(port)]
    argv += ["--maxmemory", maxmemory]
    if maxmemory_policy:
        argv += ["--maxmemory-policy", maxmemory_policy]
    if metrics_port:
        argv += ["--metrics-port", str(metrics_port)]
    if replicaof:
        argv += ["--replicaof", replicaof]
    return tuple(argv)


def proxy_argv(
    *,
    host: str,
    port: int,
    metrics_port: int | None,
    config: str | None = None,
    backends: Sequence[str] = (),
    workers: int = 1,
    python: str = sys.executable,
) -> tuple[str, ...]:
    argv = [python, "-m", "shardgate", "proxy", "--host", host, "--port", str(port)]
    if config:
        argv += ["--config", config]
    if backends:
        argv += ["--backends", ",".join(backends)]
    if workers > 1:
        argv += ["--workers", str(workers)]
    if metrics_port:
        argv += ["--metrics-port", str(metrics_port)]
    return tuple(argv)


def nutcracker_argv(*, config: str, host: str, stats_port: int) -> tuple[str, ...]:
    # -s/-a: every nutcracker needs its own stats port (default 22222 would collide).
    return ("nutcracker", "-c", config, "-s", str(stats_port), "-a", host)


def nutcracker_yaml(*, listen: str, servers: Sequence[str], pool: str = "shardgate") -> str:
    """twemproxy's pool config as a user would write it (ketama, no auto-eject)."""
    lines = [
        f"{pool}:",
        f"  listen: {listen}",
        "  hash: fnv1a_64",
        "  distribution: ketama",
        "  redis: true",
        "  auto_eject_hosts: false",
        "  servers:",
    ]
    lines += [f"   - {server}:1 s{i}" for i, server in enumerate(servers)]
    return "\n".join(lines) + "\n"


def cluster_toml(shards: Sequence[tuple[str, str, Sequence[str], tuple[int, int]]]) -> str:
    """The cluster config in ``shardgate.topology``'s TOML form: (name, primary, replicas, slots)."""
    lines = [
        "# Written by `shardgate lab up`: slot ranges → shards (see shardgate/topology.py).",
        "epoch = 1",
    ]
    for name, primary, replicas, (start, end) in shards:
        lines += ["", "[[shards]]", f'name = "{name}"', f'primary = "{primary}"']
        lines.append("replicas = [" + ", ".join(f'"{r}"' for r in replicas) + "]")
        lines.append(f'slots = ["{start}-{end}"]')
    return "\n".join(lines) + "\n"


def sentinel_toml(
    name: str,
    host: str,
    port: int,
    sentinels: Sequence[tuple[str, int, int]],
    shards: Sequence[tuple[str, str, Sequence[str], tuple[int, int]]],
    directory: str,
) -> str:
    """One sentinel's config (see sentinel/config.py): itself, its peers, every shard."""
    lines = [
        "# Written by `shardgate lab up` (see sentinel/config.py).",
        f'id = "{name}"',
        f'listen = "{host}:{port}"',
        f"quorum = {len(sentinels) // 2 + 1}",
        f"down_after_ms = {SENTINEL_DOWN_AFTER_MS}",
        f"failover_timeout_ms = {SENTINEL_FAILOVER_TIMEOUT_MS}",
        f'state_file = "{os.path.join(directory, name + ".state")}"',
    ]
    for peer, peer_port, _ in sentinels:
        if peer != name:
            lines += ["", "[[peers]]", f'id = "{peer}"', f'address = "{host}:{peer_port}"']
    for shard, primary, replicas, (start, end) in shards:
        lines += ["", "[[shards]]", f'name = "{shard}"', f'primary = "{primary}"']
        lines.append("replicas = [" + ", ".join(f'"{r}"' for r in replicas) + "]")
        lines.append(f'slots = ["{start}-{end}"]')
    return "\n".join(lines) + "\n"


def plan_lab(config: LabConfig, *, ports: Sequence[int] = ()) -> LabPlan:
    """Every process and file of a lab. ``ports`` (service ports then metrics ports, in process
    order: nodes shard-major, the proxy, the sentinels) is required when ``base_port`` is 0."""
    n_nodes = config.shards * (1 + config.replicas)
    has_proxy = config.proxy_kind != "none"
    n_procs = n_nodes + has_proxy + config.sentinels
    if config.base_port == 0:
        if len(ports) != 2 * n_procs:
            raise LabError(f"need {2 * n_procs} ports for this lab, got {len(ports)}")
        service = list(ports[:n_procs])
        metrics = list(ports[n_procs:])
    else:
        b = config.base_port
        service = [b + NODE_PORT_OFFSET + k for k in range(n_nodes)] + ([b] if has_proxy else [])
        service += [b + SENTINEL_PORT_OFFSET + i for i in range(config.sentinels)]
        metrics = [p + METRICS_PORT_OFFSET for p in service]
    directory = config.directory
    host = config.host
    processes: list[ProcessSpec] = []
    shard_rows: list[tuple[str, str, list[str], tuple[int, int]]] = []
    k = 0
    for shard, slots in enumerate(slot_ranges(config.shards)):
        shard_name = f"shard{shard}"
        primary = f"{host}:{service[k]}"
        replicas: list[str] = []
        for index in range(1 + config.replicas):
            port = service[k]
            m_port = None if config.node_kind == "redis" else metrics[k]
            name = node_name(shard, index)
            processes.append(
                ProcessSpec(
                    name=name,
                    role="primary" if index == 0 else "replica",
                    shard=shard_name,
                    host=host,
                    port=port,
                    metrics_port=m_port,
                    argv=node_argv(
                        config.node_kind,
                        host=host,
                        port=port,
                        metrics_port=m_port,
                        maxmemory=config.maxmemory,
                        maxmemory_policy=config.maxmemory_policy,
                        replicaof=primary if index else None,
                        directory=directory,
                        python=config.python,
                    ),
                    log=f"{name}.log",
                )
            )
            if index:
                replicas.append(f"{host}:{port}")
            k += 1
        shard_rows.append((shard_name, primary, replicas, slots))
    cluster_path = os.path.join(directory, CLUSTER_FILE)
    files = [(CLUSTER_FILE, cluster_toml(shard_rows))]
    if has_proxy:
        port, m_port = service[k], metrics[k]
        if config.proxy_kind == "nutcracker":
            yml = os.path.join(directory, NUTCRACKER_FILE)
            primaries = [row[1] for row in shard_rows]
            files.append(
                (NUTCRACKER_FILE, nutcracker_yaml(listen=f"{host}:{port}", servers=primaries))
            )
            argv = nutcracker_argv(config=yml, host=host, stats_port=m_port)
        else:
            argv = proxy_argv(
                host=host,
                port=port,
                metrics_port=m_port,
                config=cluster_path,
                workers=config.proxy_workers,
                python=config.python,
            )
        processes.append(
            ProcessSpec(
                name="proxy",
                role="proxy",
                shard=None,
                host=host,
                port=port,
                metrics_port=m_port,
                argv=argv,
                log="proxy.log",
            )
        )
        k += 1
    sentinels = [(f"sentinel{i}", service[k + i], metrics[k + i]) for i in range(config.sentinels)]
    for name, port, m_port in sentinels:
        config_file = f"{name}.toml"
        files.append(
            (config_file, sentinel_toml(name, host, port, sentinels, shard_rows, directory))
        )
        processes.append(
            ProcessSpec(
                name=name,
                role="sentinel",
                shard=None,
                host=host,
                port=port,
                metrics_port=m_port,
                argv=(
                    config.python,
                    "-m",
                    "shardgate",
                    "sentinel",
                    "run",
                    "--config",
                    os.path.join(directory, config_file),
                    "--metrics-port",
                    str(m_port),
                ),
                log=f"{name}.log",
            )
        )
    return LabPlan(tuple(processes), tuple(files))


# --- /proc ---------------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` the lab and the bench use (see proc(5))."""

    pid: int
    state: str  # R, S, D, T (stopped), Z (zombie), ...
    ppid: int
    pgrp: int
    session: int
    utime: int  # clock ticks, all threads
    stime: int
    start_time: int  # clock ticks after boot: with the pid, identifies one process

    @property
    def cpu_ticks(self) -> int:
        return self.utime + self.stime


def parse_proc_stat(text: str) -> ProcStat:
    """Parse one ``/proc/PID/stat`` line; the command name may hold spaces and parentheses."""
    head, _, rest = text.rpartition(")")
    pid = int(head.split("(", 1)[0])
    f = rest.split()  # f[0] is field 3 (state); field N is f[N - 3]
    return ProcStat(
        pid=pid,
        state=f[0],
        ppid=int(f[1]),
        pgrp=int(f[2]),
        session=int(f[3]),
        utime=int(f[11]),
        stime=int(f[12]),
        start_time=int(f[19]),
    )


def read_proc_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return parse_proc_stat(f.read())
    except (OSError, ValueError, IndexError):
        return None


def group_members(pgrp: int) -> list[ProcStat]:
    """Live processes of a process group (zombies excluded)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = read_proc_stat(int(entry))
            if st is not None and st.pgrp == pgrp and st.state not in "ZX":
                members.append(st)
    return members


# --- talking RESP ------------------------------------------------------------------------------


def resp_request(host: str, port: int, *args: str, timeout: float = 0.5) -> Any:
    """Send one command on a fresh connection and return the decoded reply (errors as
    ``hiredis.ReplyError`` values). Raises ``OSError`` (``TimeoutError``) when there is none."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        b"$%d\r\n%b\r\n" % (len(a.encode()), a.encode()) for a in args
    )
    reader = hiredis.Reader()
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(payload)
        while True:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError("connection closed before a reply")
            reader.feed(data)
            reply = reader.gets()
            if reply is not False:
                return reply


def ping(host: str, port: int, *, timeout: float = 0.5) -> bool:
    try:
        return resp_request(host, port, "PING", timeout=timeout) == b"PONG"
    except (OSError, hiredis.ProtocolError):
        return False


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on (host, port). SO_REUSEADDR, as servers bind, so sockets
    in TIME_WAIT from a previous lab do not count."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the OS hands out as free right now (all held open together, so distinct)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((host, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        data = path.read_bytes()[-16384:]
    except OSError:
        return "(no log)"
    text = data.decode("utf-8", "replace").rstrip("\n")
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


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


def _role_from_info(info: bytes) -> Role | None:
    for line in info.splitlines():
        if line.startswith(b"role:"):
            value = line[5:].strip()
            if value in (b"master", b"primary"):
                return "primary"
            if value in (b"slave", b"replica"):
                return "replica"
    return None


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
                with contextlib.suppress(OSError, hiredis.ProtocolError):
                    info = resp_request(spec.host, spec.port, "INFO", "replication", timeout=0.3)
                    if isinstance(info, bytes):
                        role = _role_from_info(info) or role
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
        waiting = list(names)
        deadline = time.monotonic() + timeout
        while waiting:
            for name in list(waiting):
                rec = self.record(name)
                if self._stat(rec) is None:
                    raise self._failure(name, "exited before it was ready")
                if ping(rec.spec.host, rec.spec.port, timeout=0.25):
                    waiting.remove(name)
            if waiting:
                if time.monotonic() > deadline:
                    raise self._failure(waiting[0], f"did not answer PING within {timeout:g} s")
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
    """Plan, check ports, write the config files, start the nodes, then the proxy, and wait until
    each answers PING. On any failure everything started is stopped before the error is raised."""
    directory = Path(config.directory).resolve()
    existing = Lab.load(directory)
    running = [s.name for s in existing.status(probe_roles=False) if s.alive]
    if running:
        raise LabError(
            f"a lab is already running in {directory} ({', '.join(running)}); "
            f"run `shardgate lab down --dir {config.directory}` first"
        )
    if config.proxy_kind == "shardgate" and not _module_available("proxy.cli"):
        raise LabError(
            "the shardgate proxy is not available yet (no proxy/cli.py); "
            "use --proxy-command nutcracker or --proxy-command none"
        )
    if config.sentinels and not _module_available("sentinel.cli"):
        raise LabError("the shardgate sentinel is not available yet; use --sentinels 0")
    if config.node_kind == "shardgate" and not _module_available("storenode.cli"):
        raise LabError("the shardgate store node is not available yet; use --node-command redis")
    if (
        config.node_kind == "shardgate"
        and config.replicas
        and not _node_supports("--replicaof", config.python)
    ):
        raise LabError("the shardgate store node has no --replicaof option yet; use --replicas 0")
    config = attrs.evolve(config, directory=str(directory))
    ports = free_ports(ports_needed(config), config.host) if config.base_port == 0 else ()
    plan = plan_lab(config, ports=ports)
    check_ports_free(plan)
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in plan.files:
        (directory / name).write_text(content)
    lab = Lab(directory)
    try:
        # Nodes first (the others connect to them), then sentinels, then the proxy.
        for roles in (("primary", "replica"), ("sentinel",), ("proxy",)):
            group = [spec for spec in plan.processes if spec.role in roles]
            for spec in group:
                lab.start(spec, die_with_parent=die_with_parent)
                echo(f"started {spec.name} (pid {lab.record(spec.name).pid}) on {spec.address}")
            lab.wait_ready([spec.name for spec in group], timeout=timeout)
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


def _node_supports(option: str, python: str) -> bool:
    try:
        out = subprocess.run(
            [python, "-m", "shardgate", "node", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return option in out
