from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from shardgate.config import ConfigError
from shardgate.slots import SLOTS
from shardgate.topology import (
    NodeAddress,
    Shard,
    SlotRange,
    Topology,
    TopologyError,
    load_topology,
)

A = NodeAddress("127.0.0.1", 7001)
B = NodeAddress("127.0.0.1", 7002)


def two_shards(epoch: int = 1) -> Topology:
    return Topology(
        epoch,
        (
            Shard("s0", A, (), (SlotRange(0, 8191),)),
            Shard("s1", B, (NodeAddress("127.0.0.1", 7102),), (SlotRange(8192, 16383),)),
        ),
    )


def test_address_parse_and_str() -> None:
    assert NodeAddress.parse("127.0.0.1:7001") == A
    assert str(NodeAddress.parse("[::1]:6379")) == "[::1]:6379"
    for bad in ("nohost", ":80", "h:0", "h:70000", "h:x"):
        with pytest.raises(TopologyError):
            NodeAddress.parse(bad)


def test_slot_range_parse() -> None:
    assert SlotRange.parse("0-99") == SlotRange(0, 99)
    assert SlotRange.parse("5") == SlotRange(5, 5)
    assert SlotRange.parse(7) == SlotRange(7, 7)
    assert len(SlotRange(0, 99)) == 100
    for bad in ("9-1", "0-16384", "a-b", "-1"):
        with pytest.raises(TopologyError):
            SlotRange.parse(bad)


def test_even_split_covers_every_slot() -> None:
    for n in (1, 2, 3, 7):
        topo = Topology.even([NodeAddress("h", 1000 + i) for i in range(n)])
        counts = [topo.slot_owner.count(i) for i in range(n)]
        assert sum(counts) == SLOTS
        assert max(counts) - min(counts) <= 1
        assert topo.shards[-1].slots[-1].end == SLOTS - 1


def test_values_are_frozen_and_compare_by_content() -> None:
    topo = two_shards()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        topo.epoch = 2  # type: ignore[misc]
    assert topo == two_shards()
    assert topo.shard_for_slot(0).name == "s0"
    assert topo.shard_for_slot(16383).name == "s1"
    assert two_shards(2).supersedes(topo)
    assert not topo.supersedes(two_shards(1))
    assert attrs.evolve(topo, epoch=5).epoch == 5


@pytest.mark.parametrize(
    ("shards", "message"),
    [
        ((Shard("s0", A, (), (SlotRange(0, 100),)),), "not owned"),
        (
            (
                Shard("s0", A, (), (SlotRange(0, 9000),)),
                Shard("s1", B, (), (SlotRange(9000, 16383),)),
            ),
            "owned by s0 and s1",
        ),
        (
            (
                Shard("s0", A, (), (SlotRange(0, 8191),)),
                Shard("s0", B, (), (SlotRange(8192, 16383),)),
            ),
            "duplicate shard name",
        ),
        (
            (
                Shard("s0", A, (), (SlotRange(0, 8191),)),
                Shard("s1", A, (), (SlotRange(8192, 16383),)),
            ),
            "is in shard s0 and shard s1",
        ),
        ((), "at least one shard"),
    ],
)
def test_invalid_topologies_are_refused(shards: tuple[Shard, ...], message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        Topology(1, shards)


def test_toml_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(two_shards(4).to_toml())
    loaded = load_topology(path)
    assert loaded == two_shards(4)
    assert Topology.from_dict(loaded.to_dict()) == loaded


def test_toml_errors_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[shards]]\nname = "s0"\nprimary = "h:1"\nslots = ["0-10"]\n')
    with pytest.raises(TopologyError, match="not owned"):
        load_topology(path)
    path.write_text('[[shards]]\nname = "s0"\nprimary = "h:1"\nslot = ["0-16383"]\n')
    with pytest.raises(ConfigError, match="unknown setting"):
        load_topology(path)
    path.write_text("this is = not toml [")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_topology(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_topology(tmp_path / "missing.toml")
    path.write_text('[[shards]]\nprimary = "h"\nslots = ["0-16383"]\n')
    with pytest.raises(TopologyError, match=r"shards\[0\]"):
        load_topology(path)
