"""Renters' clusters: book, list, show, extend, terminate. A renter sees only its own."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header
from starlette.concurrency import run_in_threadpool

from gpupool.coordinator.api import convert
from gpupool.coordinator.api.deps import RenterDep, ServicesDep
from gpupool.domain.models import BookingRequest
from gpupool.domain.money import to_micros
from gpupool.services.timelock import SignedCertificate
from gpupool.wire import models as w

router = APIRouter(prefix="/v1/clusters", tags=["clusters"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=120,
        description="A retry with the same key returns the first result and pays once.",
    ),
]


def booking(body: w.BookingIn) -> BookingRequest:
    return BookingRequest(
        devices=body.devices,
        kind=body.kind,
        hours=body.hours,
        max_price_micros_per_hour=to_micros(body.max_price_per_hour),
        **constraints(body),
    )


def constraints(body: w.BookingFilters) -> dict[str, Any]:
    """The hard constraints a booking and an offers query share, as BookingRequest's fields."""
    return {
        "gpu_models": tuple(body.gpu_models),
        "min_memory_mb": body.min_memory_mb,
        "regions": tuple(body.regions),
        "security_tier": body.security_tier,
        "min_datacenter_tier": body.min_datacenter_tier,
        "min_connectivity_tier": body.min_connectivity_tier,
        "image": body.image,
        "egress": body.egress,
    }


@router.post("", status_code=201)
async def book(
    body: w.BookingIn, renter: RenterDep, svc: ServicesDep, idempotency_key: IdempotencyKey = None
) -> w.ClusterOut:
    """Book a cluster; its full price moves into escrow (402 with the shortfall if short)."""
    view = await run_in_threadpool(svc.market.book, renter, booking(body), idempotency_key)
    return convert.cluster(view)


@router.post("/quote")
async def quote(body: w.BookingIn, renter: RenterDep, svc: ServicesDep) -> w.QuoteOut:
    """A dry run of booking `body`: the devices placement picks now, the predicted diameter
    and the price. Nothing is booked or paid; the same 409 as a booking when too few match."""
    return convert.quote(await run_in_threadpool(svc.market.quote, renter, booking(body)))


@router.get("")
async def list_clusters(renter: RenterDep, svc: ServicesDep) -> list[w.ClusterOut]:
    return [convert.cluster(v) for v in await run_in_threadpool(svc.market.clusters, renter)]


@router.get("/{cluster_id}")
async def show(cluster_id: str, renter: RenterDep, svc: ServicesDep) -> w.ClusterOut:
    return convert.cluster(await run_in_threadpool(svc.market.get, renter, cluster_id))


@router.post("/{cluster_id}/extend")
async def extend(
    cluster_id: str,
    body: w.ExtendIn,
    renter: RenterDep,
    svc: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> w.ClusterOut:
    view = await run_in_threadpool(
        svc.market.extend, renter, cluster_id, body.hours, idempotency_key
    )
    return convert.cluster(view)


@router.post("/{cluster_id}/terminate")
async def terminate(cluster_id: str, renter: RenterDep, svc: ServicesDep) -> w.ClusterOut:
    return convert.cluster(await run_in_threadpool(svc.market.terminate, renter, cluster_id))


def _certificate(cert: SignedCertificate) -> w.CertificateOut:
    return w.CertificateOut(
        lease_id=cert.lease_id,
        cluster_id=cert.cluster_id,
        body=cert.body,
        signature=cert.signature,
        coordinator_key=cert.coordinator_key,
    )


@router.get("/{cluster_id}/proof")
async def proof(cluster_id: str, renter: RenterDep, svc: ServicesDep) -> w.CertificateOut:
    """The signed Proof of Time-Lock certificate (409 until the lease has ended)."""
    cert = await run_in_threadpool(svc.timelock.certificate, renter, cluster_id)
    return _certificate(cert)


@router.get("/{cluster_id}/proof/export")
async def proof_export(cluster_id: str, renter: RenterDep, svc: ServicesDep) -> w.ProofExportOut:
    """The certificate with every sample, batch signature and public key needed to re-verify
    it offline."""
    bundle = await run_in_threadpool(svc.timelock.export, renter, cluster_id)
    return w.ProofExportOut(
        certificate=_certificate(bundle.certificate),
        samples=bundle.samples,
        batches=[
            w.BatchSignatureOut(
                device_id=device_id,
                last_seq=b.last_seq,
                last_hash=b.last_hash,
                signature=b.signature,
            )
            for device_id, b in bundle.batches
        ],
        worker_keys=bundle.worker_keys,
    )
