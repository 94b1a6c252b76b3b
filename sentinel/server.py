"""The sentinel process: a thin trio shell around ``SentinelCore``.

How it works
- One ticker task calls ``core.tick(now)`` whenever ``core.next_wakeup(now)`` says so; one
  monitor task per store node PINGs it and reads ``INFO replication`` every
  ``ping_period_ms`` (``PingReply`` + ``NodeReport``); one sender task per peer sentinel
  delivers ``SendToPeer`` messages as ``SG.SENTINEL <msgpack>``. ``now`` is trio's clock in
  ms, so the whole process runs under ``MockClock`` in tests.
- Actions run **in order** under one lock (``_run``): ``PersistState`` is written (fsync +
  rename, in a worker thread) before any later action is executed, which is what makes a vote
  durable before its reply leaves. Actions that talk to nodes (``SendRole``, ``PauseWrites``,
  ``ResumeWrites``) run as tasks and report back through ``core.handle``.
- The RESP port serves clients: Redis Sentinel's ``SENTINEL …`` subset (redis-py's
  ``Sentinel`` and ``redis-cli`` work), ``SUBSCRIBE``/``PSUBSCRIBE`` to the event channels
  (``+sdown``, ``+odown``, ``+switch-master`` … and ``shardgate.topology``, which carries every
  published topology as msgpack), and shardgate's own ``SG.SENTINEL`` (peer messages),
  ``SG.TOPOLOGY`` (the current topology), ``SG.STATUS`` / ``SG.HISTORY`` (the inspection CLI)
  and ``SG.PROXYEPOCH`` (proxies report the epoch they route by).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import msgpack
import trio

from sentinel import compat
from sentinel.actions import (
    Action,
    Log,
    NodeReport,
    Observation,
    PauseWrites,
    PeerMessage,
    PersistState,
    PingReply,
    PublishTopology,
    ResumeWrites,
    Role,
    RoleApplied,
    SendRole,
    SendToPeer,
    WritesPaused,
)
from sentinel.client import ReplyError, RespClient, parse_info
from sentinel.config import SentinelConfig
from sentinel.core import SentinelCore
from sentinel.messages import MessageError, decode_message, encode_message, encode_topology
from sentinel.state_file import read_state_file, write_state_file
from sentinel.status import (
    build_status,
    record_to_dict,
    render_history,
    render_status,
    status_to_dict,
)
from shardgate.logs import log_event
from shardgate.resp import (
    OK,
    ErrorReply,
    ProtocolError,
    RequestParser,
    SimpleString,
    Verbatim,
    encode_reply,
)
from shardgate.topology import NodeAddress, Topology

TOPOLOGY_CHANNEL = "shardgate.topology"
PEER_CALL_SECONDS = 1.0
ROLE_CALL_SECONDS = 2.0
PEER_QUEUE = 256  # messages waiting for one peer; beyond this the oldest ideas are stale anyway


def topology_blob(topology: Topology) -> bytes:
    return msgpack.packb(encode_topology(topology), use_bin_type=True)


class SentinelServer:
    def __init__(self, config: SentinelConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        # Read (and validate) the state file now, so a corrupt one fails before we listen.
        self._state = read_state_file(config.state_file) if config.state_file else None
        self._rng = rng or random.Random()
        self.core: SentinelCore = None  # type: ignore[assignment]  # built in serve(): needs trio's clock
        self.port = config.listen.port
        self.blob = b""
        self._published_epoch = -1
        self.trio_token: trio.lowlevel.TrioToken | None = None
        self._lock = trio.Lock()
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._monitors: dict[NodeAddress, trio.CancelScope] = {}
        self._peers: dict[str, trio.MemorySendChannel[bytes]] = {}
        self._subscribers: list[_Subscriber] = []

    @staticmethod
    def now() -> int:
        return int(trio.current_time() * 1000)

    # --- the loop ---------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        self.core = SentinelCore(self.config, self._state, now=self.now(), rng=self._rng)
        # The metrics HTTP thread reads the core through this token, on the trio thread.
        self.trio_token = trio.lowlevel.current_trio_token()
        self.blob = topology_blob(self.core.topology)
        self._published_epoch = self.core.topology.epoch
        listeners = await trio.open_tcp_listeners(
            self.config.listen.port, host=self.config.listen.host
        )
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for w in self.config.warnings:
                log_event("config_warning", level="warn", warning=w)
            self._sync_tasks()
            nursery.start_soon(self._ticker)
            await nursery.start(trio.serve_listeners, self._serve_client, listeners)
            log_event("listening", id=self.core.id, port=self.port, epoch=self.core.topology.epoch)
            task_status.started(self.port)

    async def _ticker(self) -> None:
        while True:
            await self._run(self.core.tick(self.now()))
            self._sync_tasks()
            wake_at = self.core.next_wakeup(self.now())
            with trio.move_on_at(wake_at / 1000):
                await self._wake.wait()
            self._wake = trio.Event()

    async def observe(self, obs: Observation) -> None:
        await self._run(self.core.handle(obs, self.now()))
        self._wake.set()  # the core may want an earlier tick now

    async def _run(self, actions: Iterable[Action]) -> None:
        async with self._lock:
            for action in actions:
                await self._execute(action)
            # A topology adopted from a peer is news for our subscribers too.
            if self.core.topology.epoch > self._published_epoch:
                self._publish(self.core.topology)

    async def _execute(self, action: Action) -> None:
        assert self._nursery is not None
        if isinstance(action, PersistState):
            if self.config.state_file:
                await trio.to_thread.run_sync(write_state_file, self.config.state_file, action.data)
        elif isinstance(action, Log):
            self._log(action)
        elif isinstance(action, SendToPeer):
            channel = self._peers.get(action.peer)
            if channel is not None:
                try:
                    channel.send_nowait(encode_message(action.message))
                except trio.WouldBlock:
                    log_event("peer_queue_full", level="warn", peer=action.peer)
        elif isinstance(action, PublishTopology):
            if action.topology.epoch > self._published_epoch:
                self._publish(action.topology)
        elif isinstance(action, SendRole | PauseWrites | ResumeWrites):
            self._nursery.start_soon(self._node_action, action)
        else:  # pragma: no cover - the Action union is closed
            raise TypeError(action)

    # --- nodes -----------------------------------------------------------------------------

    def _sync_tasks(self) -> None:
        """One monitor per node in the topology, one sender per known peer."""
        assert self._nursery is not None
        wanted = set(self.core.monitored_nodes())
        for node in set(self._monitors) - wanted:
            self._monitors.pop(node).cancel()
        for node in wanted - set(self._monitors):
            scope = trio.CancelScope()
            self._monitors[node] = scope
            self._nursery.start_soon(self._monitor, node, scope)
        for peer_id, address in self.core.peers.items():
            if peer_id not in self._peers:
                send, receive = trio.open_memory_channel[bytes](PEER_QUEUE)
                self._peers[peer_id] = send
                self._nursery.start_soon(self._peer_sender, peer_id, address, receive)

    def _client(self, node: NodeAddress) -> RespClient:
        return RespClient(node.host, node.port, password=self.config.node_password)

    async def _monitor(self, node: NodeAddress, scope: trio.CancelScope) -> None:
        period = self.config.ping_period_ms / 1000
        client = self._client(node)
        with scope:
            try:
                while True:
                    started = trio.current_time()
                    for obs in await self._probe(client, node):
                        await self.observe(obs)
                    await trio.sleep_until(started + period)
            finally:
                with trio.CancelScope(shield=True):
                    await client.close()

    async def _probe(self, client: RespClient, node: NodeAddress) -> list[Observation]:
        try:
            with trio.fail_after(max(self.config.down_after_ms / 1000, 0.2)):
                pong = await client.call("PING")
                out: list[Observation] = [PingReply(node, pong in (b"PONG", "PONG"))]
                info = parse_info(await client.call("INFO", "replication"))
        except ReplyError as exc:
            valid = str(exc).startswith(("LOADING", "MASTERDOWN"))
            return [PingReply(node, valid)]
        except (OSError, trio.TooSlowError):
            await client.close()
            return []  # no reply at all: the detector's clock keeps running
        report = node_report(node, info)
        if report is not None:
            out.append(report)
        return out

    async def _node_action(self, action: SendRole | PauseWrites | ResumeWrites) -> None:
        client = self._client(action.node)
        try:
            with trio.move_on_after(ROLE_CALL_SECONDS):
                if isinstance(action, SendRole):
                    ok = True
                    try:
                        await client.call(*action.command())
                    except (ReplyError, OSError) as exc:
                        ok = False
                        log_event("role_refused", level="warn", node=action.node, error=str(exc))
                    await self.observe(RoleApplied(action.node, action.role, action.epoch, ok))
                elif isinstance(action, PauseWrites):
                    await client.call("CLIENT", "PAUSE", action.timeout_ms, "WRITE")
                    info = parse_info(await client.call("INFO", "replication"))
                    await self.observe(
                        WritesPaused(action.node, int(info.get("master_repl_offset", 0)))
                    )
                else:
                    await client.call("CLIENT", "UNPAUSE")
        except (ReplyError, OSError) as exc:
            log_event("node_action_failed", level="warn", node=action.node, error=str(exc))
        finally:
            with trio.CancelScope(shield=True):
                await client.close()

    # --- peers -----------------------------------------------------------------------------

    async def _peer_sender(
        self, peer_id: str, address: NodeAddress, queue: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        client = RespClient(address.host, address.port, password=self.config.password)
        async for payload in queue:
            try:
                with trio.fail_after(PEER_CALL_SECONDS):
                    await client.call("SG.SENTINEL", payload)
            except (OSError, ReplyError, trio.TooSlowError):
                await client.close()  # lost: the core repeats what matters (hellos, votes)

    # --- publication -----------------------------------------------------------------------

    def _publish(self, topology: Topology) -> None:
        self._published_epoch = topology.epoch
        self.blob = topology_blob(topology)
        log_event("topology_published", epoch=topology.epoch)
        self._notify(TOPOLOGY_CHANNEL, self.blob)

    def _log(self, action: Log) -> None:
        fields = dict(action.fields)
        log_event(action.event, **fields)
        self._notify(action.event, event_payload(action).encode())

    def _notify(self, channel: str, payload: bytes) -> None:
        for sub in list(self._subscribers):
            sub.offer(channel, payload)

    # --- the RESP port ---------------------------------------------------------------------

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        conn = _Connection(self, stream)
        try:
            await conn.run()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ProtocolError):
            pass  # the client went away or spoke garbage: only this connection ends
        finally:
            if conn.subscriber is not None:
                self._subscribers.remove(conn.subscriber)


def node_report(node: NodeAddress, info: dict[str, str]) -> NodeReport | None:
    """A ``NodeReport`` from INFO replication (shardgate's fields, Redis's names)."""
    role_name = info.get("shardgate_role") or {"master": "primary", "slave": "replica"}.get(
        info.get("role", ""), ""
    )
    try:
        role = {"primary": Role.PRIMARY, "replica": Role.REPLICA, "unassigned": Role.NONE}[
            role_name
        ]
        epoch = int(info.get("shardgate_epoch", "0"))
        if role is Role.REPLICA:
            primary = NodeAddress(info["master_host"], int(info["master_port"]))
            offset = int(info.get("slave_repl_offset", "0"))
            down = int(info.get("master_link_down_since_seconds", "-1"))
            up = info.get("master_link_status") == "up"
            link_down_ms = None if up else (max(down, 0) * 1000 if down >= 0 else 10**9)
            return NodeReport(node, role, epoch, primary, offset, link_down_ms)
        return NodeReport(node, role, epoch, None, int(info.get("master_repl_offset", "0")))
    except (KeyError, ValueError):
        return None


def event_payload(action: Log) -> str:
    """Redis Sentinel's message text: ``master <name> <ip> <port>`` when the event is about a
    node, else the fields as ``key=value``."""
    fields = dict(action.fields)
    if "message" in fields:
        return fields["message"]
    node = fields.get("node")
    if node and fields.get("kind") in ("primary", "master", None):
        host, _, port = node.rpartition(":")
        return f"master {fields.get('shard', node)} {host} {port}"
    return " ".join(f"{k}={v}" for k, v in fields.items())


@attrs.define
class _Subscriber:
    send: trio.MemorySendChannel[bytes]
    channels: set[str] = attrs.field(factory=set)
    patterns: set[str] = attrs.field(factory=set)
    resp3: bool = False

    def offer(self, channel: str, payload: bytes) -> None:
        import fnmatch

        out = []
        if channel in self.channels:
            out.append(encode_reply([b"message", channel.encode(), payload], self.resp3))
        for pat in self.patterns:
            if fnmatch.fnmatchcase(channel, pat):
                out.append(
                    encode_reply([b"pmessage", pat.encode(), channel.encode(), payload], self.resp3)
                )
        for data in out:
            try:
                self.send.send_nowait(data)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # a subscriber that does not read loses messages, never stalls the sentinel


class _Connection:
    def __init__(self, server: SentinelServer, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.parser = RequestParser(authenticated=not server.config.password)
        self.subscriber: _Subscriber | None = None
        self.resp3 = False
        self.handlers: dict[bytes, Callable[[list[bytes]], Any]] = {
            b"ping": self._ping,
            b"auth": self._auth,
            b"hello": self._hello,
            b"client": lambda a: OK,
            b"info": self._info,
            b"sentinel": self._sentinel,
            b"sg.sentinel": self._peer,
            b"sg.topology": lambda a: self.server.blob,
            b"sg.status": self._status,
            b"sg.history": self._history,
            b"sg.proxyepoch": self._proxy_epoch,
        }

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    nursery.cancel_scope.cancel()
                    return
                self.parser.feed(data)
                out = []
                while (args := self.parser.next_command()) is not None:
                    name = args[0].lower()
                    if name in (b"subscribe", b"psubscribe", b"unsubscribe", b"punsubscribe"):
                        out.append(self._subscribe(name, args, nursery))
                    elif name == b"quit":
                        await self.stream.send_all(b"".join(out) + b"+OK\r\n")
                        nursery.cancel_scope.cancel()
                        return
                    else:
                        out.append(await self._dispatch(name, args))
                if out:
                    await self._send(b"".join(out))

    async def _send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _dispatch(self, name: bytes, args: list[bytes]) -> bytes:
        if not self.parser.authenticated and name != b"auth":
            return b"-NOAUTH Authentication required.\r\n"
        handler = self.handlers.get(name)
        if handler is None:
            text = args[0].decode("utf-8", "replace")
            return encode_reply(ErrorReply(f"ERR unknown command '{text}' for a sentinel"))
        try:
            result = handler(args)
            if hasattr(result, "__await__"):
                result = await result
        except (ValueError, IndexError, MessageError) as exc:
            return encode_reply(ErrorReply(f"ERR {exc}"))
        return encode_reply(result, self.resp3)

    def _subscribe(self, name: bytes, args: list[bytes], nursery: trio.Nursery) -> bytes:
        if self.subscriber is None:
            send, receive = trio.open_memory_channel[bytes](1024)
            self.subscriber = _Subscriber(send)
            self.server._subscribers.append(self.subscriber)
            nursery.start_soon(self._forward, receive)
        sub = self.subscriber
        target = sub.patterns if name.startswith(b"p") else sub.channels
        kind = name.decode()
        replies = []
        items = [a.decode("utf-8", "replace") for a in args[1:]] or sorted(target)
        for item in items:
            if kind.endswith("unsubscribe"):
                target.discard(item)
            else:
                target.add(item)
            count = len(sub.channels) + len(sub.patterns)
            replies.append(encode_reply([kind.encode(), item.encode(), count]))
        return b"".join(replies)

    async def _forward(self, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        async for data in receive:
            await self._send(data)

    # --- commands --------------------------------------------------------------------------

    def _hello(self, args: list[bytes]) -> object:
        if len(args) > 1:
            if args[1] not in (b"2", b"3"):
                return ErrorReply("NOPROTO unsupported protocol version")
            self.resp3 = args[1] == b"3"
        rest = [a.lower() for a in args[2:]]
        if b"auth" in rest and len(args) >= rest.index(b"auth") + 5:
            reply = self._auth([b"AUTH", args[rest.index(b"auth") + 4]])
            if isinstance(reply, ErrorReply):
                return reply
        return {
            b"server": b"redis",
            b"version": b"7.0.0",
            b"proto": 3 if self.resp3 else 2,
            b"id": 0,
            b"mode": b"sentinel",
            b"role": b"sentinel",
            b"modules": [],
        }

    def _ping(self, args: list[bytes]) -> object:
        return args[1] if len(args) > 1 else SimpleString("PONG")

    def _auth(self, args: list[bytes]) -> object:
        password = self.server.config.password
        if not password:
            return ErrorReply("ERR AUTH <password> called without any password configured")
        if args[-1].decode("utf-8", "replace") != password:
            return ErrorReply("WRONGPASS invalid username-password pair or user is disabled.")
        self.parser.authenticated = True
        return OK

    def _info(self, args: list[bytes]) -> object:
        st = build_status(self.server.core, self.server.now())
        lines = [
            "# Server",
            "redis_version:7.0.0",
            "redis_mode:sentinel",
            f"tcp_port:{self.server.port}",
            "# Sentinel",
            f"sentinel_masters:{len(st.shards)}",
            f"sentinel_tilt:{int(st.tilt)}",
            "sentinel_running_scripts:0",
            f"shardgate_current_epoch:{st.current_epoch}",
            f"shardgate_topology_epoch:{st.topology_epoch}",
        ]
        for i, s in enumerate(st.shards):
            status = "odown" if s.primary.health.value == "odown" else "ok"
            lines.append(
                f"master{i}:name={s.name},status={status},address={s.primary.address},"
                f"slaves={len(s.replicas)},sentinels={len(st.sentinels) + 1}"
            )
        return Verbatim("\r\n".join(lines) + "\r\n")

    def _peer(self, args: list[bytes]) -> object:
        msg = decode_message(args[1])
        self.server._nursery.start_soon(self.server.observe, PeerMessage(msg))  # type: ignore[union-attr]
        return OK

    def _status(self, args: list[bytes]) -> object:
        st = build_status(self.server.core, self.server.now())
        if len(args) > 1 and args[1].lower() == b"json":
            return json.dumps(status_to_dict(st)).encode()
        return render_status(st).encode()

    def _history(self, args: list[bytes]) -> object:
        history = self.server.core.history
        if len(args) > 1 and args[1].lower() == b"json":
            return json.dumps([record_to_dict(r) for r in history]).encode()
        return render_history(history).encode()

    async def _proxy_epoch(self, args: list[bytes]) -> object:
        name = args[1].decode("utf-8", "replace")[:128]
        epoch = int(args[2])
        server = self.server
        await server._run(server.core.note_proxy_epoch(name, epoch, server.now()))
        return server.core.topology.epoch

    def _instance(self, pairs: list[str]) -> object:
        """One instance's fields: a flat array in RESP2, a map in RESP3 (as Redis Sentinel)."""
        if self.resp3:
            return dict(zip(pairs[::2], pairs[1::2]))
        return pairs

    async def _sentinel(self, args: list[bytes]) -> object:
        server = self.server
        core = server.core
        cfg = server.config
        sub = args[1].lower().decode("utf-8", "replace") if len(args) > 1 else ""
        name = args[2].decode("utf-8", "replace") if len(args) > 2 else ""
        st = build_status(core, server.now())
        if sub == "myid":
            return core.id.encode()
        if sub == "masters":
            return [
                self._instance(compat.master_fields(
                    st, s, quorum=cfg.quorum, down_after_ms=cfg.down_after_ms,
                    failover_timeout_ms=cfg.failover_timeout_ms))
                for s in st.shards
            ]  # fmt: skip
        if sub in ("master", "replicas", "slaves", "sentinels", "get-master-addr-by-name",
                   "failover", "ckquorum", "reset", "is-master-down-by-addr"):  # fmt: skip
            shard = compat.find_shard(st, name)
            if sub == "get-master-addr-by-name":
                return compat.master_addr(st, name)
            if shard is None:
                return ErrorReply("ERR No such master with that name")
            if sub == "master":
                return self._instance(compat.master_fields(
                    st, shard, quorum=cfg.quorum, down_after_ms=cfg.down_after_ms,
                    failover_timeout_ms=cfg.failover_timeout_ms,
                ))  # fmt: skip
            if sub in ("replicas", "slaves"):
                return [
                    self._instance(compat.replica_fields(r, shard.primary)) for r in shard.replicas
                ]
            if sub == "sentinels":
                return [self._instance(f) for f in compat.sentinel_fields(st)]
            if sub == "ckquorum":
                q = st.quorum
                if q.can_fail_over:
                    return SimpleString(
                        f"OK {q.reachable} usable Sentinels. Quorum and failover authorization "
                        "can be reached"
                    )
                return ErrorReply(f"NOQUORUM {q.reason}")
            if sub == "failover":
                error, actions = core.request_failover(name, server.now())
                if error is not None:
                    return ErrorReply(error if error.split()[0].isupper() else f"ERR {error}")
                await server._run(actions)
                server._wake.set()
                return OK
            if sub == "reset":
                return 0
        return ErrorReply(f"ERR Unknown sentinel subcommand '{sub}'")
