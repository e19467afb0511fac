"""What can be booked now: the pool's available devices, grouped by what a booking can ask
for, with their price and count. Any renter sees the same market; no worker is named."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from gpupool.coordinator.api import convert
from gpupool.coordinator.api.clusters import booking
from gpupool.coordinator.api.deps import RenterDep, ServicesDep
from gpupool.wire import models as w

router = APIRouter(prefix="/v1/offers", tags=["clusters"])


@router.get("")
async def list_offers(
    query: Annotated[w.OffersQuery, Query()], renter: RenterDep, svc: ServicesDep
) -> list[w.OfferOut]:
    """Bookable devices meeting every given constraint, cheapest first."""
    found = await run_in_threadpool(
        svc.market.offers, renter, booking(query), any_kind=query.kind is None
    )
    return [convert.offer(o) for o in found]
