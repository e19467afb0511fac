"""Ray on booked clusters, the coordinator's part: what each member's agent reports about its
Ray node, the head's address for the members that join it, and the cluster's Ray view (and
dashboard address, for the job proxy) for its renter alone.

The lease's own state stays the market's business: an agent reports its members `ready` only
once its Ray node has joined (the head: once it has seen every member's node alive), so a
`ready` lease is a joined Ray cluster. See docs/ray.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpupool.domain.errors import Conflict, InvalidRequest, NotFound
from gpupool.domain.leases import ACTIVE_STATES, Lease
from gpupool.domain.models import Account
from gpupool.domain.ray import RayNodeState, RayRole, check_head_addresses
from gpupool.services.market import own_cluster
from gpupool.services.ports import Clock, Database, RayNodeRecord, Transaction


@dataclass(frozen=True, slots=True)
class RayReport:
    role: RayRole
    state: RayNodeState
    address: str
    mesh: bool
    node_id: str | None = None
    gcs_address: str | None = None
    dashboard_url: str | None = None
    reason: str = ""
    peer: str | None = None  # the address the agent's request came from, as the server saw it


@dataclass(frozen=True, slots=True)
class RayView:
    lease: Lease
    nodes: tuple[RayNodeRecord, ...]

    @property
    def head(self) -> RayNodeRecord | None:
        return next((n for n in self.nodes if n.role == RayRole.HEAD), None)


class RayClusters:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    # agents -------------------------------------------------------------------------------

    def report(self, worker_id: str, lease_id: str, report: RayReport) -> None:
        refused = check_head_addresses(
            report.address,
            report.gcs_address,
            report.dashboard_url,
            peer=report.peer if report.mesh else None,
        )
        if refused:
            raise InvalidRequest(refused)
        with self._db.transaction() as tx:
            lease = _member_lease(tx, worker_id, lease_id)
            if lease.state not in ACTIVE_STATES and report.state not in (
                RayNodeState.FAILED,
                RayNodeState.STOPPED,
            ):
                raise Conflict(f"lease {lease_id} is {lease.state}; stop its Ray node")
            head_worker = _head_worker(tx, lease)
            if (report.role is RayRole.HEAD) != (worker_id == head_worker):
                raise Conflict(f"this worker's Ray node on {lease_id} is not the {report.role}")
            tx.ray.save(
                RayNodeRecord(
                    lease_id=lease_id,
                    worker_id=worker_id,
                    role=report.role.value,
                    state=report.state.value,
                    address=report.address,
                    mesh=report.mesh,
                    node_id=report.node_id,
                    gcs_address=report.gcs_address,
                    dashboard_url=report.dashboard_url,
                    reason=report.reason,
                    updated_at=self._clock.now(),
                )
            )

    def head_for_member(self, worker_id: str, lease_id: str) -> RayNodeRecord | None:
        """The lease's Ray head as reported, for a worker that holds a member of the lease."""
        with self._db.transaction() as tx:
            lease = _member_lease(tx, worker_id, lease_id)
            return RayView(lease, tuple(tx.ray.nodes(lease_id))).head

    # renters ------------------------------------------------------------------------------

    def view(self, renter: Account, cluster_id: str) -> RayView:
        """The Ray nodes of the renter's own cluster (NotFound for anyone else's)."""
        with self._db.transaction() as tx:
            cluster = own_cluster(tx, renter, cluster_id)
            lease = tx.leases.lease_of_cluster(cluster.id)
            return RayView(lease, tuple(tx.ray.nodes(lease.id)))

    def dashboard(self, renter: Account, cluster_id: str) -> str:
        """Where the job proxy reaches the cluster's Ray dashboard: only while the lease runs
        and its head has started."""
        view = self.view(renter, cluster_id)
        if view.lease.state not in ACTIVE_STATES:
            raise Conflict(
                f"cluster {cluster_id} is {view.lease.state}; its Ray cluster is gone",
                state=str(view.lease.state),
            )
        head = view.head
        if head is None or head.dashboard_url is None or head.state in ("failed", "stopped"):
            raise Conflict(f"the Ray head of {cluster_id} is not running yet")
        return head.dashboard_url


def _member_lease(tx: Transaction, worker_id: str, lease_id: str) -> Lease:
    lease = tx.leases.lease_for_update(lease_id)
    if lease is None or not tx.leases.members(lease_id, worker_id):
        raise NotFound(f"no lease {lease_id} on this worker")
    return lease


def _head_worker(tx: Transaction, lease: Lease) -> str:
    return next(
        m.worker_id for m in tx.leases.members(lease.id) if m.device_id == lease.head_device_id
    )
