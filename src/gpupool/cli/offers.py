"""`gpupool offers`: what can be booked now, filtered like `gpupool cluster create`."""

from __future__ import annotations

from typing import Annotated

import typer

from gpupool.cli.clusters import (
    ConnectivityTierOpt,
    DatacenterTierOpt,
    EgressOpt,
    GpuModelOpt,
    ImageOpt,
    MinMemoryOpt,
    RegionOpt,
    SecurityOpt,
    filters,
)
from gpupool.cli.common import (
    DEFAULT_COORDINATOR,
    CoordinatorOpt,
    JsonOpt,
    KeyOpt,
    client,
    out,
    print_json,
    table,
)
from gpupool.domain.models import DeviceKind, SecurityTier


def offers(
    kind: Annotated[DeviceKind | None, typer.Option(help="gpu or cpu; default: both.")] = None,
    max_price: Annotated[
        str | None, typer.Option(help="Highest price per device-hour; default: any.")
    ] = None,
    gpu_model: GpuModelOpt = None,
    min_memory_mb: MinMemoryOpt = 0,
    region: RegionOpt = None,
    security: SecurityOpt = SecurityTier.ANY,
    min_datacenter_tier: DatacenterTierOpt = 0,
    min_connectivity_tier: ConnectivityTierOpt = 0,
    image: ImageOpt = None,
    egress: EgressOpt = False,
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    key: KeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List what can be booked now, cheapest first: devices alike in kind, model, memory,
    region, link tier, price and sandbox, and how many there are. `cluster create --dry-run`
    shows which of them a booking would get."""
    with client(coordinator, key) as gp:
        found = gp.offers(
            kind=kind.value if kind else None,
            max_price_per_hour=max_price,
            **filters(
                gpu_model,
                min_memory_mb,
                region,
                security,
                min_datacenter_tier,
                min_connectivity_tier,
                image,
                egress,
            ),
        )
    if json_out:
        print_json(found)
        return
    out.print(
        table(
            f"{sum(o.count for o in found)} devices bookable now",
            ["kind", "model", "memory MB", "region", "link tier", "price/h", "sandbox", "count"],
            [
                (
                    o.kind.value,
                    o.model,
                    o.memory_mb,
                    o.region,
                    o.connectivity_tier,
                    o.price_per_hour,
                    "+".join(o.features) or "-",
                    f"{o.count} on {o.workers} workers" if o.workers > 1 else str(o.count),
                )
                for o in found
            ],
        )
    )
