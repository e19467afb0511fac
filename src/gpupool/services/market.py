"""The market: booking clusters, and every change in a lease's life.

Commands (book, extend, terminate) come from renters; member reports come from agents; the
coordinator's ticker calls `tick` to end leases at T2, fail leases that never became ready,
and settle leases that are ending. Each runs in one transaction and leaves the affected
workers' lease version bumped, which wakes their agents' long polls.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gpupool.domain import leases as rules
from gpupool.domain import ledger
from gpupool.domain.errors import Conflict, Forbidden, InsufficientCapacity, NotFound
from gpupool.domain.leases import (
    ACTIVE_STATES,
    Lease,
    LeaseMember,
    LeaseState,
    Member,
    MemberState,
)
from gpupool.domain.mesh import ApartFromOpenLeases
from gpupool.domain.models import (
    Account,
    BookingRequest,
    Cluster,
    Device,
    Role,
    Shortfall,
    WorkerStatus,
)
from gpupool.domain.placement import Offer, Placed, Placement, outside_pool
from gpupool.domain.placement import offers as group_offers
from gpupool.services.ids import new_id
from gpupool.services.ledger import post
from gpupool.services.ports import Clock, Database, Transaction
from gpupool.services.stake import in_pool

BOOKING_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class ClusterView:
    cluster: Cluster
    lease: Lease
    members: tuple[LeaseMember, ...]
    events: tuple[tuple[float, LeaseState, str], ...]


@dataclass(frozen=True, slots=True)
class Quote:
    """A booking's dry run: the devices placement picks and what they cost, in micro-units."""

    placed: Placed
    hours: int
    balance_micros: int  # the renter's available funds now

    @property
    def total_micros(self) -> int:
        return self.placed.price_micros_per_hour * self.hours

    @property
    def affordable(self) -> bool:
        return self.balance_micros >= self.total_micros


class _LostRace(Exception):
    """Another booking claimed one of the chosen devices first."""


class _Duplicate(Exception):
    """A concurrent request with the same idempotency key booked first."""

    def __init__(self, lease_id: str) -> None:
        self.lease_id = lease_id


class Market:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        placement: Placement,
        hour_seconds: float = 3600.0,
        provision_deadline: float = 300.0,
        *,
        require_stake: bool = True,
    ) -> None:
        self._db = db
        self._clock = clock
        self._placement = placement
        self.hour_seconds = hour_seconds
        self.provision_deadline = provision_deadline
        self.require_stake = require_stake

    # renters' commands -------------------------------------------------------------

    def book(
        self, renter: Account, request: BookingRequest, idempotency_key: str | None = None
    ) -> ClusterView:
        """Book a cluster. With an idempotency key, a retry of the same request (or a
        concurrent duplicate) gets the first booking back and pays nothing more."""
        _require_renter(renter)
        key = f"book:{renter.id}:{idempotency_key}" if idempotency_key else None
        for _ in range(BOOKING_ATTEMPTS):
            try:
                if key is not None and (booked := self._booked(key)) is not None:
                    return booked
                return self._try_book(renter, request, key)
            except _LostRace:
                continue
            except _Duplicate as duplicate:
                with self._db.transaction() as tx:
                    return _view(tx, _cluster_of(tx, duplicate.lease_id))
        raise Conflict("the matching devices were taken by concurrent bookings; try again")

    def _booked(self, key: str) -> ClusterView | None:
        with self._db.transaction() as tx:
            entry = tx.ledger.entry(key)
            if entry is None:
                return None
            return _view(tx, _cluster_of(tx, str(entry.move.memo["lease"])))

    def _try_book(
        self, renter: Account, request: BookingRequest, key: str | None = None
    ) -> ClusterView:
        now = self._clock.now()
        with self._db.transaction() as tx:
            placed = self._place(tx, request)
            suffix = new_id("x")[2:]
            cluster = Cluster("c-" + suffix, renter.id, request, now, placed.predicted_diameter_ms)
            lease = Lease(
                id="l-" + suffix,
                cluster_id=cluster.id,
                renter_id=renter.id,
                state=LeaseState.PENDING,
                t1=now,
                t2=now + request.hours * self.hour_seconds,
                hours=request.hours,
                head_device_id=placed.head.id,
                price_micros_per_hour=placed.price_micros_per_hour,
                reason="",
                updated_at=now,
            )
            members = [
                LeaseMember(lease.id, d.id, d.worker_id, MemberState.ASSIGNED, "", now)
                for d in placed.devices
            ]
            tx.leases.add(cluster, lease, members)
            if not tx.leases.claim_devices(lease.id, [d.id for d in placed.devices]):
                raise _LostRace
            # The full price into escrow, or (402) no booking at all: same transaction.
            prices = {d.id: d.spec.price_micros_per_hour for d in placed.devices}
            escrow = ledger.escrow_moves(
                ledger.MoveKind.ESCROW,
                key or f"escrow:{lease.id}",
                renter.id,
                lease.id,
                prices,
                lease.hours,
            )
            posted = post(tx, escrow, now)
            if not posted.fresh:  # a duplicate with this key won meanwhile: roll ours back
                raise _Duplicate(str(posted.entry.move.memo["lease"]))
            tx.leases.add_event(lease.id, now, LeaseState.PENDING, "booked")
            tx.workers.bump_lease_version(sorted({d.worker_id for d in placed.devices}))
            return _view(tx, cluster)

    def _pool(self, tx: Transaction) -> tuple[list[Device], list[Device]]:
        """Every device, and those a booking may get (staked, where stake is required)."""
        devices = tx.workers.devices()
        return devices, (in_pool(tx, devices) if self.require_stake else devices)

    def _place(self, tx: Transaction, request: BookingRequest) -> Placed:
        """The devices a booking gets now, or InsufficientCapacity naming why none."""
        devices, pool = self._pool(tx)
        placement = ApartFromOpenLeases(self._placement, _open_lease_workers(tx))
        placed = placement.place(request, pool)
        if isinstance(placed, Shortfall):
            pooled = {d.id for d in pool}
            short = outside_pool(request, placed, [d for d in devices if d.id not in pooled])
            raise InsufficientCapacity(
                "too few devices match this booking: " + short.describe(),
                requested=short.requested,
                matching=short.matching,
                excluded_by=short.excluded_by,
            )
        return placed

    def quote(self, renter: Account, request: BookingRequest) -> Quote:
        """What booking `request` now would get and cost, booking nothing: the same pool and
        placement as `book`, so a booking made next gets these devices at this price unless
        the pool changed in between (another booking, a worker gone, a new measurement)."""
        _require_renter(renter)
        with self._db.transaction() as tx:
            placed = self._place(tx, request)
            main = ledger.renter(renter.id)
            balance = tx.ledger.balances([main]).get(main, 0)
        return Quote(placed, request.hours, balance)

    def offers(self, renter: Account, request: BookingRequest, *, any_kind: bool) -> list[Offer]:
        """What can be booked now: the pool's available devices meeting `request`'s hard
        constraints (its size aside), grouped alike (domain.placement.offers)."""
        _require_renter(renter)
        with self._db.transaction() as tx:
            _, pool = self._pool(tx)
        return group_offers(request, pool, any_kind=any_kind)

    def get(self, renter: Account, cluster_id: str) -> ClusterView:
        with self._db.transaction() as tx:
            return _view(tx, own_cluster(tx, renter, cluster_id))

    def clusters(self, renter: Account) -> list[ClusterView]:
        _require_renter(renter)
        with self._db.transaction() as tx:
            return [_view(tx, c) for c in tx.leases.clusters(renter.id)]

    def extend(
        self, renter: Account, cluster_id: str, hours: int, idempotency_key: str | None = None
    ) -> ClusterView:
        """Extend by `hours`; with an idempotency key, a retry extends (and pays) once."""
        with self._db.transaction() as tx:
            cluster = own_cluster(tx, renter, cluster_id)
            lease = _locked_lease(tx, cluster.id)
            key = f"extend:{lease.id}:{lease.hours + hours}"
            if idempotency_key:
                key = f"extend:{renter.id}:{idempotency_key}"
                if tx.ledger.entry(key) is not None:  # the lease is locked: no race
                    return _view(tx, cluster)
            t2 = rules.extend(lease.state, lease.t2, hours, self.hour_seconds)
            now = self._clock.now()
            _escrow_extension(tx, lease, hours, now, key)
            tx.leases.save_lease(replace(lease, t2=t2, hours=lease.hours + hours, updated_at=now))
            tx.leases.add_event(lease.id, now, lease.state, f"extended by {hours} h")
            tx.workers.bump_lease_version(_worker_ids(tx, lease.id))
            return _view(tx, cluster)

    def terminate(self, renter: Account, cluster_id: str) -> ClusterView:
        with self._db.transaction() as tx:
            cluster = own_cluster(tx, renter, cluster_id)
            lease = _locked_lease(tx, cluster.id)
            self._move(tx, lease, rules.terminate(lease.state), "terminated by the renter")
            return _view(tx, cluster)

    # agents' reports ---------------------------------------------------------------

    def report(
        self, worker_id: str, lease_id: str, device_id: str, state: MemberState, reason: str
    ) -> LeaseState:
        """An agent says how its part of a lease stands; returns the lease's state after."""
        with self._db.transaction() as tx:
            lease = tx.leases.lease_for_update(lease_id)
            member = (
                next((m for m in tx.leases.members(lease_id) if m.device_id == device_id), None)
                if lease
                else None
            )
            if lease is None or member is None or member.worker_id != worker_id:
                raise NotFound(f"no lease {lease_id} on device {device_id} of this worker")
            if state in (MemberState.PROVISIONING, MemberState.READY) and (
                lease.state not in ACTIVE_STATES
            ):
                raise Conflict(f"lease {lease_id} is {lease.state}; tear it down")
            rules.check_member_move(member.state, state)
            now = self._clock.now()
            tx.leases.set_member(lease_id, device_id, state, reason, now)
            if state is MemberState.RELEASED:
                tx.leases.release_device(device_id, lease_id)
            self._settle(tx, lease, reason if state is MemberState.FAILED else "")
            settled = tx.leases.lease(lease_id)
            assert settled is not None
            return settled.state

    # the ticker ---------------------------------------------------------------------

    def tick(self) -> None:
        """End leases at T2, fail leases past the provisioning deadline, settle ending ones."""
        now = self._clock.now()
        with self._db.transaction() as tx:
            candidates = tx.leases.leases_in(ACTIVE_STATES | {LeaseState.ENDING})
        for candidate in candidates:
            with self._db.transaction() as tx:
                lease = tx.leases.lease_for_update(candidate.id)
                if lease is None:
                    continue
                if rules.is_due_to_end(lease.state, lease.t2, now):
                    self._move(tx, lease, LeaseState.ENDING, "T2 reached")
                elif rules.missed_provisioning_deadline(
                    lease.state, lease.t1, now, self.provision_deadline
                ):
                    waiting = [
                        m.device_id
                        for m in tx.leases.members(lease.id)
                        if m.state is not MemberState.READY
                    ]
                    self._move(
                        tx,
                        lease,
                        LeaseState.FAILED,
                        "not ready within the provisioning deadline: " + ", ".join(waiting),
                    )
                else:
                    self._settle(tx, lease, "")

    # internals ------------------------------------------------------------------------

    def _move(self, tx: Transaction, lease: Lease, state: LeaseState, note: str) -> None:
        """Apply a command's state change, release members that never started, and settle."""
        now = self._clock.now()
        reason = note if state is LeaseState.FAILED else lease.reason
        lease = replace(lease, state=state, reason=reason, updated_at=now)
        tx.leases.save_lease(lease)
        tx.leases.add_event(lease.id, now, state, note)
        for m in tx.leases.members(lease.id):
            if m.state is MemberState.ASSIGNED:
                tx.leases.set_member(
                    lease.id, m.device_id, MemberState.RELEASED, "never started", now
                )
                tx.leases.release_device(m.device_id, lease.id)
        tx.workers.bump_lease_version(_worker_ids(tx, lease.id))
        self._settle(tx, lease, "")

    def _settle(self, tx: Transaction, lease: Lease, failure: str) -> None:
        """Move the lease to the state its members' reports imply."""
        members = tx.leases.members(lease.id)
        up = {w: _worker_up(tx, w) for w in {m.worker_id for m in members}}
        state = rules.state_after_reports(
            lease.state,
            [
                Member(m.state, up[m.worker_id], m.device_id == lease.head_device_id)
                for m in members
            ],
        )
        if state is lease.state:
            return
        note = failure or _SETTLED_NOTES.get(state, "")
        if state is LeaseState.FAILED:
            self._move(tx, lease, state, note)
            return
        now = self._clock.now()
        tx.leases.save_lease(replace(lease, state=state, updated_at=now))
        tx.leases.add_event(lease.id, now, state, note)
        if state is LeaseState.ENDED:
            for m in members:
                tx.leases.release_device(m.device_id, lease.id)
        tx.workers.bump_lease_version(sorted(up))


_SETTLED_NOTES = {
    LeaseState.ENDED: "every member released its device",
    LeaseState.READY: "every member is ready",
    LeaseState.PROVISIONING: "members are setting up",
    LeaseState.FAILED: "a member failed",
    LeaseState.DEGRADED: "a member was lost; the others run on",
}


def _escrow_extension(tx: Transaction, lease: Lease, hours: int, now: float, key: str) -> None:
    """Each device's booked price x the added hours into its escrow (the price a device
    was booked at is what its escrow holds per booked hour)."""
    prefix = ledger.escrow_prefix(lease.id)
    held = tx.ledger.balances_like(prefix)
    prices = {a.removeprefix(prefix): v // lease.hours for a, v in held.items() if v}
    if prices:
        move = ledger.escrow_moves(
            ledger.MoveKind.EXTEND, key, lease.renter_id, lease.id, prices, hours
        )
        post(tx, move, now)


def _worker_up(tx: Transaction, worker_id: str) -> bool:
    worker = tx.workers.get(worker_id)
    return worker is not None and worker.status is WorkerStatus.UP


def _require_renter(account: Account) -> None:
    if account.role is not Role.RENTER:
        raise Forbidden("only a renter account can book and manage clusters")


def own_cluster(tx: Transaction, renter: Account, cluster_id: str) -> Cluster:
    _require_renter(renter)
    cluster = tx.leases.cluster(cluster_id)
    if cluster is None or cluster.renter_id != renter.id:
        raise NotFound(f"no cluster {cluster_id}")
    return cluster


def _cluster_of(tx: Transaction, lease_id: str) -> Cluster:
    lease = tx.leases.lease(lease_id)
    cluster = tx.leases.cluster(lease.cluster_id) if lease else None
    assert cluster is not None
    return cluster


def _locked_lease(tx: Transaction, cluster_id: str) -> Lease:
    lease = tx.leases.lease_for_update(tx.leases.lease_of_cluster(cluster_id).id)
    assert lease is not None
    return lease


def _open_lease_workers(tx: Transaction) -> list[frozenset[str]]:
    """The workers of each lease whose mesh interfaces may still be up (docs/mesh.md)."""
    open_leases = tx.leases.leases_in(ACTIVE_STATES | {LeaseState.ENDING})
    return [frozenset(_worker_ids(tx, lease.id)) for lease in open_leases]


def _worker_ids(tx: Transaction, lease_id: str) -> list[str]:
    return sorted({m.worker_id for m in tx.leases.members(lease_id)})


def _view(tx: Transaction, cluster: Cluster) -> ClusterView:
    lease = tx.leases.lease_of_cluster(cluster.id)
    return ClusterView(
        cluster, lease, tuple(tx.leases.members(lease.id)), tuple(tx.leases.events(lease.id))
    )
