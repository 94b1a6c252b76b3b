"""The RESP codec: request parsing, reply encoding and reply boundaries.

Every parser test feeds its input whole, one byte at a time and in random chunks (conventions
rule 2), and the outcome must not depend on the chunking. Error texts are Redis 7's; where
``redis-server`` is installed the same bad inputs and replies are checked against a real one.
"""

from __future__ import annotations

import itertools
import math
import shutil
import socket
import subprocess
import time
import tracemalloc
from collections.abc import Iterable, Iterator, Sequence

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardgate.resp import (
    DEFAULT_MAX_INLINE,
    UNAUTH_MAX_BULK,
    UNAUTH_MAX_MULTIBULK,
    Batch,
    ErrorReply,
    ProtocolError,
    Push,
    RawReply,
    ReplyError,
    RequestLimits,
    RequestParser,
    RespSet,
    Run,
    SimpleString,
    Verbatim,
    encode_command,
    encode_error,
    encode_reply,
    format_double,
    reply_end,
    split_inline,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- helpers ---------------------------------------------------------------------------------

Outcome = tuple[list[list[bytes]], str | None, bool]


def run_parser(
    pieces: Iterable[bytes],
    *,
    limits: RequestLimits | None = None,
    authenticated: bool = True,
    runs: bool = False,
) -> Outcome:
    """Feed pieces, draining commands after each; return (commands, error message, silent).

    With ``runs``, the parser hands same-shaped commands over as runs, as the proxy takes them:
    every other run is taken whole (each command's bytes checked against its canonical
    encoding) and the others given back to come out one by one."""
    parser = RequestParser(limits, authenticated=authenticated, runs=runs)
    commands: list[list[bytes]] = []
    runs_seen = 0
    try:
        for piece in pieces:
            parser.feed(piece)
            while True:
                item = parser.next_item() if runs else parser.next_command()
                if item is None:
                    break
                if isinstance(item, (Run, Batch)):
                    runs_seen += 1
                    if runs_seen % 2:
                        for i in range(item.count):
                            args = item.args(i)
                            assert item.frame(i) == encode_command(args)
                            commands.append(args)
                    else:
                        parser.give_back(item)
                    continue
                commands.append(item)
    except ProtocolError as exc:
        return commands, exc.message, exc.silent
    return commands, None, False


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def cut(data: bytes, points: Iterable[int]) -> list[bytes]:
    bounds = sorted({p for p in points if 0 < p < len(data)})
    edges = [0, *bounds, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


def chunkings(data: bytes) -> Iterator[list[bytes]]:
    """Whole, byte by byte, and a few fixed cuts (random cuts come from Hypothesis)."""
    yield [data]
    yield bytewise(data)
    for size in (2, 3, 7, 64):
        yield [data[i : i + size] for i in range(0, len(data), size)]


def same_outcome_every_chunking(
    data: bytes, *, limits: RequestLimits | None = None, authenticated: bool = True
) -> Outcome:
    outcomes = [
        run_parser(pieces, limits=limits, authenticated=authenticated) for pieces in chunkings(data)
    ]
    for other in outcomes[1:]:
        assert other == outcomes[0]
    return outcomes[0]


arg_bytes = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"", b"\r\n", b"\r", b"\n", b"$3\r\n", b"*1\r\n", b"\x00", b"\r\n\r\n"]),
    st.builds(lambda a, b: a + b"\r\n" + b, st.binary(max_size=8), st.binary(max_size=8)),
)
command_args = st.lists(arg_bytes, min_size=1, max_size=8)


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    points = draw(st.lists(st.integers(min_value=1, max_value=max(1, len(data) - 1))))
    return cut(data, points)


# --- valid frames round-trip -----------------------------------------------------------------


@SETTINGS
@given(st.lists(command_args, min_size=1, max_size=6), st.data())
def test_commands_round_trip_in_any_chunking(
    commands: list[list[bytes]], data: st.DataObject
) -> None:
    stream = b"".join(encode_command(args) for args in commands)
    for pieces in [*chunkings(stream), data.draw(chunked(stream))]:
        assert run_parser(pieces) == (commands, None, False)


same_shape_commands = st.tuples(
    st.sampled_from([b"GET", b"SET", b"get", b"HSET"]),
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=40),
).flatmap(
    lambda shape: st.lists(
        st.lists(arg_bytes, min_size=shape[1], max_size=shape[1]).map(
            lambda rest, name=shape[0]: [name, *rest]
        ),
        min_size=shape[2],
        max_size=shape[2],
    )
)


@SETTINGS
@given(
    st.lists(command_args, max_size=2),
    same_shape_commands,
    st.lists(command_args, max_size=2),
    st.data(),
)
def test_runs_give_the_same_commands_in_any_chunking(
    before: list[list[bytes]],
    same: list[list[bytes]],
    after: list[list[bytes]],
    data: st.DataObject,
) -> None:
    # The proxy's run lane: same-shaped commands (values of any length, CRLFs inside values)
    # between others; whatever it takes as runs, the commands and their order are the same.
    commands = [*before, *same, *after]
    stream = b"".join(encode_command(args) for args in commands)
    for pieces in [*chunkings(stream), data.draw(chunked(stream))]:
        assert run_parser(pieces, runs=True) == (commands, None, False)


def test_a_uniform_pipeline_is_taken_as_one_run() -> None:
    # The lane must not be dead code: sixteen SETs of varying key length come out as one run.
    commands = [[b"SET", b"key:%d" % (i * 37), b"v" * (i % 3)] for i in range(16)]
    parser = RequestParser(runs=True)
    parser.feed(b"".join(encode_command(args) for args in commands))
    run = parser.next_item()
    assert isinstance(run, Run)
    assert run.count == 16
    assert [run.args(i) for i in range(16)] == commands
    assert parser.next_item() is None
    assert parser.idle


def test_a_mixed_pipeline_is_taken_as_one_batch_with_each_commands_bytes() -> None:
    commands = [[b"GET", b"a"], [b"SET", b"b", b"1"], [b"GET", b"c"], [b"INCR", b"d"]]
    parser = RequestParser(runs=True)
    parser.feed(b"".join(encode_command(args) for args in commands) + b"*2\r\n$3\r\nGE")
    batch = parser.next_item()
    assert isinstance(batch, Batch)
    assert batch.commands == commands
    assert [batch.frame(i) for i in range(4)] == [encode_command(args) for args in commands]
    assert parser.next_item() is None  # the cut-off fifth command stays buffered
    parser.feed(b"T\r\n$1\r\ne\r\n")
    assert parser.next_item() == [b"GET", b"e"]


def test_a_run_parsed_ahead_is_parsed_again_under_new_limits() -> None:
    parser = RequestParser(runs=True)
    parser.feed(encode_command([b"GET", b"a"]) * 3 + encode_command([b"GET", b"b"]) * 3)
    run = parser.next_item()
    assert isinstance(run, Run)
    parser.give_back(run)
    parser.limits = RequestLimits(max_bulk=0)
    with pytest.raises(ProtocolError, match="invalid bulk length"):
        parser.next_command()


@SETTINGS
@given(command_args, command_args, st.data())
def test_trailing_partial_command_stays_buffered(
    first: list[bytes], second: list[bytes], data: st.DataObject
) -> None:
    rest = encode_command(second)
    split = data.draw(st.integers(min_value=0, max_value=len(rest) - 1))
    parser = RequestParser()
    parser.feed(encode_command(first) + rest[:split])
    assert parser.next_command() == first
    assert parser.next_command() is None
    assert parser.buffered <= split + 41 * len(second)  # parsed arguments cost their objects
    for piece in data.draw(chunked(rest[split:])):
        parser.feed(piece)
    assert parser.next_command() == second
    assert parser.next_command() is None
    assert parser.buffered == 0


@SETTINGS
@given(command_args, st.binary(min_size=1, max_size=60))
def test_trailing_garbage_does_not_corrupt_the_command_before_it(
    first: list[bytes], garbage: bytes
) -> None:
    for pieces in chunkings(encode_command(first) + garbage):
        commands, _error, _silent = run_parser(pieces)
        assert commands[:1] == [first]


@SETTINGS
@given(st.lists(command_args, min_size=1, max_size=12), st.data())
def test_commands_come_out_in_order_however_feeds_and_reads_interleave(
    commands: list[list[bytes]], data: st.DataObject
) -> None:
    # Servers may stop reading commands half way through a buffer (a full output queue) and
    # feed more later; commands parsed ahead must neither be lost nor reordered.
    stream = b"".join(encode_command(args) for args in commands)
    parser = RequestParser()
    got: list[list[bytes]] = []
    for piece in data.draw(chunked(stream)):
        parser.feed(piece)
        for _ in range(data.draw(st.integers(min_value=0, max_value=3))):
            if (cmd := parser.next_command()) is not None:
                got.append(cmd)
    while (cmd := parser.next_command()) is not None:
        got.append(cmd)
    assert got == commands
    assert parser.buffered == 0


def test_new_limits_apply_to_commands_already_received() -> None:
    parser = RequestParser()
    parser.feed(encode_command([b"SET", b"k", b"v"]) + encode_command([b"SET", b"k", b"long"]))
    assert parser.next_command() == [b"SET", b"k", b"v"]
    parser.limits = RequestLimits(max_bulk=3)
    with pytest.raises(ProtocolError, match="invalid bulk length"):
        parser.next_command()


def test_authentication_applies_to_commands_already_received() -> None:
    many = [b"x"] * (UNAUTH_MAX_MULTIBULK + 1)
    parser = RequestParser(authenticated=False)
    parser.feed(encode_command([b"AUTH", b"pw"]) + encode_command([b"PING"]) + encode_command(many))
    assert parser.next_command() == [b"AUTH", b"pw"]
    parser.authenticated = True
    assert parser.next_command() == [b"PING"]
    assert parser.next_command() == many
    parser.authenticated = False
    parser.feed(encode_command([b"PING"]) + encode_command(many))
    assert parser.next_command() == [b"PING"]
    with pytest.raises(ProtocolError, match="unauthenticated multibulk length"):
        parser.next_command()


def test_unauthenticated_limits_allow_exactly_the_limit() -> None:
    args = [b"x" * UNAUTH_MAX_BULK] * UNAUTH_MAX_MULTIBULK
    cmds, error, _ = same_outcome_every_chunking(encode_command(args), authenticated=False)
    assert (cmds, error) == ([args], None)


@pytest.mark.parametrize(
    "args",
    [
        [b"x" * 1023],
        [b"x" * 1024],
        [b"SET", b"k", b"x" * 100_000],
        [b"a"] * 1023,
        [b"a"] * 1024,
        [b"a\r\nb", b"\r\n", b""],
    ],
    ids=["1023B", "1024B", "100KB", "1023args", "1024args", "crlf-inside"],
)
def test_fast_and_careful_paths_meet(args: list[bytes]) -> None:
    # Commands on both sides of the fast path's bounds, between plain pipelined ones.
    plain = encode_command([b"GET", b"k"])
    stream = plain * 3 + encode_command(args) + plain * 3
    expected = [[b"GET", b"k"]] * 3 + [args] + [[b"GET", b"k"]] * 3
    assert same_outcome_every_chunking(stream) == (expected, None, False)


def test_empty_and_negative_multibulks_are_skipped() -> None:
    stream = b"*0\r\n*-1\r\n*-5\r\n" + encode_command([b"PING"])
    assert same_outcome_every_chunking(stream) == ([[b"PING"]], None, False)


def test_authenticated_flag_can_change_between_commands() -> None:
    parser = RequestParser(authenticated=False)
    parser.feed(encode_command([b"AUTH", b"pw"]) + encode_command([b"x"] * 11))
    assert parser.next_command() == [b"AUTH", b"pw"]
    parser.authenticated = True
    assert parser.next_command() == [b"x"] * 11


def test_big_bulk_after_small_arguments_then_more_arguments() -> None:
    # A stale "bytes wanted" from an earlier argument once stalled a complete command.
    parser = RequestParser()
    parser.feed(b"*3\r\n$5\r\nhel")
    assert parser.next_command() is None
    parser.feed(b"lo\r\n$3")
    assert parser.next_command() is None
    parser.feed(b"\r\nfoo\r\n$")
    assert parser.next_command() is None
    parser.feed(b"1\r\nx\r\n")
    assert parser.next_command() == [b"hello", b"foo", b"x"]


# --- inline commands -------------------------------------------------------------------------

INLINE_CASES: list[tuple[bytes, list[bytes] | None]] = [
    (b"PING", [b"PING"]),
    (b"  SET  a   b  ", [b"SET", b"a", b"b"]),
    (b"SET\ta\tb", [b"SET", b"a", b"b"]),
    (b'SET k "hello world"', [b"SET", b"k", b"hello world"]),
    (b"SET k 'it''s'", None),  # closing quote followed by a quote: unbalanced
    (b"ECHO 'a\\'b'", [b"ECHO", b"a'b"]),
    (b"ECHO 'a\\nb'", [b"ECHO", b"a\\nb"]),  # no escapes in single quotes
    (b'ECHO "\\x41\\x4g\\n"', [b"ECHO", b"Ax4g\n"]),
    (b'ECHO "\\r\\t\\b\\a\\"\\\\\\q"', [b"ECHO", b'\r\t\x08\x07"\\q']),
    (b'ECHO ""', [b"ECHO", b""]),
    (b"ECHO ''", [b"ECHO", b""]),
    (b'PI"NG"', [b"PING"]),  # a quote may start mid-argument
    (b'ECHO "a"b', None),
    (b'ECHO "abc', None),
    (b"ECHO 'abc", None),
    (b'ECHO "abc\\', None),
    (b"ECHO a\x0bb", [b"ECHO", b"a\x0bb"]),  # \v and \f end no argument...
    (b"\x0b\x0cPING \x0b x", [b"PING", b"x"]),  # ...but are skipped between arguments
    (b"ECHO a\x00b c", [b"ECHO", b"a"]),  # sdssplitargs stops at NUL
    (b"", []),
    (b"   ", []),
]


@pytest.mark.parametrize(("line", "expected"), INLINE_CASES)
def test_split_inline_matches_sdssplitargs(line: bytes, expected: list[bytes] | None) -> None:
    if expected is None:
        with pytest.raises(ProtocolError, match="unbalanced quotes in request"):
            split_inline(line)
    else:
        assert split_inline(line) == expected


@pytest.mark.parametrize(("line", "expected"), [c for c in INLINE_CASES if c[1]])
@pytest.mark.parametrize("ending", [b"\r\n", b"\n"])
def test_inline_commands_in_a_stream(line: bytes, expected: list[bytes], ending: bytes) -> None:
    stream = b"\r\n\n" + line + ending + b"\n" + encode_command([b"PING"]) + b"GET k\r\n"
    assert same_outcome_every_chunking(stream) == (
        [expected, [b"PING"], [b"GET", b"k"]],
        None,
        False,
    )


def test_inline_get_as_first_command_is_not_mistaken_for_http() -> None:
    assert same_outcome_every_chunking(b"GET foo\r\n") == ([[b"GET", b"foo"]], None, False)


@SETTINGS
@given(
    st.lists(
        st.binary(min_size=1, max_size=10).filter(
            lambda b: not set(b) & set(b" \t\r\n\x0b\x0c\x00\"'")
        ),
        min_size=1,
        max_size=6,
    )
)
def test_plain_inline_words_split_on_spaces(words: list[bytes]) -> None:
    assert split_inline(b" ".join(words)) == words


# --- protocol errors -------------------------------------------------------------------------

BIG = DEFAULT_MAX_INLINE + 1  # just over Redis's PROTO_INLINE_MAX_SIZE
PING = encode_command([b"PING"])

# (input, authenticated, Redis's error text); None: the connection is closed without a reply.
PROTOCOL_ERRORS: list[tuple[bytes, bool, str | None]] = [
    (b"*abc\r\n", True, "invalid multibulk length"),
    (b"*\r\n", True, "invalid multibulk length"),
    (b"*01\r\n", True, "invalid multibulk length"),
    (b"*+1\r\n", True, "invalid multibulk length"),
    (b"* 1\r\n", True, "invalid multibulk length"),
    (b"*1_0\r\n", True, "invalid multibulk length"),
    (b"*-0\r\n", True, "invalid multibulk length"),
    (b"*2147483648\r\n", True, "invalid multibulk length"),
    (b"*3000000000\r\n", True, "invalid multibulk length"),
    (b"*99999999999999999999\r\n", True, "invalid multibulk length"),
    (b"*1\r\n$-1\r\n", True, "invalid bulk length"),
    (b"*1\r\n$04\r\nPING\r\n", True, "invalid bulk length"),
    (b"*1\r\n$+4\r\nPING\r\n", True, "invalid bulk length"),
    (b"*1\r\n$\r\n", True, "invalid bulk length"),
    (b"*1\r\n$x\r\n", True, "invalid bulk length"),
    (b"*1\r\n$536870913\r\n", True, "invalid bulk length"),
    (b"*1\r\n$9223372036854775808\r\n", True, "invalid bulk length"),
    (b"*1\r\nx\r\n", True, "expected '$', got 'x'"),
    (b"*2\r\n$4\r\nPING\r\n:1\r\n", True, "expected '$', got ':'"),
    (b"x" * BIG, True, "too big inline request"),
    (b"*" + b"1" * (BIG - 1), True, "too big mbulk count string"),
    (b"*1\r\n$" + b"1" * (BIG - 1), True, "too big bulk count string"),
    (b'ECHO "a"b\r\n', True, "unbalanced quotes in request"),
    (b"ECHO 'abc\r\n", True, "unbalanced quotes in request"),
    (b"*11\r\n", False, "unauthenticated multibulk length"),
    (b"*1\r\n$16385\r\n", False, "unauthenticated bulk length"),
    (b"*1\r\n$536870913\r\n", False, "invalid bulk length"),  # Redis checks this one first
    (b"POST / HTTP/1.1\r\nHost: x\r\n\r\n", True, None),
    (PING + b"post /\r\n", True, None),
    (PING + b"Host: example.com\r\n", True, None),
]

# Our deliberate differences from Redis 7.0 (issue 2): a bulk not followed by CRLF is an error
# (Redis skips two bytes), and an HTTP request line closes the connection at once (Redis answers
# it with an error and closes on the Host header).
OUR_PROTOCOL_ERRORS: list[tuple[bytes, bool, str | None]] = [
    (b"*1\r\n$4\r\nPINGxx", True, "expected CRLF after bulk"),
    (b"*2\r\n$1\r\na\n\r$1\r\nb\r\n", True, "expected CRLF after bulk"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True, None),
    (b"GET /index.html HTTP/1.0\r\n\r\n", True, None),
]


@pytest.mark.parametrize(
    ("data", "authenticated", "message"), PROTOCOL_ERRORS + OUR_PROTOCOL_ERRORS
)
def test_protocol_errors_have_redis_text(
    data: bytes, authenticated: bool, message: str | None
) -> None:
    _cmds, error, silent = same_outcome_every_chunking(data, authenticated=authenticated)
    if message is None:
        assert silent
        assert error is not None
    else:
        assert (error, silent) == (message, False)
        exc = ProtocolError(message)
        assert exc.reply == b"-ERR Protocol error: " + message.encode() + b"\r\n"


def test_commands_before_a_protocol_error_are_delivered() -> None:
    cmds, error, _ = same_outcome_every_chunking(PING + PING + b"*1\r\n$x\r\n" + PING)
    assert (cmds, error) == ([[b"PING"], [b"PING"]], "invalid bulk length")


def test_configured_limits() -> None:
    limits = RequestLimits(max_bulk=10, max_multibulk=3, max_inline=32, max_querybuf=1000)
    ok = encode_command([b"x" * 10] * 3)
    assert same_outcome_every_chunking(ok, limits=limits) == ([[b"x" * 10] * 3], None, False)
    for data, message in [
        (encode_command([b"x" * 11]), "invalid bulk length"),
        (encode_command([b"x"] * 4), "invalid multibulk length"),
        (b"PING " + b"x" * 40 + b"\r\n", "too big inline request"),
        (b"*1\r\n$" + b"1" * 40 + b"\r\n", "too big bulk count string"),
    ]:
        assert same_outcome_every_chunking(data, limits=limits)[1] == message


def test_query_buffer_limit_closes_silently() -> None:
    limits = RequestLimits(max_querybuf=1024)
    parser = RequestParser(limits)
    parser.feed(b"*1\r\n$2000\r\n")
    assert parser.next_command() is None
    with pytest.raises(ProtocolError) as info:
        for _ in range(100):
            parser.feed(b"x" * 100)
    assert info.value.silent
    assert info.value.message == "query buffer limit exceeded"


def test_query_buffer_limit_counts_parsed_arguments() -> None:
    # 10000 one-byte arguments of a command that never completes: each costs a Python object.
    limits = RequestLimits(max_querybuf=64 * 1024)
    parser = RequestParser(limits)
    with pytest.raises(ProtocolError, match="query buffer limit"):
        parser.feed(b"*100000\r\n")
        for _ in range(10000):
            parser.feed(b"$1\r\nx\r\n")
            assert parser.next_command() is None
            assert parser.buffered <= limits.max_querybuf


# --- memory: nothing reserved for a declared length ------------------------------------------


@pytest.mark.parametrize(
    "header",
    [b"*2147483647\r\n", b"*1\r\n$536870912\r\n", b"*2147483647\r\n$536870912\r\n"],
)
def test_declared_lengths_allocate_nothing(header: bytes) -> None:
    parser = RequestParser()
    tracemalloc.start()
    try:
        parser.feed(header)
        assert parser.next_command() is None
        parser.feed(b"abc")
        assert parser.next_command() is None
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert parser.buffered < 100
    assert peak < 64 * 1024


def test_ten_megabyte_bulk_in_small_chunks_is_joined_once() -> None:
    value = bytes(range(256)) * (10 * 1024 * 1024 // 256)
    stream = encode_command([b"SET", b"k", value]) + PING
    parser = RequestParser()
    buffers: set[int] = set()
    chunk = 1024
    # White-box: the internal buffer object changes only when a command's bytes are complete,
    # not once per chunk, so the work is linear in the value size.
    for i in range(0, len(stream), chunk):
        parser.feed(stream[i : i + chunk])
        buffers.add(id(parser._buf))
        if i + chunk < len(stream) - len(PING) - 2:
            assert parser.next_command() is None
    assert len(buffers) <= 4
    assert parser.next_command() == [b"SET", b"k", value]
    assert parser.next_command() == [b"PING"]


# --- random byte streams ---------------------------------------------------------------------

resp_tokens = st.sampled_from(
    [
        b"*",
        b"$",
        b"\r\n",
        b"\r",
        b"\n",
        b"1",
        b"3",
        b"-1",
        b"0",
        b"10",
        b"99999",
        b"abc",
        b" ",
        b'"',
        b"'",
        b"\\x41",
        b"\x00",
        b"GET / HTTP/1.1",
        b"PING",
        b"x" * 50,
    ]
)
resp_soup = st.lists(st.one_of(resp_tokens, st.binary(max_size=8)), max_size=40).map(b"".join)


@SETTINGS
@given(
    st.one_of(
        command_args.map(encode_command),
        st.tuples(command_args, command_args).map(
            lambda c: encode_command(c[0]) + encode_command(c[1])
        ),
        command_args.map(lambda a: encode_command(a)[:-1]),  # cut short
        st.one_of(resp_soup, st.binary(max_size=60)),
    ),
    st.booleans(),
    st.sampled_from([b"", b"*2\r\n$3\r\nGET\r\n", b"*1\r\n$4\r\nPI"]),
)
def test_single_takes_only_what_feed_would_give_as_one_command(
    data: bytes, authenticated: bool, held: bytes
) -> None:
    """``single`` (one whole command per read, nothing buffered) gives exactly the command
    ``feed`` + ``next_item`` would, and nothing at all when there is anything else."""
    parser = RequestParser(authenticated=authenticated, runs=True)
    parser.feed(held)
    taken = parser.single(data)
    if held or taken is None:
        assert taken is None
        return
    expected, error, _ = run_parser([data], authenticated=authenticated, runs=True)
    assert error is None
    assert expected == [taken]
    assert parser.idle
    # The stream goes on as if the command had been fed: the next one parses as usual.
    parser.feed(b"*1\r\n$4\r\nPING\r\n")
    assert parser.next_item() == [b"PING"]


def test_single_leaves_what_needs_the_careful_parser() -> None:
    parser = RequestParser(RequestLimits(max_bulk=8))
    assert parser.single(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n") == [b"GET", b"k"]
    assert parser.single(b"*2\r\n$3\r\nGET\r\n$9\r\nkkkkkkkkk\r\n") is None  # over max_bulk
    assert parser.single(b"*2\r\n$3\r\nGET\r\n$01\r\nk\r\n") is None  # not canonical
    assert parser.single(b"*2\r\n$3\r\nGET\r\n$2\r\nk\r\r\n") == [b"GET", b"k\r"]
    assert parser.single(b"*2\r\n$3\r\nGET\r\n$3\r\nk\r\n\r\n") is None  # a CRLF in the value
    assert parser.single(b"GET k\r\n") is None  # inline
    assert parser.single(b"*0\r\n") is None
    unauthenticated = RequestParser(authenticated=False)
    many = encode_command([b"MSET", *([b"k"] * (UNAUTH_MAX_MULTIBULK + 1))])
    assert unauthenticated.single(many) is None  # over the pre-auth argument count


@SETTINGS
@given(st.one_of(st.binary(max_size=300), resp_soup), st.data())
def test_random_streams_only_raise_protocol_error_and_stay_bounded(
    stream: bytes, data: st.DataObject
) -> None:
    limits = RequestLimits(max_bulk=200, max_multibulk=50, max_inline=64, max_querybuf=256)
    parser = RequestParser(limits, authenticated=data.draw(st.booleans()))
    try:
        for piece in data.draw(chunked(stream)):
            parser.feed(piece)
            assert parser.buffered <= limits.max_querybuf
            while parser.next_command() is not None:
                pass
            assert parser.buffered <= limits.max_querybuf
    except ProtocolError:
        pass


@SETTINGS
@given(st.lists(command_args, max_size=4), resp_soup, st.data())
def test_random_streams_parse_the_same_in_any_chunking(
    commands: list[list[bytes]], soup: bytes, data: st.DataObject
) -> None:
    # Valid commands first, so the fast path has something to take before the garbage.
    stream = b"".join(encode_command(args) for args in commands) + soup
    whole = run_parser([stream])
    assert whole[0][: len(commands)] == commands
    assert run_parser(data.draw(chunked(stream))) == whole
    assert run_parser(bytewise(stream)) == whole
    assert run_parser([stream], runs=True) == whole
    assert run_parser(data.draw(chunked(stream)), runs=True) == whole


# --- replies ---------------------------------------------------------------------------------

REPLIES: list[tuple[object, bytes, bytes]] = [
    # (value, RESP2, RESP3)
    (b"hello", b"$5\r\nhello\r\n", b"$5\r\nhello\r\n"),
    (b"", b"$0\r\n\r\n", b"$0\r\n\r\n"),
    (b"a\r\nb", b"$4\r\na\r\nb\r\n", b"$4\r\na\r\nb\r\n"),
    ("text", b"$4\r\ntext\r\n", b"$4\r\ntext\r\n"),
    (None, b"$-1\r\n", b"_\r\n"),
    (True, b":1\r\n", b"#t\r\n"),
    (False, b":0\r\n", b"#f\r\n"),
    (0, b":0\r\n", b":0\r\n"),
    (-42, b":-42\r\n", b":-42\r\n"),
    (2**63 - 1, b":9223372036854775807\r\n", b":9223372036854775807\r\n"),
    (1.5, b"$3\r\n1.5\r\n", b",1.5\r\n"),
    (0.1, b"$19\r\n0.10000000000000001\r\n", b",0.10000000000000001\r\n"),
    (100.0, b"$3\r\n100\r\n", b",100\r\n"),
    (1e20, b"$5\r\n1e+20\r\n", b",1e+20\r\n"),
    (math.inf, b"$3\r\ninf\r\n", b",inf\r\n"),
    (-math.inf, b"$4\r\n-inf\r\n", b",-inf\r\n"),
    (math.nan, b"$3\r\nnan\r\n", b",nan\r\n"),
    (SimpleString("OK"), b"+OK\r\n", b"+OK\r\n"),
    (ErrorReply("ERR bad\r\nthing"), b"-ERR bad  thing\r\n", b"-ERR bad  thing\r\n"),
    (Verbatim("a=1\n"), b"$4\r\na=1\n\r\n", b"=8\r\ntxt:a=1\n\r\n"),
    ([], b"*0\r\n", b"*0\r\n"),
    ([b"a", 1, None], b"*3\r\n$1\r\na\r\n:1\r\n$-1\r\n", b"*3\r\n$1\r\na\r\n:1\r\n_\r\n"),
    ((b"a",), b"*1\r\n$1\r\na\r\n", b"*1\r\n$1\r\na\r\n"),
    ({b"f": b"v"}, b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n", b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n"),
    (RespSet([b"x"]), b"*1\r\n$1\r\nx\r\n", b"~1\r\n$1\r\nx\r\n"),
    (
        Push([b"message", b"ch", b"hi"]),
        b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
        b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
    ),
    (
        {b"m": [{b"k": True}, RespSet([]), 2.5]},
        b"*2\r\n$1\r\nm\r\n*3\r\n*2\r\n$1\r\nk\r\n:1\r\n*0\r\n$3\r\n2.5\r\n",
        b"%1\r\n$1\r\nm\r\n*3\r\n%1\r\n$1\r\nk\r\n#t\r\n~0\r\n,2.5\r\n",
    ),
    (RawReply(b"+FWD\r\n"), b"+FWD\r\n", b"+FWD\r\n"),
]


@pytest.mark.parametrize(("value", "resp2", "resp3"), REPLIES)
def test_encode_reply(value: object, resp2: bytes, resp3: bytes) -> None:
    assert encode_reply(value) == resp2
    assert encode_reply(value, resp3=True) == resp3


def test_encode_reply_rejects_unknown_types() -> None:
    with pytest.raises(TypeError):
        encode_reply(object())


def test_encode_reply_text_from_client_bytes_round_trips() -> None:
    text = b"caf\xc3 \xff".decode("utf-8", "surrogateescape")
    assert encode_reply(text) == b"$6\r\ncaf\xc3 \xff\r\n"
    assert encode_reply(SimpleString("\ud800")) == b"+?\r\n"  # never raises


def test_encode_error_keeps_one_line() -> None:
    assert encode_error("ERR a\nb\rc") == b"-ERR a b c\r\n"


reply_leaf = st.one_of(
    st.binary(max_size=20),
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(st.characters(blacklist_characters="\r\n"), max_size=10).map(SimpleString),
    st.text(max_size=10),
    st.text(max_size=10).map(ErrorReply),
    st.text(max_size=20).map(Verbatim),
)
reply_values = st.recursive(
    reply_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(RespSet),
        st.lists(inner, max_size=4).map(Push),
        st.dictionaries(st.binary(max_size=5), inner, max_size=3),
    ),
    max_leaves=12,
)


@SETTINGS
@given(reply_values, st.booleans(), st.binary(max_size=10))
def test_reply_end_finds_every_encoded_reply(value: object, resp3: bool, trailing: bytes) -> None:
    encoded = encode_reply(value, resp3=resp3)
    assert reply_end(encoded) == len(encoded)
    assert reply_end(b"+x\r\n" + encoded + trailing, 4) == 4 + len(encoded)
    for i in range(len(encoded)):
        assert reply_end(encoded[:i]) == -1


COMPLETE_REPLIES: list[bytes] = [
    b"+OK\r\n",
    b"-ERR x\r\n",
    b":1\r\n",
    b"$-1\r\n",
    b"*-1\r\n",
    b"$0\r\n\r\n",
    b"$4\r\na\r\nb\r\n",
    b"_\r\n",
    b",1.5\r\n",
    b"#t\r\n",
    b"(12345678901234567890\r\n",
    b"!3\r\nERR\r\n",
    b"=8\r\ntxt:abcd\r\n",
    b"*2\r\n*1\r\n:1\r\n$-1\r\n",
    b"%1\r\n+k\r\n*0\r\n",
    b"~2\r\n:1\r\n:2\r\n",
    b">2\r\n+a\r\n+b\r\n",
    b"|1\r\n+ttl\r\n:3\r\n+value\r\n",  # an attribute, then the reply it annotates
    b"*0\r\n",
]


@pytest.mark.parametrize("data", COMPLETE_REPLIES)
def test_reply_end_table(data: bytes) -> None:
    assert reply_end(data + b"+next\r\n") == len(data)
    assert reply_end(data) == len(data)
    for i in range(len(data)):
        assert reply_end(data[:i]) == -1


@pytest.mark.parametrize(
    "garbage",
    [b"hello", b"?\r\n", b"\r\n", b"$x\r\n", b"*y\r\n", b"$3\r\nabcde\r\n", b"$-2\r\n", b"*1\r\nX"],
)
def test_reply_end_rejects_garbage(garbage: bytes) -> None:
    with pytest.raises(ReplyError):
        reply_end(garbage)


def test_reply_end_huge_declared_counts_do_not_allocate() -> None:
    assert reply_end(b"*2147483647\r\n:1\r\n") == -1
    assert reply_end(b"$536870912\r\nabc") == -1


# --- INCRBYFLOAT text ------------------------------------------------------------------------

FORMAT_DOUBLE: list[tuple[float, bytes]] = [
    # value: what redis-server 7.0 returns from INCRBYFLOAT for it (checked by the live test)
    (10.5 + 0.1, b"10.6"),
    (5.0e3, b"5000"),
    (3.0, b"3"),
    (1e20, b"100000000000000000000"),
    (1e17, b"100000000000000000"),
    (1.5e-7, b"0.00000015"),
    (2.5e-10, b"0.00000000025"),
    (5e-324, b"0"),
    (-1e-20, b"0"),
    (-0.0, b"0"),
    (0.0, b"0"),
    (-1.5, b"-1.5"),
    (100 + 0.001, b"100.001"),
    (0.0001, b"0.0001"),
    (123.456, b"123.456"),
    (3.14159, b"3.14159"),
    (-10.25, b"-10.25"),
    (math.inf, b"inf"),
    (-math.inf, b"-inf"),
]


@pytest.mark.parametrize(("value", "text"), FORMAT_DOUBLE)
def test_format_double(value: float, text: bytes) -> None:
    assert format_double(value) == text


@SETTINGS
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15))
def test_format_double_round_trips_and_never_uses_exponents(value: float) -> None:
    text = format_double(value)
    assert b"e" not in text and b"E" not in text
    if abs(value) >= 1:  # Redis keeps 17 decimals, so smaller values may lose digits
        assert float(text) == value


# --- against a real redis-server -------------------------------------------------------------

REDIS_PASSWORD = "codec-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            REDIS_PASSWORD,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.02)
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)


async def redis_raw(port: int, data: bytes) -> bytes:
    """Send bytes on a fresh connection; everything Redis sends until it closes."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(data)
            received = b""
            while chunk := await stream.receive_some(65536):
                received += chunk
            return received


async def redis_replies(port: int, commands: Sequence[Sequence[bytes]]) -> list[bytes]:
    """Pipeline commands on a fresh connection; the raw bytes of each reply."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"".join(encode_command(list(c)) for c in commands))
            buf = b""
            replies: list[bytes] = []
            while len(replies) < len(commands):
                end = reply_end(buf)
                if end < 0:
                    chunk = await stream.receive_some(65536)
                    assert chunk, "redis closed the connection"
                    buf += chunk
                    continue
                replies.append(buf[:end])
                buf = buf[end:]
            return replies


AUTH = encode_command([b"AUTH", REDIS_PASSWORD.encode()])


@pytest.mark.parametrize(("data", "authenticated", "message"), PROTOCOL_ERRORS)
async def test_protocol_errors_match_redis_server(
    redis_port: int, data: bytes, authenticated: bool, message: str | None
) -> None:
    prefix = AUTH if authenticated else b""
    received = await redis_raw(redis_port, prefix + data)
    if message is None:
        # Redis closes without a word (it even drops the replies to earlier commands).
        assert b"Protocol error" not in received
    else:
        assert received == b"+OK\r\n" * authenticated + ProtocolError(message).reply


async def test_inline_splitting_matches_redis_server(redis_port: int) -> None:
    lines = [line for line, args in INLINE_CASES if args and b"\x00" not in line]
    stream = AUTH + b"".join(b"ECHO " + line + b"\r\n" for line in lines)
    received = await redis_raw(redis_port, stream + b"QUIT\r\n")
    expected = [b"+OK\r\n"]
    for line in lines:
        args = split_inline(b"ECHO " + line)
        if len(args) == 2:
            expected.append(encode_reply(args[1]))
        else:
            expected.append(b"-ERR wrong number of arguments for 'echo' command\r\n")
    expected.append(b"+OK\r\n")
    assert received == b"".join(expected)


async def test_format_double_matches_incrbyfloat(redis_port: int) -> None:
    cases = [
        (b"10.5", b"0.1"),
        (b"5.0e3", b"0"),
        (b"3.0", b"0"),
        (b"1e20", b"0"),
        (b"1e17", b"0"),
        (b"1.5e-7", b"0"),
        (b"2.5e-10", b"0"),
        (b"-0", b"0"),
        (b"100", b"0.001"),
        (b"0.0001", b"0"),
        (b"123.456", b"0"),
        (b"-1.5", b"0"),
        (b"1", b"-1"),
        (b"10", b"-20.25"),
        (b"0.5", b"0.25"),
        (b"3.14159", b"0"),
        (b"7", b"1e3"),
    ]
    commands: list[list[bytes]] = [[b"AUTH", REDIS_PASSWORD.encode()]]
    for start, incr in cases:
        commands += [[b"SET", b"f", start], [b"INCRBYFLOAT", b"f", incr]]
    replies = await redis_replies(redis_port, commands)
    for i, (start, incr) in enumerate(cases):
        ours = encode_reply(format_double(float(start) + float(incr)))
        assert replies[2 + 2 * i] == ours, (start, incr)


async def test_encode_reply_matches_redis_server(redis_port: int) -> None:
    setup = [
        [b"DEL", b"z", b"s", b"h", b"str"],
        [b"ZADD", b"z", b"0.1", b"a", b"1.5", b"b", b"inf", b"c", b"-inf", b"d", b"1e20", b"e"],
        [b"SADD", b"s", b"x"],
        [b"HSET", b"h", b"f", b"v"],
        [b"SET", b"str", b"a\r\nb"],
    ]
    checks: list[tuple[list[bytes], object]] = [
        ([b"ZSCORE", b"z", b"a"], 0.1),
        ([b"ZSCORE", b"z", b"b"], 1.5),
        ([b"ZSCORE", b"z", b"c"], math.inf),
        ([b"ZSCORE", b"z", b"d"], -math.inf),
        ([b"ZSCORE", b"z", b"e"], 1e20),
        ([b"GET", b"nokey"], None),
        ([b"GET", b"str"], b"a\r\nb"),
        ([b"SMEMBERS", b"s"], RespSet([b"x"])),
        ([b"HGETALL", b"h"], {b"f": b"v"}),
        ([b"PING"], SimpleString("PONG")),
        ([b"STRLEN", b"str"], 4),
        ([b"EVAL", b"redis.setresp(3); return true", b"0"], True),
        ([b"EVAL", b"redis.setresp(3); return {double=3.5}", b"0"], 3.5),
        ([b"SUBSCRIBE", b"ch"], Push([b"subscribe", b"ch", 1])),
    ]
    password = REDIS_PASSWORD.encode()
    for resp3 in (False, True):
        hello = [b"HELLO", b"3" if resp3 else b"2", b"AUTH", b"default", password]
        commands = [hello, *setup, *(c for c, _ in checks)]
        replies = await redis_replies(redis_port, commands)
        for (command, value), reply in zip(checks, replies[1 + len(setup) :]):
            if not resp3 and value is True:
                continue  # Lua's true is :1 in RESP2 too, but false is a null there
            assert reply == encode_reply(value, resp3=resp3), (command, resp3)
