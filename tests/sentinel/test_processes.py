"""Sentinels as real processes watching real managed store nodes."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import redis
from redis.sentinel import Sentinel

from shardgate.lab_procs import free_ports
from tests.procs import (
    Proc,
    running,
    wait_until,
)

pytestmark = pytest.mark.slow


def role(port: int) -> str:
    return str(redis.Redis(port=port, socket_timeout=1).info("replication")["shardgate_role"])


@attrs.define
class Cluster:
    tmp: Path
    stack: contextlib.ExitStack
    node_ports: list[int]
    sentinel_ports: list[int]
    node_args: tuple[str, ...] = ()
    nodes: dict[int, Proc] = attrs.field(factory=dict)
    sentinels: dict[int, Proc] = attrs.field(factory=dict)

    def start_node(self, port: int) -> Proc:
        args = ["node", "--port", str(port), "--managed", *self.node_args]
        proc = self.stack.enter_context(running(args))
        self.nodes[port] = proc
        return proc

    def start_sentinel(self, i: int) -> Proc:
        proc = self.stack.enter_context(
            running(["sentinel", "run", "--config", str(self.tmp / f"s{i}.toml")])
        )
        self.sentinels[i] = proc
        return proc

    def kill(self, proc: Proc) -> None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.popen.wait(5)

    def primaries(self) -> list[int]:
        return [p for p in self.node_ports if p in self.nodes and self.nodes[p].popen.poll() is None
                and role(p) == "primary"]  # fmt: skip

    def primary(self) -> int:
        primaries = self.primaries()
        assert len(primaries) == 1, primaries
        return primaries[0]

    def sentinel(self) -> redis.Redis:
        alive = [i for i, p in self.sentinels.items() if p.popen.poll() is None]
        return redis.Redis(port=self.sentinel_ports[alive[0]], socket_timeout=2)


@contextlib.contextmanager
def cluster(
    tmp_path: Path,
    *,
    replicas: int = 2,
    sentinels: int = 3,
    quorum: int = 2,
    down_after_ms: int = 1000,
    priorities: tuple[int, ...] = (),
    node_args: tuple[str, ...] = (),
) -> Iterator[Cluster]:
    with contextlib.ExitStack() as stack:
        # All at once, so distinct: one at a time, the OS may hand the same port out twice.
        ports = free_ports(1 + replicas + sentinels)
        node_ports, sentinel_ports = ports[: 1 + replicas], ports[1 + replicas :]
        c = Cluster(tmp_path, stack, node_ports, sentinel_ports, node_args)
        for port in node_ports:
            c.start_node(port)
        reps = ", ".join(
            f'{{ address = "127.0.0.1:{p}", priority = {priorities[i] if i < len(priorities) else 100} }}'
            for i, p in enumerate(node_ports[1:])
        )
        for i, port in enumerate(sentinel_ports):
            peers = "".join(
                f'[[peers]]\nid = "s{j}"\naddress = "127.0.0.1:{q}"\n'
                for j, q in enumerate(sentinel_ports)
                if j != i
            )
            (tmp_path / f"s{i}.toml").write_text(
                f'id = "s{i}"\nlisten = "127.0.0.1:{port}"\nquorum = {quorum}\n'
                f"down_after_ms = {down_after_ms}\nfailover_timeout_ms = 3000\n{peers}"
                f'[[shards]]\nname = "shard-0"\nprimary = "127.0.0.1:{node_ports[0]}"\n'
                f"replicas = [{reps}]\n"
            )
        for i in range(sentinels):
            c.start_sentinel(i)
        try:
            _wait_ready(c)
            yield c
        except BaseException:
            for i, proc in c.sentinels.items():  # the sentinels' own account of what happened
                print(f"--- sentinel s{i}\n" + "".join(proc.output[-60:]))
            raise


def _wait_ready(c: Cluster) -> None:
    wait_until(lambda: role(c.node_ports[0]) == "primary", 10, "primary assigned")
    for p in c.node_ports[1:]:
        wait_until(
            lambda p=p: redis.Redis(port=p).info("replication")["master_link_status"] == "up",
            10,
            "replicas linked",
        )


def test_primary_killed_fails_over_and_the_old_primary_rejoins(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        old = c.node_ports[0]
        r = redis.Redis(port=old)
        for i in range(100):
            r.set(f"k{i}", i)
        redis.Redis(port=old).execute_command("WAIT", 2, 1000)
        c.kill(c.nodes[old])
        took = wait_until(
            lambda: any(role(p) == "primary" for p in c.node_ports[1:]), 10, "failover"
        )
        assert took < 3.0
        new = c.primary()
        assert redis.Redis(port=new).get("k99") == b"99"
        c.start_node(old)
        rejoin = wait_until(
            lambda: (
                role(old) == "replica"
                and redis.Redis(port=old).info("replication")["master_port"] == new
                and redis.Redis(port=old).get("k99") == b"99"
            ),
            10,
            "old primary rejoins as a replica",
        )
        assert rejoin < 5.0  # Redis Sentinel needs ~10 s to reconfigure a returning primary
        with pytest.raises(redis.ReadOnlyError):
            redis.Redis(port=old).set("x", "1")
        history = c.sentinel().execute_command("SG.HISTORY", "json")
        assert b'"outcome": "done"' in history


def test_redis_py_sentinel_client_follows_a_failover(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        s = Sentinel([("127.0.0.1", p) for p in c.sentinel_ports], socket_timeout=1)
        master = s.master_for("shard-0", socket_timeout=1)
        master.set("a", "1")
        assert s.discover_master("shard-0") == ("127.0.0.1", c.node_ports[0])
        c.kill(c.nodes[c.node_ports[0]])
        wait_until(lambda: s.discover_master("shard-0")[1] != c.node_ports[0], 10, "new master")
        wait_until(lambda: master.set("b", "2"), 10, "writes through the Sentinel client")
        assert master.get("a") == b"1"
        assert len(s.discover_slaves("shard-0")) >= 1


def test_manual_failover_under_load_loses_no_acknowledged_write(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        s = Sentinel([("127.0.0.1", p) for p in c.sentinel_ports], socket_timeout=1)
        acked: list[str] = []
        stop = threading.Event()

        def writer(n: int) -> None:
            master = s.master_for("shard-0", socket_timeout=2)
            i = 0
            while not stop.is_set():
                key = f"w{n}:{i}"
                try:
                    master.set(key, i)
                    acked.append(key)
                except redis.RedisError:
                    time.sleep(0.01)
                i += 1

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        before = c.primary()
        assert c.sentinel().execute_command("SENTINEL", "FAILOVER", "shard-0")
        wait_until(
            lambda: c.primaries() not in ([], [before]) and len(c.primaries()) == 1, 5, "switch"
        )
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(10)
        new = redis.Redis(port=c.primary())
        pipe = new.pipeline(transaction=False)
        for key in acked:
            pipe.exists(key)
        assert len(acked) > 100
        assert sum(pipe.execute()) == len(acked)
        history = c.sentinel().execute_command("SG.HISTORY", "json")
        assert b'"manual": true' in history


def test_a_minority_of_sentinels_cannot_fail_over(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        c.kill(c.sentinels[1])
        c.kill(c.sentinels[2])
        c.kill(c.nodes[c.node_ports[0]])
        time.sleep(4)
        assert all(role(p) == "replica" for p in c.node_ports[1:])


def test_quorum_larger_than_the_sentinels_never_fails_over(tmp_path: Path) -> None:
    with cluster(tmp_path, quorum=4) as c:
        with pytest.raises(redis.ResponseError, match="NOQUORUM"):
            c.sentinel().execute_command("SENTINEL", "CKQUORUM", "shard-0")
        c.kill(c.nodes[c.node_ports[0]])
        time.sleep(4)
        assert all(role(p) == "replica" for p in c.node_ports[1:])


def test_priority_zero_is_never_promoted(tmp_path: Path) -> None:
    with cluster(tmp_path, priorities=(0, 100)) as c:
        c.kill(c.nodes[c.node_ports[0]])
        wait_until(lambda: role(c.node_ports[2]) == "primary", 10, "the eligible replica promoted")
        assert role(c.node_ports[1]) == "replica"


def test_a_restarted_sentinel_adopts_the_newest_epoch(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        c.kill(c.sentinels[2])
        c.kill(c.nodes[c.node_ports[0]])
        try:
            wait_until(lambda: any(role(p) == "primary" for p in c.node_ports[1:]), 10, "failover")
        except AssertionError:
            for i, p in c.sentinels.items():
                print(f"--- sentinel {i}\n" + "".join(p.output[-40:]))
            raise
        new_epoch = int(redis.Redis(port=c.primary()).info("replication")["shardgate_epoch"])
        c.start_sentinel(2)
        r = redis.Redis(port=c.sentinel_ports[2])
        wait_until(
            lambda: r.info()["shardgate_topology_epoch"] == new_epoch,
            10,
            "restarted sentinel converges",
        )
        addr = r.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "shard-0")
        assert int(addr[1]) == c.primary()


def _history(c: Cluster) -> list[dict[str, object]]:
    import json

    return list(json.loads(c.sentinel().execute_command("SG.HISTORY", "json")))


def test_thirty_kills_in_a_row_give_exactly_one_failover_each(tmp_path: Path) -> None:
    """Redis Sentinel at down-after 1000 ms sometimes failed a freshly promoted primary over
    again because a health check raced the down timer; here every kill is one failover."""
    kills = int(os.environ.get("SHARDGATE_KILLS", "30"))
    with cluster(tmp_path, replicas=1) as c:
        epochs: list[int] = []
        for n in range(kills):
            victim = c.primary()
            other = next(p for p in c.node_ports if p != victim)
            c.kill(c.nodes[victim])
            wait_until(lambda other=other: role(other) == "primary", 10, f"failover {n + 1}")
            epochs.append(int(redis.Redis(port=other).info("replication")["shardgate_epoch"]))
            c.start_node(victim)
            wait_until(
                lambda v=victim, o=other: (
                    role(v) == "replica"
                    and redis.Redis(port=v).info("replication")["master_link_status"] == "up"
                    and redis.Redis(port=v).info("replication")["master_port"] == o
                ),
                10,
                f"rejoin {n + 1}",
            )
        time.sleep(1.5)  # nothing else may happen once things are calm
        done = [h for h in _history(c) if h["outcome"] == "done"]
        assert len(done) == kills, [(h["epoch"], h["old_primary"]) for h in done]
        assert epochs == sorted(set(epochs)), epochs  # strictly increasing
        assert len(c.primaries()) == 1


def test_hostile_input_never_takes_a_sentinel_down(tmp_path: Path) -> None:
    import socket as _socket

    with cluster(tmp_path, replicas=1, sentinels=1, quorum=1) as c:
        port = c.sentinel_ports[0]
        for payload in (
            b"*1\r\n$-7\r\n",
            b"*abc\r\n",
            b"\x00\xff" * 1000,
            b"*2\r\n$11\r\nSG.SENTINEL\r\n$5\r\nhello\r\n",  # not msgpack
            b"*2\r\n$11\r\nSG.SENTINEL\r\n$3\r\n\x93\x01\x02\r\n",  # msgpack, not a message
            b"*3\r\n$13\r\nSG.PROXYEPOCH\r\n$1\r\np\r\n$3\r\nabc\r\n",
            b"*2\r\n$8\r\nSENTINEL\r\n$7\r\nunknown\r\n",
            b"SUBSCRIBE +sdown\r\n",  # then the client vanishes
            b"*1\r\n$999999999999\r\n",
        ):
            with _socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(payload)
                s.settimeout(0.3)
                with contextlib.suppress(TimeoutError, ConnectionResetError):
                    s.recv(65536)
        r = redis.Redis(port=port, socket_timeout=2)
        assert r.ping()
        with pytest.raises(redis.ResponseError):
            r.execute_command("SG.SENTINEL", b"garbage")
        assert (
            r.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "shard-0")[1]
            == str(c.node_ports[0]).encode()
        )


def test_a_paused_primary_takes_no_writes_after_it_resumes(tmp_path: Path) -> None:
    """SIGSTOP the primary until the sentinels fail it over, then SIGCONT it: with
    min-replicas it refuses writes at once (its replicas went to the new primary), and the
    sentinels make it a replica within a ping period."""
    lag = ("--min-replicas-to-write", "1", "--min-replicas-max-lag", "1")
    with cluster(tmp_path, node_args=lag) as c:
        old = c.node_ports[0]
        direct = redis.Redis(port=old, socket_timeout=2)
        assert direct.set("before", "1")
        assert direct.execute_command("WAIT", 2, 2000) == 2  # async: make it durable first
        os.kill(c.nodes[old].pid, signal.SIGSTOP)
        try:
            wait_until(lambda: any(role(p) == "primary" for p in c.node_ports[1:]), 10, "failover")
        finally:
            os.kill(c.nodes[old].pid, signal.SIGCONT)
        accepted = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                direct.set("after-resume", "x")
                accepted.append(time.monotonic())
            except redis.ReadOnlyError:
                pass  # already demoted (or fenced)
            except redis.ResponseError as exc:
                assert "NOREPLICAS" in str(exc)
            time.sleep(0.01)
        assert accepted == []
        assert role(old) == "replica"
        new = redis.Redis(port=c.primary())
        assert new.get("after-resume") is None and new.get("before") == b"1"


def test_a_candidate_stopped_mid_election_is_replaced_under_a_higher_epoch(tmp_path: Path) -> None:
    """The first sentinel to ask for votes is frozen (SIGSTOP) the moment it asks: its peers
    may have voted for it, but it never acts. Another sentinel must finish the failover under a
    higher epoch, and the frozen one, once resumed, must adopt that topology, not undo it."""
    import socket as _socket

    with cluster(tmp_path) as c:
        watchers = []
        for port in c.sentinel_ports:
            s = _socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"SUBSCRIBE +try-failover\r\n")
            watchers.append(s)
        for s in watchers:
            s.recv(4096)  # the subscribe confirmation
        c.kill(c.nodes[c.node_ports[0]])
        import select as _select

        ready, _, _ = _select.select(watchers, [], [], 10)
        assert ready, "nobody tried to fail over"
        frozen = watchers.index(ready[0])
        os.kill(c.sentinels[frozen].pid, signal.SIGSTOP)
        asked = ready[0].recv(4096).decode("utf-8", "replace")
        frozen_epoch = int(asked.split("epoch=")[1].split()[0])
        try:
            wait_until(lambda: any(role(p) == "primary" for p in c.node_ports[1:]), 15, "failover")
            new = c.primary()
            epoch = int(redis.Redis(port=new).info("replication")["shardgate_epoch"])
        finally:
            os.kill(c.sentinels[frozen].pid, signal.SIGCONT)
        r = redis.Redis(port=c.sentinel_ports[frozen], socket_timeout=2)
        wait_until(
            lambda: r.info()["shardgate_topology_epoch"] >= epoch, 10, "frozen one converges"
        )
        assert c.primary() == new  # it did not undo the failover
        done = [h for h in _history(c) if h["outcome"] == "done"]
        print(f"frozen s{frozen}; epoch {epoch}; done {[(h['epoch'], h['leader']) for h in done]}")
        assert done[-1]["epoch"] == epoch
        # Someone else finished it, under the frozen candidate's epoch (a rival candidate that
        # won that election) or a higher one (a retry once the votes for it came to nothing).
        assert epoch >= frozen_epoch
        if done[-1]["leader"] == f"s{frozen}":
            # The SIGSTOP landed after it had already finished (a race of a millisecond or
            # two): then it must be the only failover, with nothing left for others to do.
            assert len(done) == 1 and epoch == frozen_epoch
        for s in watchers:
            s.close()
