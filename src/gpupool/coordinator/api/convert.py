"""Domain values and service views → wire models."""

from __future__ import annotations

from datetime import UTC, datetime

from gpupool.coordinator.storage.repos import request_to_json
from gpupool.domain.leases import LeaseMember
from gpupool.domain.models import Account, Device
from gpupool.domain.money import format_micros
from gpupool.domain.placement import Offer
from gpupool.domain.stake import StakeState
from gpupool.services.market import ClusterView, Quote
from gpupool.services.registry import Assignment, WorkerView
from gpupool.wire import models as w


def ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def account(a: Account) -> w.AccountOut:
    return w.AccountOut(
        id=a.id,
        role=a.role,
        name=a.name,
        soc2_verified=a.soc2_verified,
        created_at=ts(a.created_at),
    )


def device(d: Device, stake: StakeState | None = None) -> w.DeviceOut:
    s = d.spec
    return w.DeviceOut(
        id=d.id,
        worker_id=d.worker_id,
        local_name=s.local_name,
        kind=s.kind,
        model=s.model,
        memory_mb=s.memory_mb,
        price_per_hour=format_micros(s.price_micros_per_hour),
        status=d.status,
        uuid=s.uuid,
        cores=list(s.cores),
        driver_version=s.driver_version,
        cuda_version=s.cuda_version,
        verified=d.verified,
        gflops=round(d.flops / 1e9, 3) if d.flops is not None else None,
        stake=stake,
    )


def worker(view: WorkerView) -> w.WorkerOut:
    wk = view.worker
    return w.WorkerOut(
        id=wk.id,
        supplier_id=wk.supplier_id,
        hostname=wk.hostname,
        region=wk.location.region,
        latitude=wk.location.latitude,
        longitude=wk.location.longitude,
        datacenter_tier=wk.attributes.datacenter_tier,
        soc2_claimed=wk.attributes.soc2_claimed,
        soc2_verified=wk.attributes.soc2_verified,
        status=wk.status,
        last_heartbeat=ts(wk.last_heartbeat),
        registered_at=ts(wk.registered_at),
        agent_version=wk.agent_version,
        sandbox=wk.sandbox,
        upload_mbps=wk.upload_mbps,
        download_mbps=wk.download_mbps,
        connectivity_tier=wk.connectivity_tier,
        devices=[device(d, view.stakes.get(d.id)) for d in view.devices],
    )


def member(m: LeaseMember) -> w.MemberOut:
    return w.MemberOut(device_id=m.device_id, worker_id=m.worker_id, state=m.state, reason=m.reason)


def assignment(a: Assignment) -> w.AssignmentOut:
    lease = a.lease
    return w.AssignmentOut(
        lease_id=lease.id,
        cluster_id=lease.cluster_id,
        state=lease.state,
        t1=ts(lease.t1),
        t2=ts(lease.t2),
        head_device_id=lease.head_device_id,
        local_devices=list(a.local_device_ids),
        members=[member(m) for m in a.members],
        image=a.image,
        egress=a.egress,
    )


def cluster(view: ClusterView) -> w.ClusterOut:
    lease = view.lease
    return w.ClusterOut(
        id=view.cluster.id,
        lease_id=lease.id,
        renter_id=view.cluster.renter_id,
        state=lease.state,
        t1=ts(lease.t1),
        t2=ts(lease.t2),
        hours=lease.hours,
        head_device_id=lease.head_device_id,
        predicted_diameter_ms=view.cluster.predicted_diameter_ms,
        price_per_hour=format_micros(lease.price_micros_per_hour),
        total_price=format_micros(lease.price_micros_per_hour * lease.hours),
        reason=lease.reason,
        request=request_to_json(view.cluster.request),
        members=[member(m) for m in view.members],
        events=[w.EventOut(at=ts(at), state=state, note=note) for at, state, note in view.events],
    )


def offer(o: Offer) -> w.OfferOut:
    return w.OfferOut(
        kind=o.kind,
        model=o.model,
        memory_mb=o.memory_mb,
        region=o.region,
        connectivity_tier=o.connectivity_tier,
        price_per_hour=format_micros(o.price_micros_per_hour),
        features=list(o.features),
        count=o.count,
        workers=o.workers,
    )


def quote(q: Quote) -> w.QuoteOut:
    return w.QuoteOut(
        devices=[
            w.QuoteDeviceOut(
                device_id=d.id,
                worker_id=d.worker_id,
                kind=d.spec.kind,
                model=d.spec.model,
                region=d.location.region,
                connectivity_tier=d.connectivity_tier,
                price_per_hour=format_micros(d.spec.price_micros_per_hour),
            )
            for d in q.placed.devices
        ],
        head_device_id=q.placed.head.id,
        predicted_diameter_ms=q.placed.predicted_diameter_ms,
        hours=q.hours,
        price_per_hour=format_micros(q.placed.price_micros_per_hour),
        total_price=format_micros(q.total_micros),
        balance=format_micros(q.balance_micros),
        affordable=q.affordable,
    )
