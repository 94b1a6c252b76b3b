"""sentinel.toml: a full example, defaults, and a clear error for every malformed value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sentinel.config import DEFAULT_PRIORITY, load_config, parse_config
from shardgate.config import ConfigError
from shardgate.topology import NodeAddress

EXAMPLE = """
id = "s1"
listen = "127.0.0.1:26379"
quorum = 2
down_after_ms = 1000
failover_timeout_ms = 10000
forget_after_ms = 600000
state_file = "s1.state"
password = "for-clients"
node_password = "internal"

[[peers]]
id = "s2"
address = "127.0.0.1:26380"

[[peers]]
id = "s3"
address = "127.0.0.1:26381"

[[shards]]
name = "s0"
primary = "127.0.0.1:7001"
replicas = ["127.0.0.1:7101", { address = "127.0.0.1:7201", priority = 0 }]
slots = ["0-8191"]

[[shards]]
name = "s1"
primary = "127.0.0.1:7002"
slots = ["8192-16383"]
"""


def base(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "s1",
        "quorum": 2,
        "peers": [{"id": "s2", "address": "127.0.0.1:26380"}],
        "shards": [{"name": "s0", "primary": "127.0.0.1:7001"}],
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def test_full_example(tmp_path: Path) -> None:
    path = tmp_path / "sentinel.toml"
    path.write_text(EXAMPLE)
    c = load_config(path)
    assert (c.id, c.listen, c.quorum, c.sentinel_count) == (
        "s1",
        NodeAddress("127.0.0.1", 26379),
        2,
        3,
    )
    assert [p.id for p in c.peers] == ["s2", "s3"]
    assert (c.down_after_ms, c.failover_timeout_ms, c.forget_after_ms) == (1000, 10_000, 600_000)
    assert c.state_file == str(tmp_path / "s1.state")
    assert (c.password, c.node_password) == ("for-clients", "internal")
    assert "for-clients" not in repr(c)
    assert c.priority(NodeAddress("127.0.0.1", 7201)) == 0
    assert c.priority(NodeAddress("127.0.0.1", 7101)) == DEFAULT_PRIORITY
    assert c.topology.epoch == 1 and [s.name for s in c.topology.shards] == ["s0", "s1"]
    assert c.ping_period_ms == 100 and c.warnings == ()


def test_defaults_and_even_slots() -> None:
    c = parse_config(
        base(
            shards=[{"primary": "127.0.0.1:7001"}, {"primary": "127.0.0.1:7002"}],
            peers=None,
            quorum=1,
        )
    )
    assert c.listen == NodeAddress("127.0.0.1", 26379) and c.state_file == "sentinel-s1.state"
    assert [str(r) for s in c.topology.shards for r in s.slots] == ["0-8191", "8192-16383"]
    assert c.warnings == ("only 1 sentinel(s): a failure loses the majority",)


def test_quorum_above_the_sentinels_is_accepted_but_reported() -> None:
    c = parse_config(base(quorum=3))
    assert c.warnings[0] == "cannot fail over: quorum 3 is larger than the 2 sentinels"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"id": None}, "id: expected a non-empty string id"),
        ({"id": "a b"}, "may only use letters"),
        ({"id": "x" * 65}, "longer than 64"),
        ({"quorum": None}, "quorum: missing"),
        ({"quorum": 0}, "quorum: 0 is out of range"),
        ({"quorum": "2"}, "quorum: expected an integer"),
        ({"quorum": True}, "quorum: expected an integer"),
        ({"down_after_ms": -5}, "down_after_ms: -5 is out of range"),
        ({"down_after_ms": 10**12}, "down_after_ms: 1000000000000 is out of range"),
        ({"failover_timeout_ms": 0}, "failover_timeout_ms: 0 is out of range"),
        ({"manual_pause_ms": 1000}, "manual_pause_ms: 1000 is out of range"),
        ({"down_after_ms": 5000, "forget_after_ms": 5000}, "forget_after_ms must be larger"),
        ({"listen": "nowhere"}, "listen: expected 'host:port'"),
        ({"listen": "127.0.0.1:70000"}, "invalid port"),
        ({"peers": "s2"}, "peers: expected [[peers]] tables"),
        ({"peers": ["127.0.0.1:1"]}, "peers[0]: expected a table"),
        ({"peers": [{"id": "s1", "address": "127.0.0.1:1"}]}, "duplicate sentinel id(s) s1"),
        (
            {"peers": [{"id": "s2", "address": "127.0.0.1:26379"}]},
            "duplicate sentinel address(es) 127.0.0.1:26379",
        ),
        (
            {"peers": [{"id": "s2", "address": "127.0.0.1:7001"}]},
            "both a sentinel and a store node",
        ),
        ({"peers": [{"id": "s2", "addr": "x"}]}, "unknown setting(s) addr"),
        ({"shards": []}, "shards: expected one or more"),
        ({"shards": [{"primary": "127.0.0.1:7001", "replicas": "x:1"}]}, "replicas must be a list"),
        (
            {
                "shards": [
                    {
                        "primary": "127.0.0.1:7001",
                        "replicas": [{"address": "127.0.0.1:2", "priority": -1}],
                    }
                ]
            },
            "priority: -1 is out of range",
        ),
        (
            {"shards": [{"primary": "127.0.0.1:7001", "replicas": ["127.0.0.1:7001"]}]},
            "also a replica",
        ),
        (
            {
                "shards": [
                    {"primary": "127.0.0.1:7001", "slots": ["0-100"]},
                    {"primary": "127.0.0.1:7002"},
                ]
            },
            "either every shard names its slots or none does",
        ),
        ({"shards": [{"primary": "127.0.0.1:7001", "slots": ["0-100"]}]}, "not owned by any shard"),
        ({"shards": [{"primary": "127.0.0.1:7001"}, {"primary": "127.0.0.1:7001"}]}, "is in shard"),
        ({"password": ""}, "password: expected a non-empty single-line string"),
        ({"node_password": "a\nb"}, "node_password: expected a non-empty single-line string"),
        ({"state_file": ""}, "state_file: expected a file path"),
        ({"bogus": 1}, "unknown setting(s) bogus"),
    ],
)
def test_malformed_values_get_clear_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(base(**overrides))
    assert message in str(info.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('id = "s1"\nquorum = 0\n[[shards]]\nprimary = "127.0.0.1:1"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: quorum"):
        load_config(path)
    path.write_text("id = ")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path)
