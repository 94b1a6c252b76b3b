"""What goes into the sentinel core (observations) and what comes out (actions); sans-I/O values.

The shell executes actions **in order**: a ``PersistState`` must be durable before any action
after it runs (a vote reply, a role change, a topology publication), which is what makes votes
and epochs survive crashes. Observations are the shell's translation of replies from the store
nodes and of peer messages; the shell never decides anything itself.
"""

from __future__ import annotations

import enum

import attrs

from sentinel.messages import Message
from shardgate.topology import NodeAddress, Topology


class Role(enum.Enum):
    PRIMARY = "primary"
    REPLICA = "replica"
    NONE = "none"  # a --managed node that has not been given a role yet


# -- actions -----------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class SendRole:
    """``SG.ROLE primary EPOCH`` or ``SG.ROLE replica EPOCH PRIMARY-ADDR`` to ``node``.

    The shell reports the outcome with ``RoleApplied`` (ok or not).
    """

    node: NodeAddress
    role: Role
    epoch: int
    primary: NodeAddress | None = None

    def __attrs_post_init__(self) -> None:
        if self.role is Role.NONE:
            raise ValueError("SendRole needs primary or replica")
        if (self.role is Role.REPLICA) != (self.primary is not None):
            raise ValueError("a replica role needs its primary, a primary role none")

    def command(self) -> tuple[str, ...]:
        args = ("SG.ROLE", self.role.value, str(self.epoch))
        return (*args, str(self.primary)) if self.primary is not None else args


@attrs.frozen(slots=True)
class PauseWrites:
    """Manual failover: stop taking writes for at most ``timeout_ms`` (``CLIENT PAUSE ms WRITE``)
    and report the replication offset once paused (``WritesPaused``)."""

    node: NodeAddress
    timeout_ms: int


@attrs.frozen(slots=True)
class ResumeWrites:
    """Manual failover aborted: ``CLIENT UNPAUSE`` on the primary."""

    node: NodeAddress


@attrs.frozen(slots=True)
class PublishTopology:
    """Announce to proxies (``SG.TOPOLOGY`` / pub/sub) and peers (``Hello``)."""

    topology: Topology


@attrs.frozen(slots=True)
class SendToPeer:
    peer: str
    message: Message


@attrs.frozen(slots=True)
class PersistState:
    """Write ``data`` to the state file (fsync + atomic rename) before the next action runs."""

    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")


@attrs.frozen(slots=True)
class Log:
    """One structured log line; ``event`` is also the Sentinel pub/sub channel (``+sdown`` …)."""

    event: str
    fields: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, event: str, **fields: object) -> Log:
        return cls(event, tuple((k, str(v)) for k, v in fields.items()))

    def get(self, name: str) -> str | None:
        return dict(self.fields).get(name)


Action = SendRole | PauseWrites | ResumeWrites | PublishTopology | SendToPeer | PersistState | Log


# -- observations ------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class PingReply:
    """A reply to PING; ``valid`` as Redis: +PONG, -LOADING, -MASTERDOWN (other errors: False)."""

    node: NodeAddress
    valid: bool = True


@attrs.frozen(slots=True)
class NodeReport:
    """A node's own account of itself (from ``SG.ROLE`` without arguments or INFO replication).

    ``link_down_ms``: for a replica, how long its link to the primary has been down (None when
    up); ``offset``: its replication offset (``master_repl_offset`` / ``slave_repl_offset``);
    ``priority``: the node's own ``replica-priority`` when it reports one (0 there also means
    "never promote", as an operator of Redis expects).
    """

    node: NodeAddress
    role: Role
    epoch: int
    primary: NodeAddress | None = None
    offset: int = 0
    link_down_ms: int | None = None
    priority: int | None = None


@attrs.frozen(slots=True)
class RoleApplied:
    """The outcome of a ``SendRole``: ``ok`` when the node answered +OK."""

    node: NodeAddress
    role: Role
    epoch: int
    ok: bool


@attrs.frozen(slots=True)
class WritesPaused:
    """The outcome of ``PauseWrites``: the primary's offset once no more writes can come in."""

    node: NodeAddress
    offset: int


@attrs.frozen(slots=True)
class PeerMessage:
    message: Message


Observation = PingReply | NodeReport | RoleApplied | WritesPaused | PeerMessage
