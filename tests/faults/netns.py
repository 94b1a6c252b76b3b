"""Hosts in network namespaces behind one router namespace, and partitions between them.

How it works
- ``Network`` makes a router namespace and, for each host, a namespace joined to the router by a
  veth pair: host ``i`` is ``10.X.i.2/24`` with a default route via the router's ``10.X.i.1``.
  The test process itself (the root namespace, where the workload and the checker run) is host
  0: a veth from the root namespace to the router, ``10.X.0.2``, with a route to ``10.X.0.0/16``
  only, so nothing but these namespaces is reachable through it. ``X`` is a second octet no
  address or route of the machine uses, chosen under a file lock so parallel runs never share
  one.
- A partition is a pair of policy-routing rules in the router, ``from A to B blackhole`` and
  back. The router forwards everything else; packets between the two groups are dropped without
  an ICMP error, so connects and established connections time out exactly as across a real
  broken network. Healing deletes the rules. (This machine has neither nftables nor iptables, and
  its kernel no netem; ``ip rule`` blackholes need only iproute2.)
- Everything is named ``sg-<pid><n>-…`` (namespaces) / ``sg<pid><n>…`` (the root-side veth):
  ``close()`` kills whatever still runs in the namespaces and deletes them (which destroys every
  veth), and ``sweep_stale()`` removes what a crashed run of a process that no longer exists
  left behind, never a live run's.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence

import attrs

PREFIX = "sg-"
LOCK_FILE = "/tmp/sg-netns.lock"
OCTETS = range(100, 250)  # second octets we may use for 10.X.0.0/16
_STALE = re.compile(r"^sg-(\d+)x\d+-")
_counter = itertools.count()


class NetnsUnavailable(Exception):
    """This machine cannot make network namespaces (not root, or no iproute2)."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


def _failed(result: subprocess.CompletedProcess[str]) -> str:
    return f"ip {' '.join(result.args[1:])}: {result.stderr.strip()}"


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here, or None when they can (probed once, for real)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs the fault tests as root)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"{PREFIX}{os.getpid()}x-probe"
    result = ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"`ip netns add` failed: {result.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


def _pids_in(namespace: str) -> list[int]:
    result = ip("netns", "pids", namespace, check=False)
    return [int(p) for p in result.stdout.split()]


def _delete_namespace(namespace: str) -> None:
    """Kill what runs inside (a namespace lives on while a process holds it), then delete it."""
    for _ in range(50):
        pids = _pids_in(namespace)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    ip("netns", "del", namespace, check=False)


def namespaces() -> list[str]:
    result = ip("netns", "list", check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def sweep_stale() -> list[str]:
    """Delete ``sg-`` namespaces whose creating process is gone; returns their names."""
    removed = []
    for name in namespaces():
        m = _STALE.match(name)
        if m is None:
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
            continue  # its run is still going
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        _delete_namespace(name)
        removed.append(name)
    return removed


def _used_octets() -> set[int]:
    text = ip("-4", "addr").stdout + ip("-4", "route").stdout
    return {int(m) for m in re.findall(r"\b10\.(\d+)\.", text)}


@attrs.frozen(slots=True)
class Host:
    """One machine of the lab: a namespace with one address, or the root namespace (index 0)."""

    name: str
    namespace: str | None  # None: the root namespace, where the test process runs
    address: str
    index: int

    @property
    def subnet(self) -> str:
        return self.address.rsplit(".", 1)[0] + ".0/24"

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as run inside this host (``ip netns exec`` keeps the pid: it execs)."""
        if self.namespace is None:
            return list(argv)
        return ["ip", "netns", "exec", self.namespace, *argv]


class Network:
    """A router namespace with hosts; ``partition`` and ``heal`` between groups of hosts."""

    def __init__(self) -> None:
        self.tag = f"{PREFIX}{os.getpid()}x{next(_counter)}"
        self.router = f"{self.tag}-r"
        self.hosts: dict[str, Host] = {}
        self.rules: list[tuple[str, str]] = []
        self._namespaces: list[str] = []
        self.octet = 0
        self.root_link = self.tag.replace("-", "").replace("x", "h")[:15]  # at most 15 chars
        self._root_link_made = False

    def _ip(self, *args: str) -> None:
        result = ip(*args, check=False)
        if result.returncode != 0:
            raise RuntimeError(_failed(result))

    def _add_namespace(self, name: str) -> None:
        self._ip("netns", "add", name)
        self._namespaces.append(name)
        self._ip("-n", name, "link", "set", "lo", "up")

    def open(self) -> Network:
        with open(LOCK_FILE, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two runs must not pick the same subnet
            free = [o for o in OCTETS if o not in _used_octets()]
            if not free:
                raise RuntimeError("no free 10.X.0.0/16 subnet for the lab network")
            self.octet = free[os.getpid() % len(free)]
            self._add_namespace(self.router)
            forward = "/proc/sys/net/ipv4/ip_forward"
            self._ip("netns", "exec", self.router, "sh", "-c", f"echo 1 > {forward}")
            # host 0: the test process's own namespace, reaching only 10.X/16 through the router
            root_end = self.root_link
            self._ip("link", "add", "name", root_end, "type", "veth", "peer", "name", "h0",
                     "netns", self.router)  # fmt: skip
            self._root_link_made = True
            self._ip("-n", self.router, "addr", "add", f"10.{self.octet}.0.1/24", "dev", "h0")
            self._ip("-n", self.router, "link", "set", "h0", "up")
            self._ip("addr", "add", f"10.{self.octet}.0.2/24", "dev", root_end)
            self._ip("link", "set", root_end, "up")
            self._ip("route", "add", f"10.{self.octet}.0.0/16", "via", f"10.{self.octet}.0.1")
        self.hosts["client"] = Host("client", None, f"10.{self.octet}.0.2", 0)
        return self

    def add_host(self, name: str) -> Host:
        index = len(self.hosts)
        if index > 250:
            raise ValueError("at most 250 hosts per network")
        namespace = f"{self.tag}-{name}"
        self._add_namespace(namespace)
        router_end = f"v{index}"
        self._ip("link", "add", "name", router_end, "netns", self.router, "type", "veth",
                 "peer", "name", "eth0", "netns", namespace)  # fmt: skip
        self._ip(
            "-n", self.router, "addr", "add", f"10.{self.octet}.{index}.1/24", "dev", router_end
        )
        self._ip("-n", self.router, "link", "set", router_end, "up")
        self._ip("-n", namespace, "addr", "add", f"10.{self.octet}.{index}.2/24", "dev", "eth0")
        self._ip("-n", namespace, "link", "set", "eth0", "up")
        self._ip("-n", namespace, "route", "add", "default", "via", f"10.{self.octet}.{index}.1")
        host = Host(name, namespace, f"10.{self.octet}.{index}.2", index)
        self.hosts[name] = host
        return host

    def _hosts(self, group: Iterable[Host | str]) -> list[Host]:
        return [self.hosts[h] if isinstance(h, str) else h for h in group]

    def partition(self, side_a: Iterable[Host | str], side_b: Iterable[Host | str]) -> None:
        """Silently drop every packet between the two groups, both ways, from now on."""
        a, b = self._hosts(side_a), self._hosts(side_b)
        for x in a:
            for y in b:
                for src, dst in ((x.subnet, y.subnet), (y.subnet, x.subnet)):
                    self._ip("-n", self.router, "rule", "add", "from", src, "to", dst,
                             "blackhole")  # fmt: skip
                    self.rules.append((src, dst))

    def isolate(self, host: Host | str) -> None:
        """Cut ``host`` from every other host (the client included)."""
        (h,) = self._hosts([host])
        self.partition([h], [o for o in self.hosts.values() if o != h])

    def heal(self) -> None:
        while self.rules:
            src, dst = self.rules.pop()
            self._ip("-n", self.router, "rule", "del", "from", src, "to", dst, "blackhole")

    def close(self) -> None:
        # the root-side veth first and explicitly: a deleted namespace's veths go away only when
        # the kernel's deferred namespace cleanup runs, and the next test must not see them
        if self._root_link_made:
            ip("link", "del", self.root_link, check=False)
            self._root_link_made = False
        # deleting a namespace destroys its veths (and their peers in the router)
        for namespace in reversed(self._namespaces):
            _delete_namespace(namespace)
        self._namespaces.clear()
        self.rules.clear()


@contextlib.contextmanager
def network() -> Iterator[Network]:
    net = Network()
    try:
        yield net.open()
    finally:
        net.close()
