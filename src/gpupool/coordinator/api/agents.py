"""The agent-facing routes. Every request is signed by the worker's Ed25519 key; registration
also needs the supplier's API key, which binds the worker to that supplier."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from gpupool.coordinator.api import convert
from gpupool.coordinator.api.deps import (
    ServicesDep,
    SignedDep,
    SupplierDep,
    WorkerDep,
    body_schema,
    long_poll,
    parse_body,
)
from gpupool.domain.coordinates import Coordinate
from gpupool.domain.models import DeviceSpec, Location
from gpupool.domain.money import to_micros
from gpupool.services.agent_auth import SignedRequest
from gpupool.services.capability import Opening
from gpupool.services.ports import ChallengeRecord
from gpupool.services.registry import Assignment, NetworkReport, Registration
from gpupool.services.timelock import BatchIn, BatchResult
from gpupool.wire import models as w

router = APIRouter(prefix="/v1/agent", tags=["agent"])


def _assignments(
    svc: ServicesDep,
    worker_id: str,
    version: int,
    leases: list[Assignment],
    probe_peers: list[tuple[str, str, int]] = [],  # noqa: B006 (never mutated)
) -> w.AssignmentsOut:
    return w.AssignmentsOut(
        probe_peers=[w.ProbePeerOut(worker_id=p, host=h, port=n) for p, h, n in probe_peers],
        lease_version=version,
        heartbeat_seconds=svc.settings.heartbeat_seconds,
        leases=[convert.assignment(a) for a in leases],
        challenges=[
            w.ChallengeOut(
                id=c.id,
                device_id=c.device_id,
                n=c.n,
                seed_a=c.seed_a,
                seed_b=c.seed_b,
                steps=c.steps,
                lease_id=c.lease_id,
                held=c.held,
            )
            for c in svc.challenges.pending(worker_id)
        ],
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
    view = await run_in_threadpool(svc.registry.register, supplier, reg)
    await run_in_threadpool(svc.challenges.issue_due, view.worker.id)
    return convert.worker(view)


@router.post("/heartbeat")
async def heartbeat(
    request: Request, worker_id: WorkerDep, svc: ServicesDep, body: w.HeartbeatIn | None = None
) -> w.AssignmentsOut:
    """Liveness, plus (optionally) the worker's network coordinate and probe port; the
    answer names peers to measure RTT to next."""
    network = None
    if body is not None:
        c = body.coordinate
        seen = request.client.host if request.client else None
        network = NetworkReport(
            Coordinate(tuple(c.vec), c.height, c.error) if c is not None else None,
            (body.probe_host or seen) if body.probe_port else None,
            body.probe_port,
        )
    version, leases = await run_in_threadpool(svc.registry.heartbeat, worker_id, network)
    peers = await run_in_threadpool(svc.registry.probe_peers, worker_id)
    return await run_in_threadpool(_assignments, svc, worker_id, version, leases, peers)


@router.get("/leases")
async def leases(
    request: Request,
    worker_id: WorkerDep,
    svc: ServicesDep,
    version: int = Query(-1, description="Answer once the lease version differs from this."),
    wait: float = Query(0, ge=0, le=60, description="Seconds to wait for a change."),
) -> w.AssignmentsOut:
    """The worker's active leases; a long poll when `version` is its current lease version."""
    await long_poll(request, svc, wait, lambda: svc.registry.lease_version(worker_id) != version)
    current, active = await run_in_threadpool(svc.registry.assignments, worker_id)
    return await run_in_threadpool(_assignments, svc, worker_id, current, active)


@router.post("/leases/{lease_id}/members")
async def report_member(
    lease_id: str, body: w.MemberReport, worker_id: WorkerDep, svc: ServicesDep
) -> w.MemberReportOut:
    state = await run_in_threadpool(
        svc.market.report, worker_id, lease_id, body.device_id, body.state, body.reason
    )
    return w.MemberReportOut(lease_state=state)


def _beacon(svc: ServicesDep) -> w.BeaconOut:
    b = svc.timelock.beacon()
    return w.BeaconOut(
        number=b.number, value=b.value, epoch_ms=b.epoch_ms, interval_ms=b.interval_ms
    )


@router.get("/beacon")
async def beacon(_: WorkerDep, svc: ServicesDep) -> w.BeaconOut:
    """The current beacon: samples name it to prove they were not made before it existed."""
    return _beacon(svc)


@router.post("/samples", response_model=w.SamplesOut, openapi_extra=body_schema(w.SamplesIn))
async def samples(signed: SignedDep, svc: ServicesDep) -> Response:
    """Signed, hash-chained sample batches; each is accepted whole or refused with a code."""
    results = await run_in_threadpool(_accept_samples, svc, signed)
    out = w.SamplesOut(
        results=[
            w.BatchResultOut(
                lease_id=r.lease_id,
                device_id=r.device_id,
                accepted=r.accepted,
                head_seq=r.head_seq,
                head_hash=r.head_hash,
                refused=r.refused,
                reason=r.reason,
            )
            for r in results
        ],
        beacon=_beacon(svc),
    )
    # Serialized here: FastAPI would validate the model it was just built from once more.
    return Response(out.model_dump_json(), media_type="application/json")


def _accept_samples(svc: ServicesDep, signed: SignedRequest) -> list[BatchResult]:
    """The busiest route, in one thread hop: the signature is checked first (401 before
    422, as on every agent route), the body parsed once, and the request's nonce committed
    in the transaction that stores its samples rather than in one of its own."""
    who = svc.auth.authenticate(signed)
    body = parse_body(w.SamplesIn, signed.body)
    batches = [BatchIn(b.lease_id, b.device_id, b.samples, b.signature) for b in body.batches]
    return svc.timelock.accept(who, batches)


def _challenge_result(c: ChallengeRecord) -> w.ChallengeResultOut:
    return w.ChallengeResultOut(
        id=c.id, device_id=c.device_id, state=c.state, reason=c.reason, flops=c.flops
    )


@router.post("/challenges/{challenge_id}/answer")
async def challenge_answer(
    challenge_id: str, body: w.ChallengeAnswerIn, worker_id: WorkerDep, svc: ServicesDep
) -> w.ChallengeRowsOut:
    """Commit to the product's Merkle root; the answer names the rows to open, or first asks
    for the sketch of the held states."""
    out = await run_in_threadpool(
        svc.challenges.answer, worker_id, challenge_id, body.root, body.compute_seconds
    )
    probe = out.memory
    memory = (
        w.MemoryProbeOut(seed=probe.seed, held=probe.held, deadline_seconds=probe.deadline_seconds)
        if probe is not None
        else None
    )
    return w.ChallengeRowsOut(rows=out.rows, memory=memory)


@router.post("/challenges/{challenge_id}/sketch")
async def challenge_sketch(
    challenge_id: str, body: w.SketchIn, worker_id: WorkerDep, svc: ServicesDep
) -> w.ChallengeRowsOut:
    """The memory sketch, timed on the coordinator's clock; the answer names the rows."""
    rows = await run_in_threadpool(svc.challenges.sketch, worker_id, challenge_id, body.values)
    return w.ChallengeRowsOut(rows=rows)


@router.post("/challenges/{challenge_id}/open")
async def challenge_open(
    challenge_id: str, body: w.ChallengeOpenIn, worker_id: WorkerDep, svc: ServicesDep
) -> w.ChallengeResultOut:
    openings = [Opening(o.index, o.values, o.proof) for o in body.openings]
    result = await run_in_threadpool(svc.challenges.open, worker_id, challenge_id, openings)
    return _challenge_result(result)


@router.post("/challenges/{challenge_id}/fail")
async def challenge_fail(
    challenge_id: str, body: w.ChallengeFailIn, worker_id: WorkerDep, svc: ServicesDep
) -> w.ChallengeResultOut:
    result = await run_in_threadpool(svc.challenges.fail, worker_id, challenge_id, body.reason)
    return _challenge_result(result)
