"""The lease life cycle: states, the transitions commands may make, and how member reports
move the lease.

A lease's state is derived from its members' states while it is active; commands
(terminate, extend, expiry at T2, a provisioning deadline) move it from outside:

    pending → provisioning → ready ⇄ degraded → ending → ended
        └──────────┴───────────┴─────────┴────→ failed

A lease is `ready` when every member is; once it was ready, a member that dies (its agent
reports it failed or released, for example because its Ray node died) makes it `degraded`,
and the lease runs on with the members left; the death of the Ray head member fails it, with
that member's reason. Before the lease was ever ready, any member's failure fails it
(bring-up did not succeed).

Agents run a lease while it is active (pending, provisioning, ready, degraded) and tear it down as
soon as it is not; a lease that is `ending` becomes `ended` when every member has released
its device (or its worker is down and cannot answer).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from gpupool.domain.errors import Conflict, InvalidRequest


class LeaseState(StrEnum):
    PENDING = "pending"
    PROVISIONING = "provisioning"
    READY = "ready"
    DEGRADED = "degraded"
    ENDING = "ending"
    ENDED = "ended"
    FAILED = "failed"


class MemberState(StrEnum):
    """One device's part in a lease, as its agent reports it."""

    ASSIGNED = "assigned"
    PROVISIONING = "provisioning"
    READY = "ready"
    RELEASED = "released"
    FAILED = "failed"


ACTIVE_STATES = frozenset(
    {LeaseState.PENDING, LeaseState.PROVISIONING, LeaseState.READY, LeaseState.DEGRADED}
)
# States in which the lease has been ready: a member lost here degrades it, not fails it.
RUNNING_STATES = frozenset({LeaseState.READY, LeaseState.DEGRADED})
TERMINAL_STATES = frozenset({LeaseState.ENDED, LeaseState.FAILED})

# What an agent may report for a member, given what the member was.
_MEMBER_MOVES: dict[MemberState, frozenset[MemberState]] = {
    MemberState.ASSIGNED: frozenset(MemberState),
    MemberState.PROVISIONING: frozenset(
        {MemberState.PROVISIONING, MemberState.READY, MemberState.FAILED, MemberState.RELEASED}
    ),
    MemberState.READY: frozenset({MemberState.READY, MemberState.FAILED, MemberState.RELEASED}),
    MemberState.FAILED: frozenset({MemberState.FAILED, MemberState.RELEASED}),
    MemberState.RELEASED: frozenset({MemberState.RELEASED}),
}


def check_member_move(current: MemberState, reported: MemberState) -> None:
    if reported not in _MEMBER_MOVES[current]:
        raise Conflict(f"a member that is {current} cannot become {reported}")


@dataclass(frozen=True, slots=True)
class Member:
    state: MemberState
    worker_up: bool
    head: bool = False

    @property
    def lost(self) -> bool:
        """Its agent reported it gone. A worker that merely stops answering is not taken
        for lost: heartbeats can pause while the lease's processes run on."""
        return self.state in (MemberState.FAILED, MemberState.RELEASED)


def state_after_reports(current: LeaseState, members: Iterable[Member]) -> LeaseState:
    """The lease state once its members are as given (no command involved)."""
    members = list(members)
    if current in TERMINAL_STATES:
        return current
    if current is LeaseState.ENDING:
        settled = all(m.state is MemberState.RELEASED or not m.worker_up for m in members)
        return LeaseState.ENDED if settled else LeaseState.ENDING
    states = [m.state for m in members]
    if current in RUNNING_STATES:
        if any(m.lost and m.head for m in members):
            return LeaseState.FAILED
        return LeaseState.DEGRADED if any(m.lost for m in members) else LeaseState.READY
    if any(s in (MemberState.FAILED, MemberState.RELEASED) for s in states):
        return LeaseState.FAILED
    if states and all(s is MemberState.READY for s in states):
        return LeaseState.READY
    if any(s in (MemberState.PROVISIONING, MemberState.READY) for s in states):
        return LeaseState.PROVISIONING
    return LeaseState.PENDING


def terminate(current: LeaseState) -> LeaseState:
    if current not in ACTIVE_STATES:
        raise Conflict(f"the lease is already {current}", state=str(current))
    return LeaseState.ENDING


def extend(current: LeaseState, t2: float, hours: int, hour_seconds: float) -> float:
    """The new end time T2 after adding whole hours to an active lease."""
    if hours < 1:
        raise InvalidRequest("extend by at least one whole hour")
    if current not in ACTIVE_STATES:
        raise Conflict(
            f"only an active lease can be extended; this one is {current}", state=str(current)
        )
    return t2 + hours * hour_seconds


def is_due_to_end(current: LeaseState, t2: float, now: float) -> bool:
    return current in ACTIVE_STATES and now >= t2


def missed_provisioning_deadline(
    current: LeaseState, t1: float, now: float, deadline_seconds: float
) -> bool:
    return current in (LeaseState.PENDING, LeaseState.PROVISIONING) and now - t1 > deadline_seconds


@dataclass(frozen=True, slots=True)
class LeaseMember:
    lease_id: str
    device_id: str
    worker_id: str
    state: MemberState
    reason: str
    updated_at: float


@dataclass(frozen=True, slots=True)
class Lease:
    """A cluster's lease on its devices from T1 to T2. A cluster has exactly one lease, and
    they share an id suffix: cluster `c-xyz` holds lease `l-xyz`."""

    id: str
    cluster_id: str
    renter_id: str
    state: LeaseState
    t1: float
    t2: float
    hours: int
    head_device_id: str
    price_micros_per_hour: int
    reason: str
    updated_at: float
