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
from proxy.config import ProxyConfig
from proxy.ordering import Pending
from proxy.router import Router
from shardgate.config import ConfigError
from shardgate.logs import log_event
from shardgate.metrics import FastHistogram, serve_metrics
from shardgate.resp import OK_BYTES, encode_error
from shardgate.topology import NodeAddress, Topology

START_TIME = time.time()
LISTEN_BACKLOG = 511  # Redis's tcp-backlog default


class Proxy:
    def __init__(self, config: ProxyConfig, topology: Topology, nursery: trio.Nursery) -> None:
        self.config = config
        self.nursery = nursery
        self.stats = metrics.ProxyStats()
        self.router = Router(topology)
        self.conns: dict[NodeAddress, list[BackendConn]] = {}
        self.shard_conns: list[BackendConn] = []
        self.next_client_id = 0
        self.reload_lock = trio.Lock()
        self.encode = _pack
        self._dirty: list[ClientConn] = []
        self._flusher: trio.lowlevel.Task | None = None

    # -- backends -------------------------------------------------------------------------------

    def _new_conn(
        self, addr: NodeAddress, index: int, latency: FastHistogram, epoch: int
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
        )

    async def _open_backends(self, topology: Topology) -> None:
        """Start connections for every primary not connected yet; wait for first attempts."""
        new = [s.primary for s in topology.shards if s.primary not in self.conns]
        async with trio.open_nursery() as starter:
            for addr in new:
                conns = [
                    self._new_conn(addr, i, self.stats.latency, topology.epoch)
                    for i in range(self.config.connections_per_backend)
                ]
                self.conns[addr] = conns
                for conn in conns:
                    starter.start_soon(self.nursery.start, conn.run)

    def _swap(self, topology: Topology) -> None:
        router = Router(topology)
        # Clients spread over a node's connections by shard index; 1 connection is the default.
        shard_conns = [
            self.conns[s.primary][i % len(self.conns[s.primary])]
            for i, s in enumerate(topology.shards)
        ]
        self.router, self.shard_conns = router, shard_conns
        for conns in self.conns.values():
            for conn in conns:
                conn.announce_epoch(topology.epoch)
        keep = {s.primary for s in topology.shards}
        for addr in [a for a in self.conns if a not in keep]:
            for conn in self.conns.pop(addr):
                conn.retire()  # its task ends once what it has in flight is answered
                log_event("backend_retired", backend=conn.label, inflight=conn.inflight)

    # -- writing replies ------------------------------------------------------------------------

    def _defer_flush(self, clients: list[ClientConn]) -> None:
        """Clients with new replies: flushed once by the flusher, in the next scheduler batch,
        so replies from every backend that answered in this batch go out in one send. A client
        with a single request in flight has nothing to wait for: it is flushed at once, which
        saves a task switch per request for non-pipelining clients."""
        dirty = self._dirty
        for client in clients:
            if len(client.queue) == 1:
                _flush(client)
            else:
                dirty.append(client)
        if not dirty:
            return
        task = self._flusher
        if task is not None:
            self._flusher = None
            trio.lowlevel.reschedule(task)

    async def _flush_loop(self) -> None:
        def abort(_: object) -> trio.lowlevel.Abort:
            self._flusher = None
            return trio.lowlevel.Abort.SUCCEEDED

        while True:
            if not self._dirty:
                self._flusher = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(abort)
                continue
            dirty, self._dirty = self._dirty, []
            for client in dirty:
                _flush(client)

    def backend_list(self) -> Iterable[tuple[BackendConn, str]]:
        names = {s.primary: s.name for s in self.router.topology.shards}
        for addr, conns in list(self.conns.items()):
            for conn in conns:
                yield conn, names.get(addr, "")

    # -- reload ---------------------------------------------------------------------------------

    async def reload(self) -> tuple[bool, str]:
        async with self.reload_lock:
            current = self.router.topology
            try:
                topology = self.config.load_topology()
            except ConfigError as exc:
                self.stats.reloads_failed += 1
                log_event("reload_failed", "error", reason=str(exc))
                return False, str(exc)
            if topology == current:
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
            self.nursery.start_soon(self._client, ClientConn(self, sock, self.next_client_id))

    async def _client(self, client: ClientConn) -> None:
        self.stats.clients_connected += 1
        self.stats.clients_total += 1
        try:
            await client.run()
        except Exception as exc:  # a bug must cost one connection, never the whole proxy
            log_event("client_failed", "error", client=client.session.id, error=repr(exc))
        finally:
            self.stats.clients_connected -= 1

    # -- introspection --------------------------------------------------------------------------

    def wall_time(self) -> float:
        return time.time()

    def info_sections(self) -> dict[str, dict[str, object]]:
        s = self.stats
        topo = self.router.topology
        backends: dict[str, object] = {}
        for i, (conn, shard) in enumerate(self.backend_list()):
            backends[f"backend{i}"] = (
                f"addr={conn.label},shard={shard},state={conn.health.state.value},"
                f"inflight={conn.inflight},requests={conn.requests},errors={conn.errors},"
                f"timeouts={conn.timeouts},last_error={conn.health.last_error.replace(' ', '_')}"
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
            },
            "Topology": {
                "epoch": topo.epoch,
                "shards": len(topo.shards),
                **{
                    f"shard{i}": f"name={sh.name},primary={sh.primary},slots="
                    + "/".join(str(r) for r in sh.slots)
                    for i, sh in enumerate(topo.shards)
                },
            },
            "Backends": backends,
        }


def _flush(client: ClientConn) -> None:
    """Write a client's ready replies; a bug there costs that client, not the backend task."""
    try:
        client.flush()
    except Exception as exc:
        log_event("client_flush_failed", "error", error=repr(exc))
        client.dead = True
        scope = getattr(client, "scope", None)
        if scope is not None:
            scope.cancel()


def _pack(args: list[bytes]) -> bytes:
    return hiredis.pack_command(tuple(args))  # type: ignore[arg-type]


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
    topology = config.load_topology()
    lsock = listen_socket(config)
    with lsock:
        async with trio.open_nursery() as nursery:
            proxy = Proxy(config, topology, nursery)
            await proxy._open_backends(topology)
            proxy._swap(topology)
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
            nursery.start_soon(proxy.accept_loop, lsock)
            host, port = lsock.getsockname()[:2]
            log_event(
                "listening", host=host, port=port, epoch=topology.epoch, shards=len(topology.shards)
            )
            task_status.started((host, port))
