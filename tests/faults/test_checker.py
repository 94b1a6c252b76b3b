"""The checker holds a cluster to exactly what was acknowledged: a real node, hand-made logs."""

from __future__ import annotations

import threading
import time

import pytest
import redis
import trio

from shardgate.topology import NodeAddress, Topology
from tests.faults.processes import Service, Services, in_thread
from tests.faults.workload import Ack, WriteProbe, Writer, check


def writer_with(log_acks: list[Ack], incr: dict[bytes, int], deleted: set[bytes]) -> Writer:
    w = Writer("t", lambda: redis.Redis(), threading.Event())
    w.log.acks = log_acks
    w.log.incr_acked.update(incr)
    w.log.del_tried = deleted
    return w


async def test_check_reports_each_kind_of_loss(procs: Services) -> None:
    def body() -> None:
        node = procs.add(Service("n", ["node"]))
        r = node.client()
        now = time.monotonic()
        r.set("kept", "v1")
        r.set("changed", "other")  # acknowledged as v2, now something else: lost
        r.set("undeleted", "x")  # its DEL was acknowledged: a delete undone
        r.set("c1", 3)  # 5 INCRs acknowledged: 2 lost
        r.set("c2", 9)  # more than acknowledged (an INCR that errored was applied): fine
        acks = [
            Ack("set", b"kept", b"v1", now),
            Ack("set", b"changed", b"v2", now + 1),
            Ack("set", b"missing", b"v3", now + 2),
            Ack("set", b"undeleted", b"x", now),
            Ack("del", b"undeleted", b"", now),
            Ack("set", b"gone-on-purpose", b"y", now),  # its DEL errored: not judged
        ]
        w = writer_with(acks, {b"c1": 5, b"c2": 7}, {b"undeleted", b"gone-on-purpose"})
        topology = Topology.even([NodeAddress("127.0.0.1", node.port)])
        report = check([w], topology, {"shard0": r}, {"shard0": "async"})
        assert report.lost[("async", "set")] == 2
        assert report.lost[("async", "del")] == 1 and report.resurrected == 1
        assert report.lost[("async", "incr")] == 2
        assert report.acked[("async", "set")] == 5 and report.acked[("async", "incr")] == 12
        assert report.lost_set_acked_at == [now + 1, now + 2]
        assert "async: lost 5 of" in report.summary()

    with trio.fail_after(30):
        await in_thread(body)


def test_split_brain_is_the_longest_run_of_rounds_with_two_writable_nodes() -> None:
    probe = WriteProbe({}, threading.Event(), interval=0.1)
    rounds: list[tuple[float, str, dict[str, bool | None]]] = [
        (0.0, "s", {"a": True, "b": False}),
        (0.1, "s", {"a": True, "b": True}),
        (0.2, "s", {"a": True, "b": True}),
        (0.3, "s", {"a": None, "b": True}),  # a unreachable: not counted as writable
        (0.4, "s", {"a": True, "b": True}),
        (0.4, "t", {"x": True, "y": False}),
    ]
    probe.rounds = rounds
    assert probe.split_brain() == {"s": pytest.approx(0.2)}
