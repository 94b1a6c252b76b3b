"""A node's role under an epoch, and the fencing rules (sans-I/O).

How it works
- A node is ``primary``, ``replica`` or (started with ``--managed``) ``unassigned`` until a
  sentinel assigns it a role with ``SG.ROLE primary|replica EPOCH [primary-address]``.
- ``epoch`` is the newest topology epoch the node has seen, from a role assignment or from a
  proxy's ``SG.FENCE EPOCH [primary|replica]``. An assignment or a fence older than that epoch
  is refused with ``-STALE <epoch>``: whoever sent it holds an out-of-date topology.
- A primary that learns of a newer epoch in which it is not (or not known to be) the primary is
  **fenced**: it stops taking writes until a role is assigned under that epoch. A fence that
  says "you are primary in epoch E" keeps it writable. This is what stops an old primary that
  comes back after a failover from taking writes from anyone holding the new topology.
- Allowed transitions live in ``TRANSITIONS``; anything else raises.
"""

from __future__ import annotations

import enum

import attrs


class Role(enum.Enum):
    UNASSIGNED = "unassigned"
    PRIMARY = "primary"
    REPLICA = "replica"


# Every assignment a sentinel (or REPLICAOF) may make, from each role.
TRANSITIONS: dict[Role, frozenset[Role]] = {
    Role.UNASSIGNED: frozenset({Role.PRIMARY, Role.REPLICA}),
    Role.PRIMARY: frozenset({Role.PRIMARY, Role.REPLICA}),
    Role.REPLICA: frozenset({Role.PRIMARY, Role.REPLICA}),
}


class StaleEpoch(Exception):
    """The request carries an epoch older than the node's; reply ``-STALE <epoch>``."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"STALE {epoch}")
        self.epoch = epoch

    @property
    def message(self) -> str:
        return f"STALE {self.epoch}"


class IllegalTransition(Exception):
    pass


@attrs.frozen(slots=True)
class RoleState:
    role: Role = Role.PRIMARY
    epoch: int = 0  # newest epoch seen
    role_epoch: int = 0  # epoch under which the current role was assigned
    primary: str | None = None  # host:port of the primary, for a replica
    fenced: bool = False

    def __attrs_post_init__(self) -> None:
        if self.epoch < 0 or self.role_epoch < 0 or self.role_epoch > self.epoch:
            raise ValueError("epochs must satisfy 0 <= role_epoch <= epoch")
        if (self.role is Role.REPLICA) != (self.primary is not None):
            raise ValueError("a replica, and only a replica, names its primary")

    @property
    def writable(self) -> bool:
        return self.role is Role.PRIMARY and not self.fenced


def assign(state: RoleState, role: Role, epoch: int, primary: str | None = None) -> RoleState:
    """A sentinel's ``SG.ROLE``: take ``role`` under ``epoch``."""
    if epoch < state.epoch:
        raise StaleEpoch(state.epoch)
    if role not in TRANSITIONS[state.role]:
        raise IllegalTransition(f"{state.role.value} -> {role.value}")
    if role is Role.REPLICA and not primary:
        raise ValueError("a replica assignment needs the primary's address")
    return RoleState(
        role=role,
        epoch=epoch,
        role_epoch=epoch,
        primary=primary if role is Role.REPLICA else None,
        fenced=False,
    )


def fence(state: RoleState, epoch: int, claimed: Role | None = None) -> RoleState:
    """A proxy's ``SG.FENCE``: it routes by a topology of ``epoch`` that gives us ``claimed``."""
    if epoch < state.epoch:
        raise StaleEpoch(state.epoch)
    if epoch == state.epoch:
        return state
    fenced = state.fenced or (state.role is Role.PRIMARY and claimed is not Role.PRIMARY)
    if state.role is Role.PRIMARY and claimed is Role.PRIMARY:
        fenced = False  # the newer topology still names us primary
    return attrs.evolve(state, epoch=epoch, fenced=fenced)


def manual(state: RoleState, role: Role, primary: str | None = None) -> RoleState:
    """REPLICAOF (an operator, no epoch): change role under the current epoch."""
    if role not in TRANSITIONS[state.role]:
        raise IllegalTransition(f"{state.role.value} -> {role.value}")
    return RoleState(
        role=role,
        epoch=state.epoch,
        role_epoch=state.epoch,
        primary=primary if role is Role.REPLICA else None,
        fenced=False,
    )
