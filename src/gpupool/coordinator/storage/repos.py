"""Repositories over one SQLAlchemy connection: the storage side of `services.ports`.

Rows become domain values here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from gpupool.coordinator.storage.ledger import SqlLedger
from gpupool.coordinator.storage.mesh import SqlMesh
from gpupool.coordinator.storage.proofs import SqlProofs
from gpupool.coordinator.storage.ray import SqlRayNodes
from gpupool.coordinator.storage.tables import (
    accounts,
    clusters,
    devices,
    lease_events,
    lease_members,
    leases,
    nonces,
    workers,
)
from gpupool.coordinator.storage.tasks import SqlTasks
from gpupool.domain.coordinates import Coordinate
from gpupool.domain.leases import Lease, LeaseMember, LeaseState, MemberState
from gpupool.domain.models import (
    Account,
    BookingRequest,
    Cluster,
    Device,
    DeviceKind,
    DeviceSpec,
    DeviceStatus,
    Location,
    Role,
    SecurityTier,
    SupplierAttributes,
    Worker,
    WorkerStatus,
)


def _account(row: Any) -> Account:
    return Account(row.id, Role(row.role), row.name, row.created_at, row.soc2_verified)


class SqlAccounts:
    def __init__(self, conn: Connection) -> None:
        self._c = conn

    def add(self, account: Account, key_hash: str) -> None:
        self._c.execute(
            accounts.insert().values(
                id=account.id,
                role=account.role.value,
                name=account.name,
                key_hash=key_hash,
                created_at=account.created_at,
                soc2_verified=account.soc2_verified,
            )
        )

    def by_key_hash(self, key_hash: str) -> Account | None:
        row = self._c.execute(accounts.select().where(accounts.c.key_hash == key_hash)).first()
        return _account(row) if row else None

    def get(self, account_id: str) -> Account | None:
        row = self._c.execute(accounts.select().where(accounts.c.id == account_id)).first()
        return _account(row) if row else None

    def set_soc2_verified(self, account_id: str, verified: bool) -> None:
        self._c.execute(
            accounts.update().where(accounts.c.id == account_id).values(soc2_verified=verified)
        )


_WORKER_COLUMNS = [*workers.c, accounts.c.soc2_verified]


def _worker(row: Any) -> Worker:
    return Worker(
        id=row.id,
        supplier_id=row.supplier_id,
        public_key=row.public_key,
        hostname=row.hostname,
        location=Location(row.latitude, row.longitude, row.region),
        attributes=SupplierAttributes(row.datacenter_tier, row.soc2_claimed, row.soc2_verified),
        status=WorkerStatus(row.status),
        last_heartbeat=row.last_heartbeat,
        registered_at=row.registered_at,
        agent_version=row.agent_version,
        sandbox=row.sandbox,
        upload_mbps=row.upload_mbps,
        download_mbps=row.download_mbps,
        connectivity_tier=row.connectivity_tier,
    )


def _spec_values(spec: DeviceSpec) -> dict[str, Any]:
    return {
        "kind": spec.kind.value,
        "model": spec.model,
        "memory_mb": spec.memory_mb,
        "price_micros": spec.price_micros_per_hour,
        "uuid": spec.uuid,
        "cores": ",".join(map(str, spec.cores)),
        "driver_version": spec.driver_version,
        "cuda_version": spec.cuda_version,
        "pci_bus_id": spec.pci_bus_id,
    }


def _device(row: Any) -> Device:
    spec = DeviceSpec(
        local_name=row.local_name,
        kind=DeviceKind(row.kind),
        model=row.model,
        memory_mb=row.memory_mb,
        price_micros_per_hour=row.price_micros,
        uuid=row.uuid,
        cores=tuple(int(c) for c in row.cores.split(",") if c),
        driver_version=row.driver_version,
        cuda_version=row.cuda_version,
        pci_bus_id=row.pci_bus_id,
    )
    return Device(
        id=row.id,
        worker_id=row.worker_id,
        supplier_id=row.supplier_id,
        spec=spec,
        status=DeviceStatus(row.status),
        worker_status=WorkerStatus(row.worker_status),
        location=Location(row.latitude, row.longitude, row.region),
        attributes=SupplierAttributes(row.datacenter_tier, row.soc2_claimed, row.soc2_verified),
        verified=bool(row.verified),
        flops=row.flops,
        challenged_at=row.challenged_at,
        coordinate=_coordinate(row),
        connectivity_tier=row.connectivity_tier,
        features=frozenset(row.sandbox.split("+")),
    )


def _coordinate(row: Any) -> Coordinate | None:
    if row.coord_vec is None or row.coord_height is None or row.coord_error is None:
        return None
    try:
        return Coordinate(tuple(float(v) for v in row.coord_vec), row.coord_height, row.coord_error)
    except (TypeError, ValueError):
        return None


class SqlWorkers:
    def __init__(self, conn: Connection) -> None:
        self._c = conn

    def _select(self) -> sa.Select[Any]:
        return sa.select(*_WORKER_COLUMNS).join(accounts, accounts.c.id == workers.c.supplier_id)

    def get(self, worker_id: str) -> Worker | None:
        row = self._c.execute(self._select().where(workers.c.id == worker_id)).first()
        return _worker(row) if row else None

    def save(self, worker: Worker) -> None:
        values = {
            "supplier_id": worker.supplier_id,
            "public_key": worker.public_key,
            "hostname": worker.hostname,
            "region": worker.location.region,
            "latitude": worker.location.latitude,
            "longitude": worker.location.longitude,
            "datacenter_tier": worker.attributes.datacenter_tier,
            "soc2_claimed": worker.attributes.soc2_claimed,
            "status": worker.status.value,
            "last_heartbeat": worker.last_heartbeat,
            "registered_at": worker.registered_at,
            "agent_version": worker.agent_version,
            "sandbox": worker.sandbox,
        }
        updated = self._c.execute(
            workers.update().where(workers.c.id == worker.id).values(**values)
        ).rowcount
        if not updated:
            self._c.execute(workers.insert().values(id=worker.id, lease_version=0, **values))

    def set_devices(self, worker_id: str, specs: Sequence[DeviceSpec]) -> None:
        known = {
            row.local_name: row
            for row in self._c.execute(devices.select().where(devices.c.worker_id == worker_id))
        }
        for spec in specs:
            did = f"{worker_id}:{spec.local_name}"
            if spec.local_name in known:
                values = {"present": True, **_spec_values(spec)}
                row = known[spec.local_name]
                if (row.kind, row.model, row.memory_mb) != (
                    spec.kind.value,
                    spec.model,
                    spec.memory_mb,
                ):
                    # What the device is was fixed by the challenge it passed: a new claim
                    # needs a new proof (docs/challenge.md, "Identity").
                    values.update(verified=False, flops=None, challenged_at=None)
                self._c.execute(devices.update().where(devices.c.id == did).values(**values))
            else:
                self._c.execute(
                    devices.insert().values(
                        id=did,
                        worker_id=worker_id,
                        local_name=spec.local_name,
                        present=True,
                        status=DeviceStatus.IDLE.value,
                        lease_id=None,
                        verified=False,
                        **_spec_values(spec),
                    )
                )
        gone = set(known) - {s.local_name for s in specs}
        if gone:
            self._c.execute(
                devices.update()
                .where(devices.c.worker_id == worker_id, devices.c.local_name.in_(gone))
                .values(
                    present=False,
                    status=sa.case(
                        (devices.c.status == DeviceStatus.IDLE.value, DeviceStatus.DOWN.value),
                        else_=devices.c.status,
                    ),
                )
            )

    def heartbeat(self, worker_id: str, now: float) -> None:
        self._c.execute(
            workers.update()
            .where(workers.c.id == worker_id)
            .values(last_heartbeat=now, status=WorkerStatus.UP.value)
        )
        self._c.execute(
            devices.update()
            .where(
                devices.c.worker_id == worker_id,
                devices.c.status == DeviceStatus.DOWN.value,
                devices.c.present.is_(True),
                devices.c.lease_id.is_(None),
            )
            .values(status=DeviceStatus.IDLE.value)
        )

    def report_network(
        self,
        worker_id: str,
        at: float,
        coordinate: Coordinate | None,
        probe_host: str | None,
        probe_port: int | None,
    ) -> None:
        values: dict[str, Any] = {"probe_host": probe_host, "probe_port": probe_port}
        if coordinate is not None:
            values |= {
                "coord_vec": list(coordinate.vec),
                "coord_height": coordinate.height,
                "coord_error": coordinate.error,
                "coord_at": at,
            }
        self._c.execute(workers.update().where(workers.c.id == worker_id).values(**values))

    def report_bandwidth(
        self, worker_id: str, upload_mbps: float, download_mbps: float, tier: int
    ) -> None:
        self._c.execute(
            workers.update()
            .where(workers.c.id == worker_id)
            .values(upload_mbps=upload_mbps, download_mbps=download_mbps, connectivity_tier=tier)
        )

    def probe_targets(self, worker_id: str) -> list[tuple[str, str, int]]:
        """(worker id, host, port) of every other up worker that answers RTT probes."""
        rows = self._c.execute(
            sa.select(workers.c.id, workers.c.probe_host, workers.c.probe_port)
            .where(
                workers.c.id != worker_id,
                workers.c.status == WorkerStatus.UP.value,
                workers.c.probe_port.is_not(None),
                workers.c.probe_host.is_not(None),
            )
            .order_by(workers.c.id)
        )
        return [(r.id, r.probe_host, r.probe_port) for r in rows]

    def mark_down_before(self, cutoff: float) -> list[str]:
        stale = list(
            self._c.execute(
                sa.select(workers.c.id).where(
                    workers.c.status == WorkerStatus.UP.value, workers.c.last_heartbeat < cutoff
                )
            ).scalars()
        )
        if stale:
            self._c.execute(
                workers.update()
                .where(workers.c.id.in_(stale))
                .values(status=WorkerStatus.DOWN.value)
            )
            self._c.execute(
                devices.update()
                .where(devices.c.worker_id.in_(stale), devices.c.status == DeviceStatus.IDLE.value)
                .values(status=DeviceStatus.DOWN.value)
            )
        return stale

    def list_all(self, supplier_id: str | None = None) -> list[Worker]:
        query = self._select().order_by(workers.c.registered_at, workers.c.id)
        if supplier_id is not None:
            query = query.where(workers.c.supplier_id == supplier_id)
        return [_worker(row) for row in self._c.execute(query)]

    def devices(self, worker_id: str | None = None) -> list[Device]:
        query = (
            sa.select(
                *devices.c,
                workers.c.supplier_id,
                workers.c.status.label("worker_status"),
                workers.c.latitude,
                workers.c.longitude,
                workers.c.region,
                workers.c.datacenter_tier,
                workers.c.soc2_claimed,
                accounts.c.soc2_verified,
                workers.c.coord_vec,
                workers.c.coord_height,
                workers.c.coord_error,
                workers.c.connectivity_tier,
                workers.c.sandbox,
            )
            .join(workers, workers.c.id == devices.c.worker_id)
            .join(accounts, accounts.c.id == workers.c.supplier_id)
            .order_by(devices.c.id)
        )
        if worker_id is not None:
            query = query.where(devices.c.worker_id == worker_id)
        return [_device(row) for row in self._c.execute(query)]

    def set_verification(
        self,
        device_id: str,
        *,
        verified: bool,
        at: float,
        status: DeviceStatus | None = None,
        flops: float | None = None,
    ) -> None:
        values: dict[str, Any] = {"verified": verified, "challenged_at": at}
        if status is not None:
            values["status"] = status.value
        if flops is not None:
            values["flops"] = flops
        self._c.execute(devices.update().where(devices.c.id == device_id).values(**values))

    def bump_lease_version(self, worker_ids: Sequence[str]) -> None:
        if worker_ids:
            self._c.execute(
                workers.update()
                .where(workers.c.id.in_(list(worker_ids)))
                .values(lease_version=workers.c.lease_version + 1)
            )

    def lease_version(self, worker_id: str) -> int:
        version = self._c.execute(
            sa.select(workers.c.lease_version).where(workers.c.id == worker_id)
        ).scalar()
        return int(version or 0)


# Built once: every batch of samples reads its lease and the worker's members in it, and
# building the statements per call cost more than running them.
_LEASE_FOR_UPDATE = leases.select().where(leases.c.id == sa.bindparam("id")).with_for_update()
_MEMBERS = (
    lease_members.select()
    .where(lease_members.c.lease_id == sa.bindparam("lease"))
    .order_by(lease_members.c.device_id)
)
_WORKER_MEMBERS = _MEMBERS.where(lease_members.c.worker_id == sa.bindparam("worker"))


def _lease(row: Any) -> Lease:
    return Lease(
        id=row.id,
        cluster_id=row.cluster_id,
        renter_id=row.renter_id,
        state=LeaseState(row.state),
        t1=row.t1,
        t2=row.t2,
        hours=row.hours,
        head_device_id=row.head_device_id,
        price_micros_per_hour=row.price_micros,
        reason=row.reason,
        updated_at=row.updated_at,
    )


def _member(row: Any) -> LeaseMember:
    return LeaseMember(
        row.lease_id,
        row.device_id,
        row.worker_id,
        MemberState(row.state),
        row.reason,
        row.updated_at,
    )


def request_to_json(request: BookingRequest) -> dict[str, Any]:
    return {
        "devices": request.devices,
        "kind": request.kind.value,
        "hours": request.hours,
        "max_price_micros_per_hour": request.max_price_micros_per_hour,
        "gpu_models": list(request.gpu_models),
        "min_memory_mb": request.min_memory_mb,
        "regions": list(request.regions),
        "security_tier": request.security_tier.value,
        "min_datacenter_tier": request.min_datacenter_tier,
        "min_connectivity_tier": request.min_connectivity_tier,
        "image": request.image,
        "egress": request.egress,
    }


def request_from_json(data: dict[str, Any]) -> BookingRequest:
    return BookingRequest(
        devices=data["devices"],
        kind=DeviceKind(data["kind"]),
        hours=data["hours"],
        max_price_micros_per_hour=data["max_price_micros_per_hour"],
        gpu_models=tuple(data["gpu_models"]),
        min_memory_mb=data["min_memory_mb"],
        regions=tuple(data["regions"]),
        security_tier=SecurityTier(data["security_tier"]),
        min_datacenter_tier=data["min_datacenter_tier"],
        min_connectivity_tier=data.get("min_connectivity_tier", 0),
        image=data.get("image"),
        egress=data.get("egress", False),
    )


def _cluster(row: Any) -> Cluster:
    return Cluster(
        row.id,
        row.renter_id,
        request_from_json(row.request),
        row.created_at,
        row.predicted_diameter_ms,
    )


class SqlLeases:
    def __init__(self, conn: Connection) -> None:
        self._c = conn

    def add(self, cluster: Cluster, lease: Lease, members: Sequence[LeaseMember]) -> None:
        self._c.execute(
            clusters.insert().values(
                id=cluster.id,
                renter_id=cluster.renter_id,
                request=request_to_json(cluster.request),
                created_at=cluster.created_at,
                predicted_diameter_ms=cluster.predicted_diameter_ms,
            )
        )
        self._c.execute(
            leases.insert().values(
                id=lease.id,
                cluster_id=lease.cluster_id,
                renter_id=lease.renter_id,
                state=lease.state.value,
                t1=lease.t1,
                t2=lease.t2,
                hours=lease.hours,
                head_device_id=lease.head_device_id,
                price_micros=lease.price_micros_per_hour,
                reason=lease.reason,
                updated_at=lease.updated_at,
            )
        )
        self._c.execute(
            lease_members.insert(),
            [
                {
                    "lease_id": m.lease_id,
                    "device_id": m.device_id,
                    "worker_id": m.worker_id,
                    "state": m.state.value,
                    "reason": m.reason,
                    "updated_at": m.updated_at,
                }
                for m in members
            ],
        )

    def claim_devices(self, lease_id: str, device_ids: Sequence[str]) -> bool:
        claimed = self._c.execute(
            devices.update()
            .where(
                devices.c.id.in_(list(device_ids)),
                devices.c.status == DeviceStatus.IDLE.value,
                devices.c.lease_id.is_(None),
            )
            .values(status=DeviceStatus.LEASED.value, lease_id=lease_id)
        ).rowcount
        return claimed == len(device_ids)

    def release_device(self, device_id: str, lease_id: str) -> None:
        row = self._c.execute(
            sa.select(devices.c.present, workers.c.status)
            .join(workers, workers.c.id == devices.c.worker_id)
            .where(devices.c.id == device_id, devices.c.lease_id == lease_id)
        ).first()
        if row is None:
            return
        usable = row.present and row.status == WorkerStatus.UP.value
        self._c.execute(
            devices.update()
            .where(devices.c.id == device_id, devices.c.lease_id == lease_id)
            .values(
                lease_id=None, status=(DeviceStatus.IDLE if usable else DeviceStatus.DOWN).value
            )
        )

    def cluster(self, cluster_id: str) -> Cluster | None:
        row = self._c.execute(clusters.select().where(clusters.c.id == cluster_id)).first()
        return _cluster(row) if row else None

    def clusters(self, renter_id: str) -> list[Cluster]:
        rows = self._c.execute(
            clusters.select()
            .where(clusters.c.renter_id == renter_id)
            .order_by(clusters.c.created_at, clusters.c.id)
        )
        return [_cluster(row) for row in rows]

    def lease(self, lease_id: str) -> Lease | None:
        row = self._c.execute(leases.select().where(leases.c.id == lease_id)).first()
        return _lease(row) if row else None

    def lease_for_update(self, lease_id: str) -> Lease | None:
        row = self._c.execute(_LEASE_FOR_UPDATE, {"id": lease_id}).first()
        return _lease(row) if row else None

    def lease_of_cluster(self, cluster_id: str) -> Lease:
        row = self._c.execute(leases.select().where(leases.c.cluster_id == cluster_id)).one()
        return _lease(row)

    def members(self, lease_id: str, worker_id: str | None = None) -> list[LeaseMember]:
        if worker_id is None:
            rows = self._c.execute(_MEMBERS, {"lease": lease_id})
        else:
            rows = self._c.execute(_WORKER_MEMBERS, {"lease": lease_id, "worker": worker_id})
        return [_member(row) for row in rows]

    def save_lease(self, lease: Lease) -> None:
        self._c.execute(
            leases.update()
            .where(leases.c.id == lease.id)
            .values(
                state=lease.state.value,
                t2=lease.t2,
                hours=lease.hours,
                reason=lease.reason,
                updated_at=lease.updated_at,
            )
        )

    def set_member(
        self, lease_id: str, device_id: str, state: MemberState, reason: str, now: float
    ) -> None:
        self._c.execute(
            lease_members.update()
            .where(lease_members.c.lease_id == lease_id, lease_members.c.device_id == device_id)
            .values(state=state.value, reason=reason, updated_at=now)
        )

    def leases_of_worker(self, worker_id: str, states: frozenset[LeaseState]) -> list[Lease]:
        lease_ids = sa.select(lease_members.c.lease_id).where(
            lease_members.c.worker_id == worker_id
        )
        rows = self._c.execute(
            leases.select()
            .where(leases.c.id.in_(lease_ids), leases.c.state.in_([s.value for s in states]))
            .order_by(leases.c.t1, leases.c.id)
        )
        return [_lease(row) for row in rows]

    def leases_in(self, states: frozenset[LeaseState]) -> list[Lease]:
        rows = self._c.execute(
            leases.select()
            .where(leases.c.state.in_([s.value for s in states]))
            .order_by(leases.c.t1, leases.c.id)
        )
        return [_lease(row) for row in rows]

    def add_event(self, lease_id: str, at: float, state: LeaseState, note: str) -> None:
        self._c.execute(
            lease_events.insert().values(lease_id=lease_id, at=at, state=state.value, note=note)
        )

    def events(self, lease_id: str) -> list[tuple[float, LeaseState, str]]:
        rows = self._c.execute(
            lease_events.select()
            .where(lease_events.c.lease_id == lease_id)
            .order_by(lease_events.c.id)
        )
        return [(row.at, LeaseState(row.state), row.note) for row in rows]


# INSERT .. ON CONFLICT DO NOTHING: two racing requests with one nonce cannot both win.
# Written out once (SQLite and PostgreSQL share the syntax): every agent request runs it.
_REMEMBER_NONCE = sa.text(
    "INSERT INTO nonces (worker_id, nonce, at) VALUES (:worker_id, :nonce, :at) "
    "ON CONFLICT DO NOTHING RETURNING nonce"  # rowcount is unreliable here; a row is not
)


class SqlNonces:
    def __init__(self, conn: Connection) -> None:
        self._c = conn

    def remember(self, worker_id: str, nonce: str, at: float) -> bool:
        inserted = self._c.execute(
            _REMEMBER_NONCE, {"worker_id": worker_id, "nonce": nonce, "at": at}
        ).first()
        return inserted is not None

    def forget_before(self, cutoff: float) -> int:
        return self._c.execute(nonces.delete().where(nonces.c.at < cutoff)).rowcount


class SqlTransaction:
    def __init__(self, conn: Connection) -> None:
        self.accounts = SqlAccounts(conn)
        self.workers = SqlWorkers(conn)
        self.leases = SqlLeases(conn)
        self.nonces = SqlNonces(conn)
        self.proofs = SqlProofs(conn)
        self.ray = SqlRayNodes(conn)
        self.mesh = SqlMesh(conn)
        self.ledger = SqlLedger(conn)
        self.tasks = SqlTasks(conn)
