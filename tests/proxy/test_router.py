from __future__ import annotations

import ast
import pathlib

import pytest

from proxy import merge
from proxy.router import CROSSSLOT, Local, Reject, Router, Split
from shardgate.commands import COMMANDS, Route
from shardgate.resp import encode_command
from shardgate.slots import slot_for_key
from shardgate.topology import NodeAddress, Topology

ROUTER = Router(Topology.even([NodeAddress("127.0.0.1", 7001 + i) for i in range(3)]))


def keys_on_distinct_shards(router: Router, n: int) -> list[bytes]:
    found: dict[int, bytes] = {}
    i = 0
    while len(found) < n:
        key = b"k%d" % i
        found.setdefault(router.shard_for_key(key), key)
        i += 1
    return [found[s] for s in sorted(found)]


K0, K1, K2 = keys_on_distinct_shards(ROUTER, 3)


def test_pure_modules_do_not_do_io() -> None:
    root = pathlib.Path(__file__).parents[2] / "proxy"
    for name in ("router.py", "merge.py", "ordering.py", "local.py", "health.py"):
        tree = ast.parse((root / name).read_text())
        modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules.add(node.module.split(".")[0])
        assert not modules & {"trio", "socket", "time", "asyncio", "random", "os"}, name


def test_single_key_goes_to_its_shard() -> None:
    for key in (b"foo", b"bar", b"user:1", K0, K1, K2):
        assert ROUTER.route([b"GET", key]) == ROUTER.shard_for_key(key)
        assert ROUTER.route([b"set", key, b"v", b"EX", b"10"]) == ROUTER.shard_for_key(key)


def test_hash_tags_keep_keys_together() -> None:
    shard = ROUTER.shard_for_key(b"user1")
    assert ROUTER.route([b"MSETNX", b"{user1}.a", b"1", b"{user1}.b", b"2"]) == shard
    assert ROUTER.route([b"MGET", b"{user1}.a", b"{user1}.b"]) == shard


def test_multi_key_commands_spanning_slots_get_crossslot() -> None:
    decision = ROUTER.route([b"msetnx", K0, b"1", K1, b"2"])
    assert isinstance(decision, Reject) and decision.reply == CROSSSLOT
    # same shard but different slots is still CROSSSLOT (Redis Cluster semantics)
    a = b"a"
    b = next(
        b"b%d" % i
        for i in range(10000)
        if ROUTER.shard_for_key(b"b%d" % i) == ROUTER.shard_for_key(a)
        and slot_for_key(b"b%d" % i) != slot_for_key(a)
    )
    decision = ROUTER.route([b"msetnx", a, b"1", b, b"2"])
    assert isinstance(decision, Reject)


def test_mget_is_split_and_merged_in_client_order() -> None:
    decision = ROUTER.route([b"MGET", K2, K0, K1, K0])
    assert isinstance(decision, Split)
    shards = [shard for shard, _ in decision.parts]
    assert sorted(shards) == [0, 1, 2]
    values = {K0: b"$2\r\nv0\r\n", K1: b"$-1\r\n", K2: b"$2\r\nv2\r\n"}
    # each part asks for its keys in client order; answer accordingly
    replies = []
    for _, request in decision.parts:
        keys = _keys_of(request)
        replies.append(b"*%d\r\n" % len(keys) + b"".join(values[k] for k in keys))
    merged = decision.merge(replies)
    assert merged == b"*4\r\n$2\r\nv2\r\n$2\r\nv0\r\n$-1\r\n$2\r\nv0\r\n"


def _keys_of(request: bytes) -> list[bytes]:
    lines = request.split(b"\r\n")
    return lines[4:-1:2]


def test_mset_split_keeps_pairs() -> None:
    decision = ROUTER.route([b"MSET", K0, b"a", K1, b"b", K2, b"c"])
    assert isinstance(decision, Split)
    assert {r for _, r in decision.parts} == {
        encode_command([b"MSET", K0, b"a"]),
        encode_command([b"MSET", K1, b"b"]),
        encode_command([b"MSET", K2, b"c"]),
    }
    assert decision.merge([b"+OK\r\n"] * 3) == b"+OK\r\n"
    err = b"-ERR backend 127.0.0.1:7002 is down\r\n"
    assert decision.merge([b"+OK\r\n", err, b"+OK\r\n"]) == err
    odd = ROUTER.route([b"MSET", K0, b"a", K1])
    assert isinstance(odd, Reject) and b"wrong number of arguments" in odd.reply


def test_sum_commands_add_up_and_errors_win() -> None:
    for name in (b"DEL", b"UNLINK", b"EXISTS", b"TOUCH"):
        decision = ROUTER.route([name, K0, K1, K2])
        assert isinstance(decision, Split)
        assert decision.merge([b":1\r\n", b":0\r\n", b":1\r\n"]) == b":2\r\n"
        timeout = b"-ERR backend x timeout\r\n"
        assert decision.merge([b":1\r\n", timeout, b":1\r\n"]) == timeout


def test_one_shard_split_is_forwarded_whole() -> None:
    assert ROUTER.route([b"DEL", K0, K0]) == ROUTER.shard_for_key(K0)
    assert ROUTER.route([b"MSET", K1, b"x", K1, b"y"]) == ROUTER.shard_for_key(K1)


def test_fanouts() -> None:
    dbsize = ROUTER.route([b"DBSIZE"])
    assert isinstance(dbsize, Split) and len(dbsize.parts) == 3
    assert dbsize.merge([b":1\r\n", b":2\r\n", b":3\r\n"]) == b":6\r\n"
    flush = ROUTER.route([b"FLUSHALL"])
    assert isinstance(flush, Split) and flush.merge([b"+OK\r\n"] * 3) == b"+OK\r\n"
    keys = ROUTER.route([b"KEYS", b"*"])
    assert isinstance(keys, Split)
    assert (
        keys.merge([b"*1\r\n$1\r\na\r\n", b"*0\r\n", b"*2\r\n$1\r\nb\r\n$1\r\nc\r\n"])
        == b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"
    )
    rk = ROUTER.route([b"RANDOMKEY"])
    assert isinstance(rk, Split)
    assert rk.merge([b"$-1\r\n", b"$1\r\nz\r\n", b"$-1\r\n"]) == b"$1\r\nz\r\n"
    assert rk.merge([b"$-1\r\n"] * 3) == b"$-1\r\n"


def test_scan_walks_every_shard_once() -> None:
    """A fake cluster: each shard scans a list 2 keys at a time."""
    data = {0: [b"a", b"b", b"c"], 1: [], 2: [b"d", b"e", b"f", b"g", b"h"]}
    seen: list[bytes] = []
    cursor = b"0"
    for _ in range(50):
        decision = ROUTER.route([b"SCAN", cursor, b"COUNT", b"2"])
        assert isinstance(decision, Split) and len(decision.parts) == 1
        shard, request = decision.parts[0]
        node_cursor = int(request.split(b"\r\n")[4])
        assert b"COUNT" in request
        keys = data[shard][node_cursor : node_cursor + 2]
        nxt = node_cursor + 2 if node_cursor + 2 < len(data[shard]) else 0
        reply = b"*2\r\n$%d\r\n%d\r\n" % (len(b"%d" % nxt), nxt)
        reply += b"*%d\r\n" % len(keys) + b"".join(b"$1\r\n%b\r\n" % k for k in keys)
        out = decision.merge([reply])
        lines = out.split(b"\r\n")
        cursor = lines[2]
        seen.extend(lines[5::2][: len(keys)])
        if cursor == b"0":
            break
    assert sorted(seen) == sorted(k for keys in data.values() for k in keys)
    bad = ROUTER.route([b"SCAN", b"nope"])
    assert isinstance(bad, Reject) and bad.reply == b"-ERR invalid cursor\r\n"


def test_local_unsupported_and_arity() -> None:
    for name in (b"PING", b"echo", b"INFO", b"cluster", b"Config", b"hello", b"AUTH"):
        args = [name, b"x"] if name.lower() in (b"echo", b"cluster", b"config", b"auth") else [name]
        assert isinstance(ROUTER.route(args), Local), name
    for args in ([b"HSET", b"h", b"f", b"v"], [b"memory", b"usage", b"k"], [b"\xff"]):
        decision = ROUTER.route(args)
        assert isinstance(decision, Reject)
        assert b"not supported by the shardgate proxy" in decision.reply
    decision = ROUTER.route([b"GET"])
    assert isinstance(decision, Reject)
    assert decision.reply == b"-ERR wrong number of arguments for 'get' command\r\n"


@pytest.mark.parametrize("spec", sorted(COMMANDS.values(), key=lambda s: s.name), ids=str)
def test_every_command_in_the_table_has_a_decision(spec: object) -> None:
    from shardgate.commands import CommandSpec

    assert isinstance(spec, CommandSpec)
    argc = spec.arity if spec.arity > 0 else -spec.arity
    args = [spec.name.encode()] + [b"0"] * (argc - 1)
    if spec.route is Route.SPLIT_MSET and argc % 2 == 0:
        args.append(b"0")
    decision = ROUTER.route(args)
    if spec.route is Route.UNSUPPORTED:
        assert isinstance(decision, Reject)
    elif spec.route is Route.LOCAL:
        assert isinstance(decision, Local)
    else:
        assert isinstance(decision, int | Split), spec.name


def test_malformed_shard_reply_becomes_an_error() -> None:
    assert merge.total([b":1\r\n", b"+OK\r\n"]).startswith(b"-ERR proxy could not merge")
    assert merge.mget([b"*1\r\n$1\r\na\r\n"], positions=[[0, 1]]).startswith(b"-ERR")
    # a part that is not what MGET promises: truncated, a bad length, an unknown type byte
    for bad in (b"*2\r\n$1\r\na\r\n", b"*1\r\n$x\r\na\r\n", b"*1\r\n?\r\n", b"+OK\r\n"):
        merged = merge.mget([bad, b"*1\r\n$1\r\nb\r\n"], positions=[[0], [1]])
        assert merged.startswith(b"-ERR proxy could not merge"), (bad, merged)


def test_mget_merge_keeps_every_value_byte_for_byte() -> None:
    # values of every shape the array framing must cut: nulls, CRLFs inside, big, empty
    values = [b"$-1\r\n", b"$4\r\na\r\nb\r\n", b"$0\r\n\r\n", b"$5000\r\n" + b"x" * 5000 + b"\r\n"]
    values += [b"$3\r\nv%02d\r\n" % i for i in range(40)]
    even, odd = values[0::2], values[1::2]
    parts = [b"*%d\r\n" % len(even) + b"".join(even), b"*%d\r\n" % len(odd) + b"".join(odd)]
    positions = [list(range(0, len(values), 2)), list(range(1, len(values), 2))]
    assert merge.mget(parts, positions=positions) == b"*%d\r\n" % len(values) + b"".join(values)
