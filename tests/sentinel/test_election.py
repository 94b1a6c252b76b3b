"""Votes, candidacies and attempt timing; a property test: never two leaders in one epoch."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel.election import (
    AttemptTimer,
    Elector,
    majority,
    max_backoff_ms,
    votes_needed,
)
from sentinel.messages import VoteReply, VoteRequest
from sentinel.state import PersistedState, Vote, decode_state, encode_state


def request(sender: str, epoch: int, topology_epoch: int = 1) -> VoteRequest:
    return VoteRequest(sender, epoch, "s0", topology_epoch)


def test_first_come_first_served_once_per_epoch() -> None:
    e = Elector("s3", current_epoch=1)
    reply, changed = e.handle_request(request("s1", 2), topology_epoch=1)
    assert (reply.leader, reply.epoch, reply.current_epoch, changed) == ("s1", 2, 2, True)
    reply, changed = e.handle_request(request("s2", 2), topology_epoch=1)
    assert (reply.leader, changed) == ("s1", False)  # s2 learns whom we voted for
    reply, changed = e.handle_request(request("s1", 2), topology_epoch=1)
    assert (reply.leader, changed) == ("s1", False)  # a duplicate gets the same answer


def test_never_votes_in_a_lower_epoch() -> None:
    e = Elector("s3", current_epoch=5)
    reply, changed = e.handle_request(request("s1", 4), topology_epoch=1)
    assert (reply.leader, reply.current_epoch, changed) == (None, 5, False)
    assert e.vote is None


def test_refuses_a_candidate_with_an_older_topology_but_learns_the_epoch() -> None:
    e = Elector("s3", current_epoch=2)
    reply, changed = e.handle_request(request("s1", 3, topology_epoch=1), topology_epoch=2)
    assert (reply.leader, changed, e.current_epoch, e.vote) == (None, True, 3, None)


def test_a_candidate_votes_for_itself_under_a_new_epoch() -> None:
    e = Elector("s1", current_epoch=4)
    cand, req = e.start_candidacy("s0", topology_epoch=3, now=100, deadline_ms=3100)
    assert (req.epoch, req.sender, req.topology_epoch) == (5, "s1", 3)
    assert e.vote == Vote(5, "s1", "s0") and e.voted_for(5) == "s1"
    assert cand.granted() == 1 and not cand.elected(2)
    cand.on_reply(VoteReply("s2", 5, "s1", 5))
    cand.on_reply(VoteReply("s3", 4, "s1", 5))  # an answer about another epoch: ignored
    assert cand.elected(2) and cand.granted() == 2
    assert cand.votes() == (("s1", "s1"), ("s2", "s1"))
    # Votes from sentinels that are not members do not count.
    assert cand.granted(frozenset({"s1", "s3"})) == 1
    assert not cand.expired(3099) and cand.expired(3100)


def test_restart_never_votes_twice_in_an_epoch() -> None:
    e = Elector("s3", current_epoch=1)
    e.handle_request(request("s1", 2), topology_epoch=1)
    saved = encode_state(PersistedState(e.current_epoch, e.vote))
    loaded = decode_state(saved)
    again = Elector("s3", loaded.current_epoch, loaded.vote)
    reply, _ = again.handle_request(request("s2", 2), topology_epoch=1)
    assert reply.leader == "s1"
    reply, _ = again.handle_request(request("s2", 3), topology_epoch=1)
    assert reply.leader == "s2"


def test_votes_needed_is_a_majority_of_all_and_at_least_the_quorum() -> None:
    assert [majority(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    assert votes_needed(sentinels=5, quorum=2) == 3
    assert votes_needed(sentinels=3, quorum=3) == 3
    assert votes_needed(sentinels=3, quorum=4) == 4  # unreachable: never fails over


class Seq:
    def __init__(self, *values: int) -> None:
        self.values = list(values)

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        return self.values.pop(0)


def test_attempt_timer_backoff_cooldown_and_recovery() -> None:
    t = AttemptTimer(Seq(70, 30, 10), max_backoff_ms=200, failover_timeout_ms=3000)
    t.on_odown("s0", 1000)
    assert t.not_before("s0") == 1070 and not t.ready("s0", 1069) and t.ready("s0", 1070)
    t.on_odown("s0", 1050)  # a pending back-off stands
    assert t.not_before("s0") == 1070
    t.cool_down("s0", 4070)  # the attempt failed
    assert t.not_before("s0") == 4070 + 3000 + 30
    t.on_recovered("s0", 5000)  # a running cool-down survives a recovery
    assert t.not_before("s0") == 7100
    t.on_recovered("s0", 7100)  # an expired one does not
    assert t.not_before("s0") is None
    t.on_odown("s0", 8000)
    assert t.not_before("s0") == 8010
    t.clear("s0")
    assert t.next_deadline(0) is None


def test_backoff_bounds() -> None:
    assert max_backoff_ms(1000) == 200
    assert max_backoff_ms(30_000) == 1000  # Redis's SENTINEL_MAX_DESYNC
    assert max_backoff_ms(10) == 10


# -- the safety property ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(3, 5),
    seed=st.integers(0, 2**32),
    steps=st.integers(20, 200),
    restarts=st.booleans(),
)
def test_random_message_orders_never_elect_two_leaders_in_one_epoch(
    n: int, seed: int, steps: int, restarts: bool
) -> None:
    rnd = random.Random(seed)
    ids = [f"s{i}" for i in range(n)]
    electors = {i: Elector(i) for i in ids}
    disk = {i: encode_state(PersistedState()) for i in ids}
    candidacies = []
    in_flight: list[tuple[str, object]] = []
    needed = votes_needed(sentinels=n, quorum=2)
    for _ in range(steps):
        roll = rnd.random()
        if roll < 0.2:  # someone starts an attempt
            who = rnd.choice(ids)
            cand, req = electors[who].start_candidacy("s0", topology_epoch=1, now=0, deadline_ms=1)
            disk[who] = encode_state(
                PersistedState(electors[who].current_epoch, electors[who].vote)
            )
            candidacies.append(cand)
            in_flight += [(peer, req) for peer in ids if peer != who]
        elif roll < 0.25 and restarts:  # a crash: reload from what was persisted
            who = rnd.choice(ids)
            st_ = decode_state(disk[who])
            electors[who] = Elector(who, st_.current_epoch, st_.vote)
        elif in_flight:  # deliver (or duplicate, or drop) a random message
            k = rnd.randrange(len(in_flight))
            dst, msg = in_flight[k] if rnd.random() < 0.1 else in_flight.pop(k)
            if rnd.random() < 0.1:
                continue  # dropped
            if isinstance(msg, VoteRequest):
                reply, changed = electors[dst].handle_request(msg, topology_epoch=1)
                if changed:
                    e = electors[dst]
                    disk[dst] = encode_state(PersistedState(e.current_epoch, e.vote))
                in_flight.append((msg.sender, reply))
            else:
                assert isinstance(msg, VoteReply)
                for cand in candidacies:
                    if cand.my_id == dst:
                        cand.on_reply(msg)
    leaders: dict[int, set[str]] = {}
    for cand in candidacies:
        if cand.elected(needed):
            leaders.setdefault(cand.epoch, set()).add(cand.my_id)
    assert all(len(who) == 1 for who in leaders.values()), leaders
