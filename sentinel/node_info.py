"""Turn a store node's ``INFO replication`` reply into a ``NodeReport`` (sans-I/O).

The shell sends ``INFO replication`` to every node once per ping period and hands the reply
text here. Fields used (the node's own, see ``storenode/info.py``): ``shardgate_role``
(unassigned / primary / replica), ``shardgate_role_epoch`` (the epoch its role was assigned
under: what reconciliation and promotion checks compare), ``master_host``/``master_port``,
``master_link_status`` and ``master_link_down_since_seconds`` (replicas), ``slave_repl_offset``
(replicas) or ``master_repl_offset`` (primaries), and ``slave_priority``. A stock redis-server
has no ``shardgate_*`` fields: its ``role`` is mapped, at epoch 0.
"""

from __future__ import annotations

from sentinel.actions import NodeReport, Role
from shardgate.topology import NodeAddress, TopologyError

# INFO replies are a few KB; anything much larger is not an INFO reply.
MAX_INFO_BYTES = 1024 * 1024


class InfoError(ValueError):
    """The reply is not a usable INFO replication section."""


def parse_info(text: str) -> dict[str, str]:
    """``key:value`` lines (``# Section`` headers and blank lines skipped)."""
    if len(text) > MAX_INFO_BYTES:
        raise InfoError("INFO reply too large")
    fields: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value
    return fields


def _int(fields: dict[str, str], key: str, default: int) -> int:
    try:
        return int(fields.get(key, default))
    except ValueError:
        raise InfoError(f"{key}: not an integer") from None


_ROLES = {"primary": Role.PRIMARY, "replica": Role.REPLICA, "unassigned": Role.NONE}


def node_report(node: NodeAddress, text: str) -> NodeReport:
    fields = parse_info(text)
    if "shardgate_role" in fields:
        role = _ROLES.get(fields["shardgate_role"])
        if role is None:
            raise InfoError(f"unknown shardgate_role {fields['shardgate_role']!r}")
        epoch = _int(fields, "shardgate_role_epoch", 0)
    elif fields.get("role") in ("master", "slave"):
        role = Role.PRIMARY if fields["role"] == "master" else Role.REPLICA
        epoch = 0
    else:
        raise InfoError("no role in the INFO reply")
    primary = None
    link_down_ms = None
    if role is Role.REPLICA:
        try:
            primary = NodeAddress.parse(f"{fields['master_host']}:{fields['master_port']}")
        except (KeyError, TopologyError):
            raise InfoError("a replica without a valid master_host/master_port") from None
        if fields.get("master_link_status") != "up":
            since = _int(fields, "master_link_down_since_seconds", -1)
            link_down_ms = since * 1000 if since >= 0 else None
        offset = _int(fields, "slave_repl_offset", 0)
    else:
        offset = _int(fields, "master_repl_offset", 0)
    priority = _int(fields, "slave_priority", -1) if "slave_priority" in fields else None
    return NodeReport(node, role, epoch, primary, offset, link_down_ms, priority)
