"""What can be booked now: the pool's available devices, grouped by what a booking can ask
for, with their price and count. Any renter sees the same market; no worker is named."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from gpupool.coordinator.api import convert
from gpupool.coordinator.api.clusters import constraints
from gpupool.coordinator.api.deps import RenterDep, ServicesDep
from gpupool.domain.models import BookingRequest, DeviceKind
from gpupool.domain.money import to_micros
from gpupool.wire import models as w

router = APIRouter(prefix="/v1/offers", tags=["clusters"])

# No device can cost more than this per device-hour: a query without a price.
ANY_PRICE = to_micros(w.PRICE_LIMIT)


def _request(query: w.OffersQuery) -> BookingRequest:
    """The query as a one-device, one-hour booking; without a kind it says GPU, and the
    market is told to ignore the kind (`any_kind`)."""
    price = query.max_price_per_hour
    return BookingRequest(
        devices=1,
        kind=query.kind or DeviceKind.GPU,
        hours=1,
        max_price_micros_per_hour=ANY_PRICE if price is None else to_micros(price),
        **constraints(query),
    )


@router.get("")
async def list_offers(
    query: Annotated[w.OffersQuery, Query()], renter: RenterDep, svc: ServicesDep
) -> list[w.OfferOut]:
    """Bookable devices meeting every given constraint, cheapest first."""
    found = await run_in_threadpool(
        svc.market.offers, renter, _request(query), any_kind=query.kind is None
    )
    return [convert.offer(o) for o in found]
