"""Reply framing: ``reply_ends`` must cut a backend's byte stream exactly where ``reply_end``
does, whichever path (alike runs or the scanner) takes each part, however the stream is cut."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.replies import _alike, reply_ends
from shardgate.resp import reply_end

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def expected_ends(buf: bytes) -> list[int]:
    ends, pos = [], 0
    while pos < len(buf) and (end := reply_end(buf, pos)) > 0:
        ends.append(end)
        pos = end
    return ends


values = st.one_of(
    st.binary(max_size=30),
    st.sampled_from([b"", b"\r\n", b"a\r\nb", b"$3", b"+OK", b"\r\n$1\r\nx"]),
)
reply = st.one_of(
    st.just(b"+OK\r\n"),
    st.integers(min_value=-5, max_value=10**6).map(lambda i: b":%d\r\n" % i),
    st.just(b"$-1\r\n"),
    st.just(b"-ERR no\r\n"),
    values.map(bulk),
    st.lists(values, max_size=3).map(lambda vs: b"*%d\r\n" % len(vs) + b"".join(map(bulk, vs))),
)
# Alike runs, so the C-level path has something to take (and must still stop where it should).
alike_run = st.one_of(
    st.lists(values.map(bulk), min_size=2, max_size=40),
    st.lists(st.just(b"+OK\r\n"), min_size=2, max_size=40),
    st.lists(st.integers(min_value=0, max_value=999).map(lambda i: b":%d\r\n" % i), min_size=2),
)
stream = st.lists(st.one_of(reply.map(lambda r: [r]), alike_run), max_size=6).map(
    lambda groups: b"".join(b"".join(g) for g in groups)
)


@SETTINGS
@given(stream, st.data())
def test_reply_ends_match_reply_end_at_any_cut(data: bytes, draw: st.DataObject) -> None:
    cut = draw.draw(st.integers(min_value=1, max_value=max(1, len(data))))
    head = data[:cut]
    ends, need = reply_ends(head)
    assert ends == expected_ends(head)
    if need:  # an incomplete bulk: exactly the bytes it lacks are asked for
        start = ends[-1] if ends else 0
        assert reply_end(head, start) == -1
        assert reply_end(data, start) == start + need


def test_alike_runs_are_cut_without_the_scanner() -> None:
    # The fast path must not be dead code: a GET run and a SET run are cut by _alike alone.
    gets = b"".join(bulk(b"v" * (i % 7 + 95)) for i in range(16))
    assert _alike(gets, gets[0]) == expected_ends(gets)
    sets = b"+OK\r\n" * 16
    assert _alike(sets, sets[0]) == expected_ends(sets)
    incrs = b"".join(b":%d\r\n" % i for i in range(16))
    assert _alike(incrs, incrs[0]) == expected_ends(incrs)
    # More than one window (64 KB): the window's cut is never taken for a whole reply.
    many = b"".join(bulk(b"%d" % i * 30) for i in range(3000))[:-7]
    assert reply_ends(many)[0] == expected_ends(many)


@pytest.mark.parametrize(
    "data",
    [
        bulk(b"a\r\nb") * 10,  # CRLF inside every value
        b"$-1\r\n" * 20,  # nulls
        b"+OK\r\n:1\r\n" * 10,  # mixed line kinds
        bulk(b"x" * 5000) * 3,  # values bigger than the alike table
    ],
)
def test_streams_the_alike_path_declines_are_scanned(data: bytes) -> None:
    assert reply_ends(data) == (expected_ends(data), 0)


def test_a_malformed_length_is_an_error() -> None:
    with pytest.raises(ValueError):
        reply_ends(b"$x\r\nabc\r\n" + b"+OK\r\n" * 20)
