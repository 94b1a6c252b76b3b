"""A cluster of real processes for a fault scenario: shards, fault proxies, shardgate proxies.

``Cluster`` starts, for each ``ShardSpec``, a primary and its replicas (each in its own network
namespace when a ``Network`` is given), optionally a fault proxy on each replica's replication
link and one between the shardgate proxies and the primary, then the shardgate proxies with a
cluster config file. ``promote`` is what a sentinel will do (``REPLICAOF NO ONE`` on the chosen
replica, the others re-pointed, a new epoch written and ``CONFIG RELOAD`` on every proxy); the
sentinel scenarios replace it with real sentinels and keep everything else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import attrs
import redis

from shardgate.topology import NodeAddress, Shard, SlotRange, Topology
from tests.faults.measure import key_in
from tests.faults.netns import Host, Network
from tests.faults.processes import Service, Services, fault_proxy
from tests.procs import free_port, wait_until

SLOTS = 16384
SENTINEL_PORT = 26379  # Redis Sentinel's; used inside a namespace, which has its own ports


# A semi-synchronous shard: a write is answered once a replica has it (docs/replication.md).
SEMI = ("--sync-replicas", "1", "--sync-timeout-ms", "2000")


@attrs.frozen(slots=True, kw_only=True)
class ShardSpec:
    name: str
    replicas: int = 1
    node_args: tuple[str, ...] = ()  # for every node of the shard (a promoted replica too)
    durability: str = "async"  # how the checker classes this shard's writes
    replica_links: bool = False  # a fault proxy on every replica's replication link
    backend_link: bool = False  # a fault proxy between the shardgate proxies and the primary


@attrs.define
class ShardProcs:
    spec: ShardSpec
    primary: Service
    replicas: list[Service]
    slots: SlotRange
    links: dict[str, Service] = attrs.Factory(dict)  # replica name -> its replication link
    backend_link: Service | None = None

    @property
    def nodes(self) -> list[Service]:
        return [self.primary, *self.replicas]

    def routed_address(self) -> str:
        link = self.backend_link
        return link.address if link is not None else self.primary.address


def repl_info(node: Service) -> dict[str, object]:
    info: dict[str, object] = node.client().info("replication")
    return info


def link_up(replica: Service) -> bool:
    return repl_info(replica).get("master_link_status") == "up"


def repl_offset(node: Service) -> int:
    info = repl_info(node)
    return int(str(info.get("slave_repl_offset", info["master_repl_offset"])))


def dump(r: redis.Redis) -> dict[bytes, tuple[bytes, int]]:
    """Every key with its value and absolute expiry (ms), the write probe's keys left out."""
    keys: list[bytes] = list(r.keys("*"))  # type: ignore[arg-type]
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.get(k)
        pipe.pexpiretime(k)  # type: ignore[arg-type]
    values = pipe.execute()
    return {
        k: (values[2 * i], values[2 * i + 1])
        for i, k in enumerate(keys)
        if values[2 * i] is not None and not k.startswith(b"sg:probe:")
    }


def sync_stats(primary: Service) -> tuple[int, int]:
    """(full syncs, partial syncs) the primary has served."""
    stats = primary.client().info("stats")
    return int(stats["sync_full"]), int(stats["sync_partial_ok"])


class Cluster:
    def __init__(
        self,
        services: Services,
        specs: Sequence[ShardSpec],
        *,
        workdir: Path,
        network: Network | None = None,
        proxies: int = 1,
        proxy_args: Sequence[str] = (),
        proxy_hosts: Sequence[Host | None] = (),
        sentinels: int = 0,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 10000,
    ) -> None:
        self.services = services
        self.specs = list(specs)
        self.workdir = workdir
        self.network = network
        self.proxy_count = proxies
        self.proxy_args = list(proxy_args)
        self.proxy_hosts = list(proxy_hosts) or [None] * proxies
        self.shards: dict[str, ShardProcs] = {}
        self.proxies: list[Service] = []
        self.epoch = 1
        self.config = workdir / "cluster.toml"
        self.sentinel_count = sentinels
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.sentinels: list[Service] = []

    def _host(self, name: str) -> Host | None:
        return self.network.add_host(name) if self.network is not None else None

    def start(self) -> Cluster:
        n = len(self.specs)
        for i, spec in enumerate(self.specs):
            slots = SlotRange(i * SLOTS // n, (i + 1) * SLOTS // n - 1)
            pname = f"{spec.name}-n0"
            primary = self.services.add(
                Service(pname, ["node", *spec.node_args], host=self._host(pname))
            )
            shard = ShardProcs(spec, primary, [], slots)
            for j in range(1, spec.replicas + 1):
                rname = f"{spec.name}-n{j}"
                host = self._host(rname)
                upstream = primary.address
                if spec.replica_links:
                    link = self.services.add(fault_proxy(f"{rname}-link", upstream, host=host))
                    shard.links[rname] = link
                    upstream = link.address
                argv = ["node", "--replicaof", upstream, *spec.node_args]
                shard.replicas.append(self.services.add(Service(rname, argv, host=host)))
            if spec.backend_link:
                shard.backend_link = self.services.add(
                    fault_proxy(f"{spec.name}-backend-link", primary.address)
                )
            self.shards[spec.name] = shard
        for shard in self.shards.values():
            for replica in shard.replicas:
                wait_until(partial(link_up, replica), 15, f"{replica.name} linked")
        self.write_config()
        if self.sentinel_count:
            self._start_sentinels()
        for i in range(self.proxy_count):  # 0: a replication-only scenario
            argv = ["proxy", "--config", str(self.config), *self.proxy_args]
            if self.sentinels:
                # the file's topology (epoch 1) until the sentinels' newer one arrives
                argv += ["--sentinels", ",".join(s.address for s in self.sentinels)]
            self.proxies.append(
                self.services.add(Service(f"proxy{i}", argv, host=self.proxy_hosts[i]))
            )
        return self

    def _start_sentinels(self) -> None:
        """Sentinels watching every shard; each in its own namespace when there is a network."""
        hosts = [self._host(f"sentinel{i}") for i in range(self.sentinel_count)]
        # a namespace has its own port space: the Redis Sentinel port everywhere; on loopback
        # each needs a free one, known before any starts (they are each other's peers)
        ports = [SENTINEL_PORT if h is not None else free_port() for h in hosts]
        addresses = [f"{h.address if h else '127.0.0.1'}:{p}" for h, p in zip(hosts, ports)]
        for i, host in enumerate(hosts):
            path = self.workdir / f"sentinel{i}.toml"
            path.write_text(self._sentinel_toml(i, addresses))
            argv = ["sentinel", "run", "--config", str(path)]
            service = Service(f"sentinel{i}", argv, host=host, port=ports[i], listen_args=False)
            self.sentinels.append(self.services.add(service))

    def _sentinel_toml(self, index: int, addresses: list[str]) -> str:
        lines = [
            f'id = "sentinel{index}"',
            f'listen = "{addresses[index]}"',
            f"quorum = {len(addresses) // 2 + 1}",
            f"down_after_ms = {self.down_after_ms}",
            f"failover_timeout_ms = {self.failover_timeout_ms}",
            f'state_file = "{self.workdir / f"sentinel{index}.state"}"',
        ]
        for i, address in enumerate(addresses):
            if i != index:
                lines += ["", "[[peers]]", f'id = "sentinel{i}"', f'address = "{address}"']
        for name, shard in self.shards.items():
            lines += ["", "[[shards]]", f'name = "{name}"', f'primary = "{shard.primary.address}"']
            lines.append("replicas = [" + ", ".join(f'"{r.address}"' for r in shard.replicas) + "]")
            lines.append(f'slots = ["{shard.slots}"]')
        return "\n".join(lines) + "\n"

    def sentinel_primary(self, shard: str) -> str | None:
        """The shard's primary as the first sentinel that answers sees it (HOST:PORT)."""
        for sentinel in self.sentinels:
            if not sentinel.running or sentinel.paused:
                continue
            with contextlib.suppress(redis.RedisError):
                reply = sentinel.client(timeout=1).execute_command(
                    "SENTINEL", "get-master-addr-by-name", shard
                )
                if reply:
                    return f"{reply[0].decode()}:{int(reply[1])}"
        return None

    def follows_sentinel_primary(self, node: Service, shard: str, *, link: bool = True) -> bool:
        """``node`` replicates from the primary the sentinels name now (a later failover
        counts); with ``link``, its replication link is up too."""
        info = repl_info(node)
        return (
            info.get("role") == "slave"
            and f"{info.get('master_host')}:{info.get('master_port')}"
            == self.sentinel_primary(shard)
            and (not link or info.get("master_link_status") == "up")
        )

    def wait_failover(self, shard_name: str, timeout: float = 30.0) -> Service:
        """Wait until the sentinels name another primary; adopt it as the shard's primary."""
        shard = self.shards[shard_name]
        old = shard.primary
        wait_until(lambda: self.sentinel_primary(shard_name) not in (None, old.address),
                   timeout, f"failover of {shard_name}")  # fmt: skip
        address = self.sentinel_primary(shard_name)
        assert address is not None
        return self.adopt(shard_name, address)

    def adopt(self, shard_name: str, address: str) -> Service:
        """Make the node at ``address`` the shard's primary in our books (the others replicas)."""
        shard = self.shards[shard_name]
        new = next(n for n in shard.nodes if n.address == address)
        if new is not shard.primary:
            shard.replicas.remove(new)
            shard.replicas.append(shard.primary)
            shard.primary = new
        return new

    def adopt_sentinel_view(self) -> None:
        """Adopt the primaries the sentinels name now (after any further failover)."""
        for name in self.shards:
            if (address := self.sentinel_primary(name)) is not None:
                self.adopt(name, address)

    def topology(self) -> Topology:
        return Topology(
            self.epoch,
            tuple(
                Shard(
                    name,
                    NodeAddress.parse(shard.routed_address()),
                    tuple(NodeAddress.parse(r.address) for r in shard.replicas),
                    (shard.slots,),
                )
                for name, shard in self.shards.items()
            ),
        )

    def write_config(self) -> None:
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(self.topology().to_toml())
        tmp.replace(self.config)

    def durability(self) -> dict[str, str]:
        return {name: shard.spec.durability for name, shard in self.shards.items()}

    def primaries(self) -> dict[str, redis.Redis]:
        return {name: shard.primary.client(timeout=10) for name, shard in self.shards.items()}

    def probe_nodes(self) -> dict[str, list[tuple[str, Callable[[], redis.Redis]]]]:
        return {
            name: [(n.name, partial(n.client, timeout=0.5)) for n in shard.nodes]
            for name, shard in self.shards.items()
        }

    def proxy_client(self, index: int = 0, *, timeout: float = 5.0) -> Callable[[], redis.Redis]:
        proxy = self.proxies[index]
        return lambda: proxy.client(timeout=timeout)

    def tags_ready(self) -> dict[str, str]:
        """A hash tag per shard (keys ``{tag}:…`` land on it), once every proxy has written
        through every shard."""
        tags = {n: key_in((s.slots.start, s.slots.end), "tag") for n, s in self.shards.items()}
        for i in range(len(self.proxies)):
            r = self.proxy_client(i)()
            for tag in tags.values():
                wait_until(partial(r.set, f"{{{tag}}}:ready", 1), 15, "proxy ready")
        return tags

    def best_replica(self, shard: str) -> Service:
        """The replica a sentinel would promote: the highest replication offset."""
        candidates = []
        for r in self.shards[shard].replicas:
            with contextlib.suppress(redis.RedisError):
                candidates.append((repl_offset(r), r.name, r))
        assert candidates, f"no reachable replica in {shard}"
        return max(candidates)[2]

    def promote(self, shard_name: str, replica: Service) -> None:
        """Fail ``shard_name`` over to ``replica`` by hand, as a sentinel will."""
        shard = self.shards[shard_name]
        replica.client().execute_command("REPLICAOF", "NO", "ONE")
        old = shard.primary
        shard.replicas.remove(replica)
        shard.primary = replica
        shard.backend_link = None  # route straight to the new primary
        host, port = replica.address.rsplit(":", 1)
        for other in shard.replicas:
            if not other.running or other.paused:
                continue  # a sentinel re-points it when it is back
            with contextlib.suppress(redis.RedisError):  # cut off: the same, later
                other.client(timeout=1).execute_command("REPLICAOF", host, port)
        shard.replicas.append(old)  # it rejoins as a replica when it comes back
        self.epoch += 1
        self.write_config()
        for proxy in self.proxies:
            if proxy.running and not proxy.paused:
                proxy.client().execute_command("CONFIG", "RELOAD")

    def converged(self, shard_name: str) -> bool:
        """Every running replica of the shard has the primary's offset and key count."""
        shard = self.shards[shard_name]
        target = repl_offset(shard.primary)
        size = shard.primary.client().dbsize()
        return all(
            repl_offset(r) >= target and r.client().dbsize() == size
            for r in shard.replicas
            if r.running
        )


def semi_and_async_shards(node_args: Sequence[str] = ()) -> list[ShardSpec]:
    """The two shards the loss scenarios compare: ``semi`` (semi-sync) and ``async``, each a
    primary + 2 replicas, both nodes started with ``node_args`` too."""
    return [
        ShardSpec(name="semi", replicas=2, node_args=(*node_args, *SEMI), durability="semi-sync"),
        ShardSpec(name="async", replicas=2, node_args=tuple(node_args), durability="async"),
    ]


def semi_shard_under_sentinels(
    services: Services, workdir: Path, *, proxies: int = 1, **options: int
) -> Cluster:
    """The cluster most sentinel scenarios start from, started: one semi-sync shard ``semi``
    (primary + 2 replicas) watched by 3 sentinels, ``proxies`` proxies following them with a
    1 s request timeout. ``options``: ``down_after_ms``, ``failover_timeout_ms``."""
    return Cluster(
        services,
        [ShardSpec(name="semi", replicas=2, node_args=SEMI, durability="semi-sync")],
        workdir=workdir,
        proxies=proxies,
        sentinels=3,
        proxy_args=["--timeout-ms", "1000"],
        **options,
    ).start()
