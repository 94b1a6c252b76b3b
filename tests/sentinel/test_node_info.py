"""INFO replication → NodeReport, for shardgate nodes and stock redis-server."""

from __future__ import annotations

import pytest

from sentinel.actions import NodeReport, Role
from sentinel.node_info import InfoError, node_report, parse_info
from shardgate.topology import NodeAddress

N = NodeAddress("127.0.0.1", 7101)
P = NodeAddress("127.0.0.1", 7001)

REPLICA = """# Replication\r
role:slave\r
master_host:127.0.0.1\r
master_port:7001\r
master_link_status:down\r
master_last_io_seconds_ago:-1\r
master_sync_in_progress:0\r
master_link_down_since_seconds:12\r
slave_read_repl_offset:1234\r
slave_repl_offset:1234\r
slave_priority:0\r
connected_slaves:0\r
master_repl_offset:1234\r
shardgate_role:replica\r
shardgate_epoch:7\r
shardgate_role_epoch:6\r
shardgate_fenced:0\r
"""


def test_a_shardgate_replica() -> None:
    assert node_report(N, REPLICA) == NodeReport(N, Role.REPLICA, 6, P, 1234, 12_000, 0)


def test_a_primary_and_an_unassigned_node() -> None:
    text = "role:master\nmaster_repl_offset:99\nshardgate_role:primary\nshardgate_role_epoch:3\n"
    assert node_report(P, text) == NodeReport(P, Role.PRIMARY, 3, None, 99)
    text = "role:master\nmaster_repl_offset:0\nshardgate_role:unassigned\nshardgate_role_epoch:0\n"
    assert node_report(P, text).role is Role.NONE


def test_stock_redis_roles_map_at_epoch_zero() -> None:
    text = "role:slave\nmaster_host:127.0.0.1\nmaster_port:7001\nmaster_link_status:up\nslave_repl_offset:5\n"
    assert node_report(N, text) == NodeReport(N, Role.REPLICA, 0, P, 5, None)
    down_never_connected = text.replace("up", "down") + "master_link_down_since_seconds:-1\n"
    assert node_report(N, down_never_connected).link_down_ms is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "role:sentinel\n",
        "shardgate_role:boss\n",
        "shardgate_role:primary\nshardgate_role_epoch:x\n",
        "role:slave\nmaster_port:1\n",
        "role:slave\nmaster_host:h\nmaster_port:99999\n",
        "x" * (1024 * 1024 + 1),
    ],
)
def test_unusable_replies_raise(text: str) -> None:
    with pytest.raises(InfoError):
        node_report(N, text)


def test_parse_info_skips_headers() -> None:
    assert parse_info("# Server\r\n\r\na:1\r\nb:x:y\r\n") == {"a": "1", "b": "x:y"}
