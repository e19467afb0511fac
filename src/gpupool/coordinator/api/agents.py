"""The agent-facing routes. Every request is signed by the worker's Ed25519 key; registration
also needs the supplier's API key, which binds the worker to that supplier."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from gpupool.coordinator.api import convert
from gpupool.coordinator.api.deps import ServicesDep, SignedDep, SupplierDep, WorkerDep
from gpupool.domain.models import DeviceSpec, Location
from gpupool.domain.money import to_micros
from gpupool.services.registry import Assignment, Registration
from gpupool.wire import models as w

router = APIRouter(prefix="/v1/agent", tags=["agent"])


def _assignments(svc: ServicesDep, version: int, leases: list[Assignment]) -> w.AssignmentsOut:
    return w.AssignmentsOut(
        lease_version=version,
        heartbeat_seconds=svc.settings.heartbeat_seconds,
        leases=[convert.assignment(a) for a in leases],
    )


@router.post("/register")
async def register(
    body: w.WorkerRegister, supplier: SupplierDep, signed: SignedDep, svc: ServicesDep
) -> w.WorkerOut:
    worker_id = await run_in_threadpool(svc.auth.verify, signed, body.public_key)
    reg = Registration(
        worker_id=worker_id,
        public_key=body.public_key,
        hostname=body.hostname,
        location=Location(body.location.latitude, body.location.longitude, body.location.region),
        datacenter_tier=body.datacenter_tier,
        soc2_claimed=body.soc2_claimed,
        devices=tuple(
            DeviceSpec(
                local_name=d.local_name,
                kind=d.kind,
                model=d.model,
                memory_mb=d.memory_mb,
                price_micros_per_hour=to_micros(d.price_per_hour),
                uuid=d.uuid,
                cores=tuple(d.cores),
                driver_version=d.driver_version,
                cuda_version=d.cuda_version,
                pci_bus_id=d.pci_bus_id,
            )
            for d in body.devices
        ),
        agent_version=body.agent_version,
        sandbox=body.sandbox,
    )
    return convert.worker(await run_in_threadpool(svc.registry.register, supplier, reg))


@router.post("/heartbeat")
async def heartbeat(worker_id: WorkerDep, svc: ServicesDep) -> w.AssignmentsOut:
    version, leases = await run_in_threadpool(svc.registry.heartbeat, worker_id)
    return _assignments(svc, version, leases)


@router.get("/leases")
async def leases(
    request: Request,
    worker_id: WorkerDep,
    svc: ServicesDep,
    version: int = Query(-1, description="Answer once the lease version differs from this."),
    wait: float = Query(0, ge=0, le=60, description="Seconds to wait for a change."),
) -> w.AssignmentsOut:
    """The worker's active leases; a long poll when `version` is its current lease version."""
    deadline = time.monotonic() + min(wait, svc.settings.long_poll_max_seconds)
    while time.monotonic() < deadline and not await request.is_disconnected():
        if await run_in_threadpool(svc.registry.lease_version, worker_id) != version:
            break
        await asyncio.sleep(svc.settings.long_poll_check_seconds)
    current, active = await run_in_threadpool(svc.registry.assignments, worker_id)
    return _assignments(svc, current, active)


@router.post("/leases/{lease_id}/members")
async def report_member(
    lease_id: str, body: w.MemberReport, worker_id: WorkerDep, svc: ServicesDep
) -> w.MemberReportOut:
    state = await run_in_threadpool(
        svc.market.report, worker_id, lease_id, body.device_id, body.state, body.reason
    )
    return w.MemberReportOut(lease_state=state)
