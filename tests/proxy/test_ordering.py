from __future__ import annotations

import random

import pytest

from proxy import merge
from proxy.health import TRANSITIONS, Health, IllegalTransition, State
from proxy.ordering import Pending, ReplyQueue, RunPending


def test_replies_are_released_strictly_in_order() -> None:
    q = ReplyQueue()
    ps = [Pending(None, 0.0, 1.0) for _ in range(4)]
    for p in ps:
        q.append(p)
    assert ps[2].complete(0, b"+c\r\n")
    assert q.take_ready() == []
    assert ps[0].complete(0, b"+a\r\n")
    assert q.take_ready() == [b"+a\r\n"]
    assert ps[1].fail(b"-ERR timeout\r\n")
    assert q.take_ready() == [b"-ERR timeout\r\n", b"+c\r\n"]
    assert len(q) == 1


def test_first_outcome_wins_late_reply_dropped() -> None:
    p = Pending(None, 0.0, 1.0)
    assert p.fail(b"-ERR backend x timeout\r\n")
    assert not p.complete(0, b"+late\r\n")
    assert p.reply == b"-ERR backend x timeout\r\n"
    assert not p.fail(b"-ERR other\r\n")


def test_split_merges_when_all_parts_arrive_in_any_order() -> None:
    p = Pending(None, 0.0, 1.0, 3, merge.total)
    assert not p.complete(2, b":1\r\n")
    assert not p.complete(0, b":2\r\n")
    assert p.complete(1, b":3\r\n")
    assert p.reply == b":6\r\n"


def test_split_failure_is_never_a_partial_success() -> None:
    p = Pending(None, 0.0, 1.0, 2, merge.all_ok)
    assert not p.complete(0, b"+OK\r\n")
    assert p.fail(b"-ERR backend y timeout\r\n")
    assert not p.complete(1, b"+OK\r\n")
    assert p.reply == b"-ERR backend y timeout\r\n"


def test_random_completion_order_keeps_request_order() -> None:
    rng = random.Random(7)
    q = ReplyQueue()
    ps = []
    for i in range(500):
        p = Pending.done(None, b":%d\r\n" % i) if i % 7 == 0 else Pending(None, 0.0, 1.0)
        ps.append(p)
        q.append(p)
    order = [i for i in range(500) if i % 7]
    rng.shuffle(order)
    out: list[bytes] = []
    for i in order:
        if i % 11 == 0:
            ps[i].fail(b":%d\r\n" % i)
        else:
            ps[i].complete(0, b":%d\r\n" % i)
        out.extend(q.take_ready())
    out.extend(q.take_ready())
    assert out == [b":%d\r\n" % i for i in range(500)]


def test_a_run_answers_each_request_alone_and_releases_them_in_order() -> None:
    q = ReplyQueue()
    before = Pending(None, 0.0, 1.0)
    run = RunPending(None, 0.0, 1.0, 4)
    q.append(before)
    q.append_run(run)
    assert len(q) == 5  # backpressure counts every request of a run
    assert not run.complete(3, b"$1\r\nd\r\n")
    assert run.fail_part(1, b"-ERR backend b timeout\r\n")  # one request fails, alone
    assert not run.fail_part(1, b"-ERR again\r\n")  # its first outcome stands
    assert not run.complete(1, b"$4\r\nlate\r\n")  # a late reply is dropped
    assert not run.complete(0, b"$1\r\na\r\n")
    assert q.take_ready() == []
    assert run.complete(2, b"$-1\r\n")
    assert q.take_ready() == []  # the request before the run is not answered yet
    assert before.complete(0, b"+OK\r\n")
    assert q.take_ready() == [
        b"+OK\r\n",
        b"$1\r\na\r\n-ERR backend b timeout\r\n$-1\r\n$1\r\nd\r\n",
    ]
    assert len(q) == 0


def test_failing_a_part_of_a_split_fails_the_whole_reply() -> None:
    p = Pending(None, 0.0, 1.0, 2, merge.all_ok)
    assert p.complete(0, b"+OK\r\n") is False
    assert p.fail_part(1, b"-ERR backend y timeout\r\n")
    assert p.reply == b"-ERR backend y timeout\r\n"


def test_fail_all() -> None:
    q = ReplyQueue()
    a, b = Pending(None, 0, 1), Pending(None, 0, 1)
    a.complete(0, b"+OK\r\n")
    q.append(a)
    q.append(b)
    q.fail_all(b"-ERR gone\r\n")
    assert q.take_ready() == [b"+OK\r\n", b"-ERR gone\r\n"]


def test_health_state_machine() -> None:
    h = Health(fail_after=3, interval=1.0)
    assert h.state is State.DOWN and h.next_attempt_at() == 0.0
    h.attempt(10.0)
    h.connected(10.1)
    assert h.state is State.UP
    assert not h.timed_out(2)
    h.replied()
    assert not h.timed_out(2)
    assert h.timed_out(1)
    h.failed(12.0, "3 consecutive timeouts")
    assert h.state is State.DOWN
    assert h.next_attempt_at() == 11.0  # one attempt per interval, counted from the last start
    with pytest.raises(IllegalTransition):
        h.attempt(10.5)
    with pytest.raises(IllegalTransition):
        h.connected(12.0)  # DOWN -> UP must go through CONNECTING
    h.attempt(12.0)
    h.failed(12.5, "refused")
    assert h.next_attempt_at() == 13.0
    h.retire(12.6)
    with pytest.raises(IllegalTransition):
        h.attempt(20.0)
    assert all(State.RETIRED in TRANSITIONS[s] for s in State if s is not State.RETIRED)
