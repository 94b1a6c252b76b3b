from __future__ import annotations

import subprocess
import sys

import xxhash

from shardgate.slots import SLOTS, hash_tag, slot_for_key


def test_slot_is_xxh3_mod_16384() -> None:
    assert slot_for_key(b"foo") == xxhash.xxh3_64_intdigest(b"foo") % SLOTS


def test_hash_tag_rules_follow_redis_cluster() -> None:
    assert hash_tag(b"{user1000}.following") == b"user1000"
    assert hash_tag(b"foo{}{bar}") == b"foo{}{bar}"  # empty first tag: whole key
    assert hash_tag(b"foo{{bar}}zap") == b"{bar"
    assert hash_tag(b"foo{bar}{zap}") == b"bar"
    assert hash_tag(b"{") == b"{"
    assert slot_for_key(b"{a}x") == slot_for_key(b"{a}y") == slot_for_key(b"a")


def test_slot_cli_prints_slot() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "shardgate", "slot", "foo"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.split() == ["foo", str(slot_for_key(b"foo"))]
