"""Following the sentinels: learn, subscribe to and report the topology (the trio shell).

How it works
- Two tasks per sentinel, each with its own connection and its own backoff
  (``proxy/follow.py``), so a sentinel that is down, slow or stopped never holds up another:
  - the **subscription**: ``SG.TOPOLOGY`` and ``SUBSCRIBE shardgate.topology`` sent in one
    write (the sentinel answers both in one pass, so no publication can fall between them),
    then every pushed topology is offered to the proxy;
  - the **commands** link: ``SG.PROXYEPOCH <name> <epoch>`` every ``REPORT_INTERVAL`` and
    right after an adoption; its reply is the sentinel's own topology epoch, and a higher one
    than ours makes the link fetch ``SG.TOPOLOGY`` (this also repairs a lost publication);
    and ``SG.TOPOLOGY`` whenever a refresh is asked for.
- ``refresh(reason)`` (a node answered ``-STALE`` or ``-READONLY``) asks every commands link
  to fetch at once, at most once per ``REFRESH_INTERVAL``.
- Whatever a sentinel sends goes through ``adopt``, which takes only a strictly higher epoch:
  the highest epoch seen from any sentinel wins, and a replayed or stale topology is ignored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from proxy.control import ControlClient, ControlError
from proxy.follow import REPORT_INTERVAL, Backoff, RefreshLimiter
from shardgate.logs import log_event
from shardgate.topology import NodeAddress, Topology, TopologyError, topology_from_wire

CHANNEL = b"shardgate.topology"

Adopt = Callable[[Topology, str], Awaitable[bool]]
# How a link reaches a sentinel: ``ControlClient.connect`` (tests pass in-memory streams).
Connect = Callable[[NodeAddress, str | None], Awaitable[ControlClient]]


async def connect_tcp(address: NodeAddress, password: str | None) -> ControlClient:
    return await ControlClient.connect(address.host, address.port, password=password)


class SentinelLink:
    """What the proxy knows about one sentinel (INFO's Sentinels section, metrics)."""

    __slots__ = (
        "address",
        "commands_up",
        "epoch",
        "last_error",
        "report_now",
        "subscribed",
        "wake",
        "want_topology",
    )

    def __init__(self, address: NodeAddress) -> None:
        self.address = address
        self.subscribed = False
        self.commands_up = False
        self.epoch = -1  # the sentinel's topology epoch, as last seen
        self.last_error = "none"
        self.want_topology = False
        self.report_now = False
        self.wake = trio.Event()

    def poke(self) -> None:
        self.wake.set()


class SentinelFollower:
    def __init__(
        self,
        sentinels: tuple[NodeAddress, ...],
        *,
        password: str | None,
        name: str,
        timeout: float,
        adopt: Adopt,
        current_epoch: Callable[[], int],
        connect: Connect = connect_tcp,
    ) -> None:
        self.links = [SentinelLink(a) for a in sentinels]
        self.password = password
        self.name = name.encode()
        self.timeout = timeout
        self.adopt = adopt
        self.current_epoch = current_epoch
        self.connect = connect
        self.limiter = RefreshLimiter()
        self._refresh_wake = trio.Event()
        self.refreshes: dict[str, int] = {}  # reason → refreshes asked for
        self.reports = 0

    # -- called by the proxy (never awaits) ---------------------------------------------------

    def refresh(self, reason: str) -> None:
        """Fetch the topology from every sentinel at once (rate-limited)."""
        kind = reason.split(":", 1)[0]
        self.refreshes[kind] = self.refreshes.get(kind, 0) + 1
        self.limiter.request(trio.current_time())
        self._refresh_wake.set()

    def report_soon(self) -> None:
        for link in self.links:
            link.report_now = True
            link.poke()

    # -- start-up ------------------------------------------------------------------------------

    async def fetch_all(self) -> Topology | None:
        """Ask every sentinel once, concurrently, each bounded by the timeout; the highest
        epoch wins. Sentinels that are down cost nothing; stopped ones cost the timeout."""
        found: list[Topology] = []

        async def one(link: SentinelLink) -> None:
            client = None
            try:
                with trio.fail_after(self.timeout):
                    client = await self._connect(link)
                    blob = await client.call(b"SG.TOPOLOGY")
                found.append(_decode(blob))
            except (OSError, ControlError, TopologyError, trio.TooSlowError) as exc:
                link.last_error = _describe(exc)
            finally:
                if client is not None:
                    await client.aclose()

        async with trio.open_nursery() as nursery:
            for link in self.links:
                nursery.start_soon(one, link)
        return max(found, key=lambda t: t.epoch, default=None)

    # -- the tasks -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for link in self.links:
                nursery.start_soon(self._subscription, link)
                nursery.start_soon(self._commands, link)
            nursery.start_soon(self._refresher)
            task_status.started()

    async def _connect(self, link: SentinelLink) -> ControlClient:
        return await self.connect(link.address, self.password)

    async def _offer(self, blob: Any, link: SentinelLink, how: str) -> None:
        try:
            topology = _decode(blob)
        except TopologyError as exc:
            log_event("sentinel_bad_topology", "warn", sentinel=str(link.address), reason=exc)
            return
        link.epoch = max(link.epoch, topology.epoch)
        if await self.adopt(topology, f"sentinel {link.address} ({how})"):
            self.report_soon()

    async def _subscription(self, link: SentinelLink) -> None:
        backoff = Backoff()
        while True:
            client = None
            try:
                with trio.fail_after(self.timeout):
                    client = await self._connect(link)
                    await client.stream.send_all(
                        b"*1\r\n$11\r\nSG.TOPOLOGY\r\n*2\r\n$9\r\nSUBSCRIBE\r\n$18\r\n"
                        + CHANNEL
                        + b"\r\n"
                    )
                    blob = await client.reply()
                    await client.reply()  # the subscribe confirmation
                if not link.subscribed:
                    log_event("sentinel_subscribed", sentinel=str(link.address))
                link.subscribed = True
                backoff.succeeded()
                await self._offer(blob, link, "fetch")
                while True:
                    push = await client.reply()
                    if (
                        isinstance(push, list)
                        and len(push) == 3
                        and push[0] == b"message"
                        and push[1] == CHANNEL
                    ):
                        await self._offer(push[2], link, "published")
            except (OSError, ControlError, trio.TooSlowError) as exc:
                reason = _describe(exc)
                if link.subscribed or reason != link.last_error:
                    log_event("sentinel_down", "warn", sentinel=str(link.address), reason=reason)
                link.subscribed = False
                link.last_error = reason
            finally:
                if client is not None:
                    with trio.CancelScope(shield=True):
                        await client.aclose()
            await trio.sleep(backoff.failed())

    async def _commands(self, link: SentinelLink) -> None:
        backoff = Backoff()
        while True:
            client = None
            try:
                with trio.fail_after(self.timeout):
                    client = await self._connect(link)
                link.commands_up = True
                backoff.succeeded()
                next_report = trio.current_time()
                while True:
                    if link.want_topology:
                        link.want_topology = False
                        with trio.fail_after(self.timeout):
                            blob = await client.call(b"SG.TOPOLOGY")
                        await self._offer(blob, link, "fetch")
                    if link.report_now or trio.current_time() >= next_report:
                        link.report_now = False
                        epoch = self.current_epoch()
                        with trio.fail_after(self.timeout):
                            theirs = await client.call(b"SG.PROXYEPOCH", self.name, b"%d" % epoch)
                        self.reports += 1
                        next_report = trio.current_time() + REPORT_INTERVAL
                        if isinstance(theirs, int):
                            link.epoch = max(link.epoch, theirs)
                            if theirs > self.current_epoch():
                                link.want_topology = True  # we missed a publication
                                continue
                    with trio.move_on_at(next_report):
                        await link.wake.wait()
                    link.wake = trio.Event()
            except (OSError, ControlError, trio.TooSlowError) as exc:
                link.commands_up = False
                link.last_error = _describe(exc)
            finally:
                if client is not None:
                    with trio.CancelScope(shield=True):
                        await client.aclose()
            await trio.sleep(backoff.failed())

    async def _refresher(self) -> None:
        while True:
            await self._refresh_wake.wait()
            self._refresh_wake = trio.Event()
            await trio.sleep_until(self.limiter.due_at(trio.current_time()))
            if self.limiter.take(trio.current_time()):
                for link in self.links:
                    link.want_topology = True
                    link.poke()


def _decode(blob: Any) -> Topology:
    if not isinstance(blob, bytes):
        raise TopologyError(f"expected a msgpack bulk string, got {type(blob).__name__}")
    return topology_from_wire(blob)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timeout"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__
