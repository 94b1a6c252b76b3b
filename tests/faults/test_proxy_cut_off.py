"""Scenario 10: a proxy restarted while cut off from the sentinels.

Every node, sentinel and proxy is a host of its own (network namespaces). One shard (primary
+ 2 replicas), 3 sentinels. The primary is ``kill -9``ed first, so the sentinels hold epoch 2+
and the ``cluster.toml`` written at the start (epoch 1, naming the old primary) is stale. Two
proxies follow the sentinels: ``bare`` with ``--sentinels`` only, ``filed`` with the stale
``--config`` as well (the file is "only a starting point", ``docs/proxy.md``). Both serve; then
they are restarted:

1. cut off from every other host (sentinels and nodes; the test process still reaches them);
2. cut off from the sentinels only — they reach every node;
3. healed.

Pass: in 1 and 2 neither proxy ever answers a key command with a value or an OK — ``bare``
answers ``-CLUSTERDOWN no topology yet: waiting for the sentinels``, ``filed`` routes by its
epoch-1 file and gets an error (its old primary is unreachable in 1; in 2 the nodes, which hold
a newer epoch, refuse its ``SG.FENCE 1`` with ``-STALE``, so it never uses them), and none of
the writes tried landed on any node; both answer PING; once healed both serve within a few
seconds (the sentinel links' reconnect backoff is at most 2 s) at the sentinels' epoch.
"""

from __future__ import annotations

import collections
import time
from functools import partial
from pathlib import Path

import pytest
import redis
import trio

from tests.faults import netns
from tests.faults.cluster import Cluster, ShardSpec, repl_info, wait_until
from tests.faults.processes import Service, Services, in_thread

pytestmark = pytest.mark.faults

TIMEOUT_MS = 500
PROBE_S = 3.0


def answers(proxy: Service, seconds: float, tag: str) -> collections.Counter[str]:
    """SET and GET of fresh keys through ``proxy`` for ``seconds``: every reply, counted by
    kind (``OK``/value, or the error's first words)."""
    r = proxy.client(timeout=TIMEOUT_MS / 1000 + 2)
    seen: collections.Counter[str] = collections.Counter()
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        i += 1
        key = f"cut:{tag}:{i}"
        for op in (partial(r.set, key, 1), partial(r.get, key)):
            try:
                reply = op()
                seen[f"reply {reply!r}"] += 1
            except redis.ResponseError as exc:
                # (redis-py drops the error code into the class: ClusterDownError, …) the
                # backend's address varies: keep the words that say what happened
                words = [w for w in str(exc).split()[:6] if not w[0].isdigit()]
                seen[f"{type(exc).__name__}: {' '.join(words)}"] += 1
            except redis.RedisError as exc:
                seen[f"client {type(exc).__name__}"] += 1
        time.sleep(0.02)
    return seen


def served(proxy: Service) -> bool:
    r = proxy.client(timeout=2)
    return bool(r.set("cut:healed", 1))


def backend_errors(proxy: Service) -> list[str]:
    """Each backend connection's last error, from the proxy's INFO."""
    info = proxy.client(timeout=2).info("backends")
    return sorted({str(b.get("last_error")) for b in info.values() if isinstance(b, dict)})


def epoch(proxy: Service) -> int:
    return int(proxy.client(timeout=2).info("topology")["epoch"])


async def test_a_proxy_restarted_without_sentinels_never_guesses(
    procs: Services, tmp_path: Path, network: netns.Network
) -> None:
    def body() -> None:
        cluster = Cluster(
            procs,
            [ShardSpec(name="s", replicas=2)],
            workdir=tmp_path,
            network=network,
            proxies=0,
            sentinels=3,
        ).start()
        shard = cluster.shards["s"]
        old = shard.primary
        old.kill()
        new = cluster.wait_failover("s", 30)
        old.restart()
        wait_until(lambda: repl_info(old).get("master_port") == new.port, 30, "old rejoins")
        sentinels = ",".join(s.address for s in cluster.sentinels)
        common = ["--sentinels", sentinels, "--timeout-ms", str(TIMEOUT_MS)]
        proxies = {
            "bare": Service("bare", ["proxy", *common], host=network.add_host("bare")),
            "filed": Service(
                "filed",
                ["proxy", "--config", str(cluster.config), *common],
                host=network.add_host("filed"),
            ),
        }
        for proxy in proxies.values():
            procs.add(proxy)
            wait_until(partial(served, proxy), 15, f"{proxy.name} serves")
        current = epoch(proxies["bare"])
        assert current >= 2 and "epoch = 1" in cluster.config.read_text()
        proxy_hosts = [p.host for p in proxies.values() if p.host is not None]
        sentinel_hosts = [s.host for s in cluster.sentinels if s.host is not None]
        others = [h for h in network.hosts.values() if h not in proxy_hosts and h.index != 0]
        phases = {
            "cut off from everything": others,
            "cut off from the sentinels only": sentinel_hosts,
        }
        seen: dict[tuple[str, str], collections.Counter[str]] = {}
        epochs: dict[tuple[str, str], int] = {}
        backends: dict[tuple[str, str], list[str]] = {}
        for phase, far_side in phases.items():
            network.partition(proxy_hosts, far_side)
            for name, proxy in proxies.items():
                proxy.restart()
                assert proxy.client(timeout=2).ping()
                epochs[(phase, name)] = epoch(proxy)
                seen[(phase, name)] = answers(proxy, PROBE_S, f"{phase[:12]}-{name}")
                backends[(phase, name)] = backend_errors(proxy)
            network.heal()
        healed = time.monotonic()
        took = {}
        for name, proxy in proxies.items():
            wait_until(partial(served, proxy), 30, f"{name} serves once healed")
            took[name] = time.monotonic() - healed
            assert epoch(proxy) == current
        # no write tried while cut off landed anywhere
        landed = {node.name: len(node.client().keys("cut:*:*")) for node in shard.nodes}
        print(
            f"scenario 10 (proxies restarted while cut off from the sentinels, sentinels at "
            f"epoch {current}, cluster.toml at epoch 1): "
            + "; ".join(
                f"{name} {phase}: epoch {epochs[(phase, name)]}, {dict(seen[(phase, name)])}"
                + (
                    f", backend last errors {backends[(phase, name)]}"
                    if backends[(phase, name)]
                    else ""
                )
                for phase, name in seen
            )
            + "; serving again "
            + ", ".join(f"{n} {t:.2f}s" for n, t in took.items())
            + f" after the heal; keys landed on nodes: {landed}"
        )
        for (phase, name), kinds in seen.items():
            assert not [k for k in kinds if k.startswith("reply")], (phase, name, kinds)
            if name == "bare":
                assert set(kinds) == {"ClusterDownError: no topology yet: waiting for the"}, kinds
                assert epochs[(phase, name)] == 0
        assert not any(landed.values()), landed

    with trio.fail_after(180):
        await in_thread(body)
        print(procs.check_survivors())  # every process the test did not end
