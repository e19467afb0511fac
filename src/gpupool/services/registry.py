"""The worker registry: agents register their machine and devices, send heartbeats, and learn
which leases they should be running; workers that stop sending heartbeats go down."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from gpupool.domain.connectivity import connectivity_tier
from gpupool.domain.coordinates import Coordinate
from gpupool.domain.errors import Forbidden, InvalidRequest
from gpupool.domain.leases import ACTIVE_STATES, Lease, LeaseMember
from gpupool.domain.liveness import MISSED_HEARTBEATS_FOR_DOWN
from gpupool.domain.models import (
    Account,
    Device,
    DeviceSpec,
    Location,
    Role,
    SupplierAttributes,
    Worker,
    WorkerStatus,
)
from gpupool.domain.stake import StakeState
from gpupool.services.ports import Clock, Database
from gpupool.services.stake import stake_states


@dataclass(frozen=True, slots=True)
class Registration:
    worker_id: str
    public_key: str
    hostname: str
    location: Location
    datacenter_tier: int
    soc2_claimed: bool
    devices: tuple[DeviceSpec, ...]
    agent_version: str
    sandbox: str


@dataclass(frozen=True, slots=True)
class NetworkReport:
    """What a heartbeat says about the worker's network position."""

    coordinate: Coordinate | None
    probe_host: str | None
    probe_port: int | None


@dataclass(frozen=True, slots=True)
class Assignment:
    """A lease an agent should be running, with the members on this worker."""

    lease: Lease
    members: tuple[LeaseMember, ...]
    local_device_ids: tuple[str, ...]
    image: str | None = None  # the booking's sealed-lease options
    egress: bool = False


@dataclass(frozen=True, slots=True)
class WorkerView:
    worker: Worker
    devices: tuple[Device, ...]
    stakes: dict[str, StakeState] = field(default_factory=dict)  # by device id


PROBE_PEERS = 4


class Registry:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        heartbeat_seconds: float,
        rng: random.Random | None = None,
    ) -> None:
        self._rng = rng or random.Random()  # noqa: S311 (spreads probes, guards nothing)
        self._db = db
        self._clock = clock
        self.heartbeat_seconds = heartbeat_seconds

    def register(self, supplier: Account, reg: Registration) -> WorkerView:
        if supplier.role is not Role.SUPPLIER:
            raise Forbidden("only a supplier account can register workers")
        names = [d.local_name for d in reg.devices]
        if len(set(names)) != len(names):
            raise InvalidRequest("device names must be unique within a worker")
        now = self._clock.now()
        with self._db.transaction() as tx:
            known = tx.workers.get(reg.worker_id)
            if known is not None and known.supplier_id != supplier.id:
                raise Forbidden(f"worker {reg.worker_id} belongs to another supplier")
            worker = Worker(
                id=reg.worker_id,
                supplier_id=supplier.id,
                public_key=reg.public_key,
                hostname=reg.hostname,
                location=reg.location,
                attributes=SupplierAttributes(
                    reg.datacenter_tier, reg.soc2_claimed, supplier.soc2_verified
                ),
                status=WorkerStatus.UP,
                last_heartbeat=now,
                registered_at=known.registered_at if known else now,
                agent_version=reg.agent_version,
                sandbox=reg.sandbox,
            )
            tx.workers.save(worker)
            tx.workers.set_devices(reg.worker_id, reg.devices)
            tx.workers.heartbeat(reg.worker_id, now)
            return WorkerView(worker, tuple(tx.workers.devices(reg.worker_id)))

    def heartbeat(
        self, worker_id: str, network: NetworkReport | None = None
    ) -> tuple[int, list[Assignment]]:
        now = self._clock.now()
        with self._db.transaction() as tx:
            tx.workers.heartbeat(worker_id, now)
            if network is not None:
                tx.workers.report_network(
                    worker_id, now, network.coordinate, network.probe_host, network.probe_port
                )
        return self.assignments(worker_id)

    def report_bandwidth(self, worker_id: str, upload_mbps: float, download_mbps: float) -> int:
        """Store a bandwidth measurement; the connectivity tier it earns.

        `upload_mbps` is the coordinator's own timing of the agent's upload; `download_mbps`
        is the agent's timing of a payload the coordinator sent (a supplier could overstate
        it, but the tier takes the slower direction, so the coordinator-timed upload bounds
        what overstating can buy)."""
        for name, value in (("upload", upload_mbps), ("download", download_mbps)):
            if not (math.isfinite(value) and value > 0):
                raise InvalidRequest(f"{name} rate must be a positive number of Mbit/s")
        tier = connectivity_tier(upload_mbps, download_mbps)
        with self._db.transaction() as tx:
            tx.workers.report_bandwidth(worker_id, upload_mbps, download_mbps, tier)
        return tier

    def probe_peers(self, worker_id: str) -> list[tuple[str, str, int]]:
        """A few other workers to measure RTT to this round: PROBE_PEERS drawn at random
        from every up worker that answers probes, so each round brings new neighbours
        (Vivaldi needs both near and far peers; random ones give both)."""
        with self._db.transaction() as tx:
            targets = tx.workers.probe_targets(worker_id)
        return self._rng.sample(targets, min(PROBE_PEERS, len(targets)))

    def assignments(self, worker_id: str) -> tuple[int, list[Assignment]]:
        """The worker's lease version and the leases it should be running now."""
        with self._db.transaction() as tx:
            version = tx.workers.lease_version(worker_id)
            out = []
            for lease in tx.leases.leases_of_worker(worker_id, ACTIVE_STATES):
                members = tuple(tx.leases.members(lease.id))
                local = tuple(m.device_id for m in members if m.worker_id == worker_id)
                cluster = tx.leases.cluster(lease.cluster_id)
                request = cluster.request if cluster is not None else None
                out.append(
                    Assignment(
                        lease,
                        members,
                        local,
                        request.image if request else None,
                        bool(request and request.egress),
                    )
                )
        return version, out

    def lease_version(self, worker_id: str) -> int:
        with self._db.transaction() as tx:
            return tx.workers.lease_version(worker_id)

    def mark_stale_down(self) -> list[str]:
        cutoff = self._clock.now() - self.heartbeat_seconds * MISSED_HEARTBEATS_FOR_DOWN
        with self._db.transaction() as tx:
            return tx.workers.mark_down_before(cutoff)

    def workers(self, viewer: Account | None) -> list[WorkerView]:
        """Suppliers see their own workers; renters and the admin (None) see the pool."""
        supplier = viewer.id if viewer and viewer.role is Role.SUPPLIER else None
        with self._db.transaction() as tx:
            workers = tx.workers.list_all(supplier)
            devices = {w.id: tuple(tx.workers.devices(w.id)) for w in workers}
            stakes = stake_states(tx, [d for ds in devices.values() for d in ds])
            return [
                WorkerView(w, devices[w.id], {d.id: stakes[d.id] for d in devices[w.id]})
                for w in workers
            ]
