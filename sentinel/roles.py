"""Which role each node should have under a topology, and when to correct one (sans-I/O).

Reconciliation is how a returning old primary becomes a replica, how a restarted --managed node
(which reports role none at epoch 0) gets its role back, and how a fresh lab gets its initial
roles: a node that reports an epoch *below* the topology's, or another role at the same epoch, is
sent its role at the topology's epoch. A node reporting a *higher* epoch means this sentinel is
behind (a failover it has not heard of yet): it waits for that topology instead of fighting it.
"""

from __future__ import annotations

from sentinel.actions import NodeReport, Role, SendRole
from sentinel.detector import NodeKind
from shardgate.topology import NodeAddress, Topology


def node_roles(topology: Topology) -> dict[NodeAddress, tuple[NodeKind, str]]:
    """Every node of the topology → (primary or replica, shard name)."""
    roles: dict[NodeAddress, tuple[NodeKind, str]] = {}
    for s in topology.shards:
        roles[s.primary] = (NodeKind.PRIMARY, s.name)
        for r in s.replicas:
            roles[r] = (NodeKind.REPLICA, s.name)
    return roles


def wanted_role(topology: Topology, node: NodeAddress) -> SendRole | None:
    """The role assignment ``node`` should hold under ``topology`` (None: not in it)."""
    for s in topology.shards:
        if node == s.primary:
            return SendRole(node, Role.PRIMARY, topology.epoch)
        if node in s.replicas:
            return SendRole(node, Role.REPLICA, topology.epoch, s.primary)
    return None


def role_fix(topology: Topology, report: NodeReport) -> SendRole | None:
    """The ``SendRole`` that brings the reporting node in line, or None if it is fine."""
    want = wanted_role(topology, report.node)
    if want is None or report.epoch > topology.epoch:
        return None
    same_role = report.epoch == topology.epoch and report.role is want.role
    if same_role and (want.role is Role.PRIMARY or report.primary == want.primary):
        return None
    return want
