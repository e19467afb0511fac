"""Suppliers' stake per device: list, stake (top up to the required amount), unstake."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from gpupool.coordinator.api.deps import ServicesDep, SupplierDep
from gpupool.coordinator.api.ledger import posted_out
from gpupool.services.stake import StakeView
from gpupool.wire import ledger as w

router = APIRouter(prefix="/v1/stakes", tags=["ledger"])


def stake_out(v: StakeView) -> w.StakeOut:
    return w.StakeOut(
        device_id=v.device_id,
        worker_id=v.worker_id,
        required_micros=v.required,
        held_micros=v.held,
        unstake_at=v.unstake_at,
        in_pool=v.in_pool,
    )


@router.get("")
async def list_stakes(supplier: SupplierDep, svc: ServicesDep) -> list[w.StakeOut]:
    return [stake_out(v) for v in await run_in_threadpool(svc.stakes.list, supplier)]


@router.post("/{device_id}", status_code=201)
async def stake(
    device_id: str, body: w.StakeIn, supplier: SupplierDep, svc: ServicesDep
) -> w.EntryOut:
    """Top the device's stake up to its required amount (402 when the balance is short)."""
    posted = await run_in_threadpool(svc.stakes.stake, supplier, device_id, body.key)
    # A device is challenged only once staked (docs/challenge.md): do it now, not next tick.
    await run_in_threadpool(svc.challenges.issue_due, device_id.split(":", 1)[0])
    return posted_out(posted)


@router.delete("/{device_id}")
async def unstake(device_id: str, supplier: SupplierDep, svc: ServicesDep) -> w.StakeOut:
    """Start the cooldown (the device leaves the pool), or after it, pay the stake back.
    Refused (409) while a lease holds the device or before the cooldown ends."""
    return stake_out(await run_in_threadpool(svc.stakes.unstake, supplier, device_id))
