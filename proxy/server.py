"""The proxy process: listener, backend connections, hot reload, metrics.

How it works
- ``serve`` opens one backend connection task per (primary address, times ``connections_per_backend``)
  and waits for each first attempt, then listens; every client gets a task in the same nursery.
- The routing state is two references swapped together: ``router`` (slot → shard) and
  ``shard_conns`` (shard → connection). Client tasks read them once per batch of commands, so a
  reload applies between batches, never inside one.
- Reload (SIGHUP or CONFIG RELOAD): read and validate the file; on error keep the old topology,
  log, count a failed reload. Otherwise start connections to new addresses, swap, and retire the
  connections no shard uses any more: they stop after answering what they have in flight.
- With sentinels (``proxy/sentinels.py``) a topology from any sentinel goes through ``adopt``:
  only a strictly higher epoch is taken, and it is swapped in exactly like a reload. Every
  backend connection then announces the new epoch with the role the node has in it.
- A ``-STALE`` from a node, or a ``-READONLY`` answer of a superseded primary to a write, asks
  the sentinels for the topology at once. Such a write was not applied, so it is kept (not
  answered) for up to the timeout and sent once more as soon as a newer topology routes it to
  another node; otherwise the client gets the ``-READONLY`` error.
- Read-only commands of shards that read from replicas go where ``proxy/reads.py`` says.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import socket
import time
from collections.abc import Iterable
from typing import Any

import attrs
import hiredis
import trio

from proxy import metrics
from proxy.backend import BackendConn
from proxy.client import ClientConn
from proxy.config import ClusterSettings, ProxyConfig
from proxy.ordering import Pending
from proxy.reactor import Reactor
from proxy.reads import ReplicaMonitor, ShardReads
from proxy.replicas import ReadFrom
from proxy.router import Router, Unrouted, is_readonly
from proxy.sentinels import SentinelFollower
from shardgate.config import ConfigError
from shardgate.logs import log_event
from shardgate.metrics import FastHistogram, serve_metrics
from shardgate.resp import OK_BYTES, encode_error
from shardgate.topology import NodeAddress, Shard, Topology

START_TIME = time.time()
LISTEN_BACKLOG = 511  # Redis's tcp-backlog default


@attrs.define
class _Retry:
    """A write a superseded primary refused (-READONLY): not applied, so sent once more; or a
    read-only request lost with its connection, sent once more to the primary that replaces
    the failed node."""

    pending: Pending
    part: int
    request: bytes
    refused_by: BackendConn
    reply: bytes
    give_up_at: float
    write: bool = True  # False: an idempotent read lost with a failed connection


class Proxy:
    def __init__(
        self, config: ProxyConfig, settings: ClusterSettings, nursery: trio.Nursery
    ) -> None:
        self.config = config
        self.settings = settings
        self.nursery = nursery
        self.stats = metrics.ProxyStats()
        self.router: Router | Unrouted = Unrouted()
        self.conns: dict[NodeAddress, list[BackendConn]] = {}
        self.shard_conns: list[BackendConn] = []
        # Per shard, its replica read plan (None: reads go to the primary); None when no shard
        # reads from replicas, so the hot path pays one check.
        self.reads: list[ShardReads | None] | None = None
        self.next_client_id = 0
        self.reload_lock = trio.Lock()
        self._dirty: list[ClientConn] = []
        # Backend connections the reactor queued requests for in its current pass.
        self.unsent: list[BackendConn] = []
        # Every client connection of this process, and every backend connection's replies.
        self.reactor = Reactor(self)
        self._flusher: trio.lowlevel.Task | None = None
        self.monitor = ReplicaMonitor(
            nursery,
            password=config.backend_password,
            timeout=config.timeout,
            on_period=self._refresh_reads,
        )
        self.follower: SentinelFollower | None = None
        if settings.sentinels:
            self.follower = SentinelFollower(
                settings.sentinels,
                password=settings.sentinel_password,
                name=config.proxy_name,
                timeout=config.timeout,
                adopt=self.adopt,
                current_epoch=lambda: self.router.epoch,
            )
        self._clock = trio.lowlevel.current_clock()
        self._retries: list[_Retry] = []
        self._retry_wake = trio.Event()

    # -- backends -------------------------------------------------------------------------------

    def _new_conn(
        self, addr: NodeAddress, index: int, latency: FastHistogram, epoch: int, role: bytes
    ) -> BackendConn:
        c = self.config
        label = str(addr) if c.connections_per_backend == 1 else f"{addr}#{index}"
        return BackendConn(
            (addr.host, addr.port),
            label=label,
            timeout=c.timeout,
            max_queue=c.max_backend_queue,
            fail_after=c.fail_after,
            reconnect_interval=c.reconnect_interval,
            password=c.backend_password,
            epoch=epoch,
            latency=latency,
            on_flush=self._defer_flush,
            role=role,
            on_stale=self._on_stale,
            on_readonly=self._on_readonly if self.follower is not None else None,
            on_lost=self._on_lost if self.follower is not None else None,
            reactor=self.reactor,
        )

    def _replica_shards(self, topology: Topology) -> list[Shard]:
        """The shards whose reads may go to replicas (and that have replicas)."""
        return [
            s
            for s in topology.shards
            if s.replicas and self.settings.read_mode(s.name) is not ReadFrom.PRIMARY
        ]

    async def _open_backends(self, topology: Topology) -> None:
        """Start connections for every node not connected yet. The first attempt of each new
        primary is awaited (it is what writes need at once); replicas connect in the
        background, so an unreachable replica never delays a swap."""
        primaries = {s.primary for s in topology.shards}
        wanted = [s.primary for s in topology.shards]
        wanted += [a for s in self._replica_shards(topology) for a in s.replicas]
        async with trio.open_nursery() as starter:
            for addr in wanted:
                if addr in self.conns:
                    continue
                role = b"primary" if addr in primaries else b"replica"
                conns = [
                    self._new_conn(addr, i, self.stats.latency, topology.epoch, role)
                    for i in range(self.config.connections_per_backend)
                ]
                self.conns[addr] = conns
                for conn in conns:
                    if addr in primaries:
                        starter.start_soon(self.nursery.start, conn.run)
                    else:
                        self.nursery.start_soon(conn.run)

    def _swap(self, topology: Topology) -> None:
        router = Router(topology)
        # Clients spread over a node's connections by shard index; 1 connection is the default.
        shard_conns = [
            self.conns[s.primary][i % len(self.conns[s.primary])]
            for i, s in enumerate(topology.shards)
        ]
        replica_shards = self._replica_shards(topology)
        reads = self._read_plans(topology, shard_conns, replica_shards)
        self._fold_read_counters()
        self.router, self.shard_conns, self.reads = router, shard_conns, reads
        primaries = {s.primary for s in topology.shards}
        for addr, conns in self.conns.items():
            role = b"primary" if addr in primaries else b"replica"
            for conn in conns:
                conn.announce_epoch(topology.epoch, role)
        keep = primaries | {a for s in replica_shards for a in s.replicas}
        for addr in [a for a in self.conns if a not in keep]:
            for conn in self.conns.pop(addr):
                conn.retire()  # its task ends once what it has in flight is answered
                log_event("backend_retired", backend=conn.label, inflight=conn.inflight)
        self.monitor.sync(replica_shards)
        self._resubmit_retries()

    # -- replica reads --------------------------------------------------------------------------

    def _read_plans(
        self, topology: Topology, shard_conns: list[BackendConn], replica_shards: list[Shard]
    ) -> list[ShardReads | None] | None:
        if not replica_shards:
            return None
        now = trio.current_time()
        wanted = set(replica_shards)
        plans: list[ShardReads | None] = []
        for i, shard in enumerate(topology.shards):
            if shard not in wanted:
                plans.append(None)
                continue
            plan = ShardReads(
                shard,
                self.settings.read_mode(shard.name),
                shard_conns[i],
                {a: self.conns[a][i % len(self.conns[a])] for a in shard.replicas},
                self.monitor.lag_for(shard),
                self.settings.max_replica_lag_ms / 1000,
            )
            plan.refresh(now)
            plans.append(plan)
        return plans

    def _refresh_reads(self, now: float) -> None:
        for plan in self.reads or ():
            if plan is not None:
                plan.refresh(now)

    def _fold_read_counters(self) -> None:
        """Keep replica-read counters across swaps (they live in the per-topology plans)."""
        totals = self.stats.read_totals
        for plan in self.reads or ():
            if plan is not None:
                t = totals.setdefault(plan.name, [0, 0, 0])
                t[0] += plan.replica_reads
                t[1] += plan.fallbacks
                t[2] += plan.refused

    def read_counters(self) -> dict[str, list[int]]:
        """Shard name → [replica reads, primary fallbacks, refused], since start."""
        out = {k: list(v) for k, v in self.stats.read_totals.items()}
        for plan in self.reads or ():
            if plan is not None:
                t = out.setdefault(plan.name, [0, 0, 0])
                t[0] += plan.replica_reads
                t[1] += plan.fallbacks
                t[2] += plan.refused
        return out

    # -- following the sentinels ----------------------------------------------------------------

    async def adopt(self, topology: Topology, source: str) -> bool:
        """Take ``topology`` if its epoch is strictly higher than ours; swapped like a reload."""
        async with self.reload_lock:
            current = self.router.topology
            if current is not None and not topology.supersedes(current):
                self.stats.topologies_ignored += 1
                if topology.epoch < current.epoch:
                    log_event(
                        "topology_ignored", epoch=topology.epoch, current=current.epoch,
                        source=source,
                    )  # fmt: skip
                return False
            await self._open_backends(topology)
            self._swap(topology)
            self.stats.topologies_adopted += 1
            log_event(
                "topology_adopted", epoch=topology.epoch, shards=len(topology.shards),
                source=source,
            )  # fmt: skip
            return True

    def _on_stale(self, reason: str) -> None:
        self.stats.stale_replies += 1
        if self.follower is not None:
            self.follower.refresh(f"stale: {reason}")

    def _on_readonly(self, conn: BackendConn, pending: Pending, part: int, reply: bytes) -> bool:
        """A -READONLY answer to a retryable request: True when we keep it for one retry."""
        request = pending.retry_request(part)
        if request is None or self.follower is None:
            return False
        pending.take_retry(part)  # once
        now = trio.current_time()
        self._retries.append(_Retry(pending, part, request, conn, reply, now + self.config.timeout))
        self.follower.refresh("readonly")
        self._resubmit_retries()
        return True

    def _on_lost(self, conn: BackendConn, pending: Pending, part: int, error: bytes) -> bool:
        """A request lost with a failed connection: True when it is an idempotent read we keep
        for one retry on the node a newer topology names (issue 5); writes get the error."""
        request = pending.retry_request(part)
        if request is None or self.follower is None:
            return False
        reader = hiredis.Reader()
        reader.feed(request)
        args = reader.gets()
        if not isinstance(args, list) or not args or not is_readonly(args[0]):
            return False
        pending.take_retry(part)  # once
        now = trio.current_time()
        self._retries.append(
            _Retry(pending, part, request, conn, error, now + self.config.timeout, write=False)
        )
        self.follower.refresh("lost")
        self._resubmit_retries()
        return True

    def _resubmit_retries(self) -> None:
        """Send each kept write to the primary the current topology names, if that is another
        node than the one that refused it; answer it with its -READONLY when time is up."""
        if not self._retries:
            return
        now = trio.current_time()
        keep: list[_Retry] = []
        reader = hiredis.Reader()
        for r in self._retries:
            reader.feed(r.request)
            args = reader.gets()
            decision = self.router.route(args) if isinstance(args, list) else None
            target = self.shard_conns[decision] if type(decision) is int else None
            if target is None:
                self._answer_retry(r, r.reply)
            elif target is r.refused_by:
                if now < r.give_up_at:
                    keep.append(r)
                else:
                    self._answer_retry(r, r.reply)
            elif (refusal := target.refusal()) is not None:
                self._answer_retry(r, refusal)
            else:
                if r.write:
                    self.stats.write_retries += 1
                else:
                    self.stats.read_retries += 1
                if type(r.pending) is Pending:
                    # A fresh timeout for the retry. A run's parts share one deadline, which
                    # stays: its other requests keep their own bound.
                    r.pending.started = now
                    r.pending.deadline = now + self.config.timeout
                target.submit(r.pending, r.part, r.request)
        self._retries = keep
        if keep:
            self._retry_wake.set()

    def _answer_retry(self, r: _Retry, reply: bytes) -> None:
        if r.write:
            self.stats.write_retries_failed += 1
        else:
            self.stats.read_retries_failed += 1
        if r.pending.fail_part(r.part, reply):
            owner: Any = r.pending.owner
            if not owner.touched:
                owner.touched = True
                self._defer_flush([owner])

    async def _retry_timer(self) -> None:
        """Answers kept writes whose time is up (resubmission happens on adoption)."""
        while True:
            await self._retry_wake.wait()
            self._retry_wake = trio.Event()
            while self._retries:
                await trio.sleep_until(min(r.give_up_at for r in self._retries))
                self._resubmit_retries()

    # -- writing replies ------------------------------------------------------------------------

    def send_unsent(self) -> None:
        unsent = self.unsent
        while unsent:
            unsent.pop().send_now()

    def _defer_flush(self, clients: list[ClientConn]) -> None:
        """Clients with new replies: flushed once, at the end of the reactor's pass (or by the
        flusher, in the next scheduler batch, for replies completed outside a pass), so
        replies from every backend that answered go out in one send. A client with a single
        request in flight has nothing to wait for: it is flushed at once."""
        dirty = self._dirty
        for client in clients:
            if len(client.queue) == 1:
                _flush(client)
            else:
                dirty.append(client)
        if not dirty or self.reactor.serving:
            return
        task = self._flusher
        if task is not None:
            self._flusher = None
            trio.lowlevel.reschedule(task)

    def flush_dirty(self) -> None:
        if self._dirty:
            dirty, self._dirty = self._dirty, []
            for client in dirty:
                _flush(client)

    async def _flush_loop(self) -> None:
        def abort(_: object) -> trio.lowlevel.Abort:
            self._flusher = None
            return trio.lowlevel.Abort.SUCCEEDED

        while True:
            if not self._dirty:
                self._flusher = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(abort)
                continue
            self.flush_dirty()

    def backend_list(self) -> Iterable[tuple[BackendConn, str]]:
        topology = self.router.topology
        names: dict[NodeAddress, str] = {}
        for s in topology.shards if topology is not None else ():
            names[s.primary] = s.name
            names.update((r, s.name) for r in s.replicas)
        for addr, conns in list(self.conns.items()):
            for conn in conns:
                yield conn, names.get(addr, "")

    # -- reload ---------------------------------------------------------------------------------

    async def reload(self) -> tuple[bool, str]:
        if self.follower is not None:
            # The sentinels own the topology: a reload asks them instead of the file.
            self.follower.refresh("reload")
            self.stats.reloads_ok += 1
            log_event("reload_from_sentinels", epoch=self.router.epoch)
            return True, "refreshing from the sentinels"
        async with self.reload_lock:
            current = self.router.topology
            try:
                topology = self.config.load_settings().topology
                if topology is None:
                    raise ConfigError("the file has no [[shards]]")
            except ConfigError as exc:
                self.stats.reloads_failed += 1
                log_event("reload_failed", "error", reason=str(exc))
                return False, str(exc)
            if current is None:
                current = topology
            # Same shards at no higher an epoch: unchanged. A file edited without bumping its
            # epoch was bumped once already (below); a second SIGHUP (every worker gets one
            # after a CONFIG RELOAD) must not bump it again and split the workers' epochs.
            if (
                attrs.evolve(topology, epoch=current.epoch) == current
                and topology.epoch <= current.epoch
            ):
                self.stats.reloads_ok += 1
                log_event("reload_unchanged", epoch=current.epoch)
                return True, "unchanged"
            if not topology.supersedes(current):
                # A static file edited without bumping its epoch: still a new topology.
                topology = attrs.evolve(topology, epoch=current.epoch + 1)
            await self._open_backends(topology)
            self._swap(topology)
            self.stats.reloads_ok += 1
            log_event("reload_ok", epoch=topology.epoch, shards=len(topology.shards))
            return True, f"epoch {topology.epoch}"

    def reload_soon(self, pending: Pending) -> None:
        """CONFIG RELOAD: reload in the background, then answer in the request's place."""

        async def run() -> None:
            ok, why = await self.reload()
            if ok and self.config.worker:
                # One of --workers N: the parent forwards SIGHUP to every worker, so they all
                # reload the file, not only the one this client happened to reach.
                os.kill(os.getppid(), signal.SIGHUP)
            reply = OK_BYTES if ok else encode_error(f"ERR reload failed, old config kept: {why}")
            pending.reply = reply
            owner: Any = pending.owner
            owner.flush()

        self.nursery.start_soon(run)

    async def _sighup(self) -> None:
        with trio.open_signal_receiver(signal.SIGHUP) as signals:
            async for _ in signals:
                await self.reload()

    # -- clients --------------------------------------------------------------------------------

    async def accept_loop(self, lsock: socket.socket) -> None:
        while True:
            try:
                sock, _ = lsock.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(lsock)
                continue
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log_event("accept_failed", "error", reason=exc.strerror)
                    await trio.sleep(0.1)
                    continue
                raise
            sock.setblocking(False)
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.stats.clients_connected >= self.config.max_clients:
                self.stats.clients_rejected += 1
                try:
                    sock.send(b"-ERR max number of clients reached\r\n")
                except OSError:
                    pass
                sock.close()
                continue
            self.next_client_id += 1
            self.reactor.add(ClientConn(self, sock, self.next_client_id))

    # -- introspection --------------------------------------------------------------------------

    def wall_time(self) -> float:
        return time.time()

    def now(self) -> float:
        """trio's clock, readable from the metrics thread too."""
        try:
            return trio.current_time()
        except RuntimeError:  # not on the trio thread
            return self._clock.current_time()

    def info_sections(self) -> dict[str, dict[str, object]]:
        s = self.stats
        topo = self.router.topology
        shards = topo.shards if topo is not None else ()
        backends: dict[str, object] = {}
        for i, (conn, shard) in enumerate(self.backend_list()):
            backends[f"backend{i}"] = (
                f"addr={conn.label},shard={shard},state={conn.health.state.value},"
                f"inflight={conn.inflight},requests={conn.requests},errors={conn.errors},"
                f"timeouts={conn.timeouts},last_error={conn.health.last_error.replace(' ', '_')},"
                f"role={conn.role.decode()}"
            )
        sentinels: dict[str, object] = {}
        if self.follower is not None:
            for i, link in enumerate(self.follower.links):
                sentinels[f"sentinel{i}"] = (
                    f"addr={link.address},subscribed={int(link.subscribed)},"
                    f"commands={int(link.commands_up)},epoch={link.epoch},"
                    f"last_error={link.last_error.replace(' ', '_')}"
                )
            sentinels["proxy_name"] = self.config.proxy_name
            sentinels["epoch_reports"] = self.follower.reports
        replicas: dict[str, object] = {}
        now = self.now()
        for plan in self.reads or ():
            if plan is None:
                continue
            for j, addr in enumerate(plan.lag.replicas):
                lag = plan.lag.lag(addr, now)
                eligible = any(c is plan.replica_conns[addr] for c in plan.candidates)
                replicas[f"{plan.name}_replica{j}"] = (
                    f"addr={addr},mode={plan.mode.value},"
                    f"lag_ms={'unknown' if lag is None else round(lag * 1000)},"
                    f"eligible={int(eligible)}"
                )
        for name, (served, fallback, refused) in sorted(self.read_counters().items()):
            replicas[f"{name}_reads"] = (
                f"replica={served},primary_fallback={fallback},refused={refused}"
            )
        return {
            "Server": {
                "redis_version": "7.0.0",
                "shardgate_role": "proxy",
                "process_id": os.getpid(),
                "tcp_port": self.config.port,
                "uptime_in_seconds": int(time.time() - START_TIME),
            },
            "Clients": {
                "connected_clients": s.clients_connected,
                "maxclients": self.config.max_clients,
                "rejected_connections": s.clients_rejected,
            },
            "Stats": {
                "total_connections_received": s.clients_total,
                "total_commands_processed": sum(s.commands.values()),
                "protocol_errors": s.protocol_errors,
                "backend_unavailable_errors": s.refused,
                "rejected_commands": s.rejected,
                "reloads_ok": s.reloads_ok,
                "reloads_failed": s.reloads_failed,
                "topologies_adopted": s.topologies_adopted,
                "topologies_ignored": s.topologies_ignored,
                "stale_replies": s.stale_replies,
                "write_retries": s.write_retries,
                "write_retries_failed": s.write_retries_failed,
                "read_retries": s.read_retries,
                "read_retries_failed": s.read_retries_failed,
            },
            "Topology": {
                "epoch": self.router.epoch,
                "shards": len(shards),
                **{
                    f"shard{i}": f"name={sh.name},primary={sh.primary},slots="
                    + "/".join(str(r) for r in sh.slots)
                    + (",replicas=" + "/".join(str(r) for r in sh.replicas) if sh.replicas else "")
                    for i, sh in enumerate(shards)
                },
            },
            "Backends": backends,
            "Sentinels": sentinels,
            "Replicas": replicas,
        }


def _flush(client: ClientConn) -> None:
    """Write a client's ready replies; a bug there costs that client, not the backend task."""
    try:
        client.flush()
    except Exception as exc:
        log_event("client_flush_failed", "error", error=repr(exc))
        client.close()


def listen_socket(config: ProxyConfig) -> socket.socket:
    infos = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM)
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if config.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve(
    config: ProxyConfig, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the proxy until cancelled; reports the (host, port) it listens on."""
    settings = config.load_settings()
    lsock = listen_socket(config)
    if config.port == 0:
        # The port the OS chose is this proxy's address: its name to the sentinels (two
        # proxies on port 0 must not both call themselves host:0) and INFO's tcp_port.
        config = attrs.evolve(config, port=lsock.getsockname()[1])
    with lsock:
        async with trio.open_nursery() as nursery:
            proxy = Proxy(config, settings, nursery)
            if settings.topology is not None:
                await proxy.adopt(settings.topology, config.config_path or "--backends")
            if proxy.follower is not None:
                # Highest epoch of the sentinels that answer within the timeout; the rest are
                # followed by their subscriptions once they come up.
                found = await proxy.follower.fetch_all()
                if found is not None:
                    await proxy.adopt(found, "sentinels (start)")
                await nursery.start(proxy.follower.run)
                if proxy.router.topology is None:
                    log_event("no_topology_yet", "warn", sentinels=len(settings.sentinels))
            nursery.start_soon(proxy._retry_timer)
            if config.metrics_port is not None:
                try:
                    port = serve_metrics(
                        config.metrics_port,
                        config.metrics_host,
                        functools.partial(metrics.collect, proxy),
                    )
                    log_event("metrics_listening", host=config.metrics_host, port=port)
                except OSError as exc:  # metrics must never keep the proxy from serving
                    log_event("metrics_failed", "error", port=config.metrics_port, reason=exc)
            nursery.start_soon(proxy._sighup)
            nursery.start_soon(proxy._flush_loop)
            nursery.start_soon(proxy.reactor.run)
            nursery.start_soon(proxy.accept_loop, lsock)
            host, port = lsock.getsockname()[:2]
            log_event(
                "listening", host=host, port=port, epoch=proxy.router.epoch,
                shards=proxy.router.nshards,
            )  # fmt: skip
            task_status.started((host, port))
