"""`gpupool workers list`: the pool (renters, admin) or your own workers (suppliers)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from decimal import Decimal

import typer

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

app = typer.Typer(help="Workers (supplier machines) and their devices.", no_args_is_help=True)


@app.command("list")
def list_workers(
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    key: KeyOpt = None,
    devices: bool = typer.Option(
        False, "--devices", help="Also list every device: model, memory, price, stake."
    ),
    json_out: JsonOpt = False,
) -> None:
    """List workers with their status, models, prices and stake (also accepts
    GPUPOOL_ADMIN_KEY)."""
    with client(coordinator, key or os.environ.get("GPUPOOL_ADMIN_KEY")) as gp:
        workers = gp.workers()
    if json_out:
        print_json(workers)
        return
    out.print(
        table(
            f"{len(workers)} workers",
            [
                "worker",
                "host",
                "region",
                "status",
                "idle/devices",
                "models",
                "price/h",
                "staked",
                "sandbox",
                "link",
            ],
            [
                (
                    w.id,
                    w.hostname,
                    w.region,
                    w.status,
                    f"{sum(d.status == 'idle' for d in w.devices)}/{len(w.devices)}",
                    ", ".join(sorted({f"{d.kind.value} {d.model}" for d in w.devices})),
                    _span(d.price_per_hour for d in w.devices),
                    f"{sum(d.stake == 'staked' for d in w.devices)}/{len(w.devices)}",
                    w.sandbox,
                    _link(w.upload_mbps, w.download_mbps, w.connectivity_tier),
                )
                for w in workers
            ],
        )
    )
    if devices:
        out.print(
            table(
                "devices",
                ["device", "kind", "model", "memory MB", "price/h", "status", "stake"],
                [
                    (
                        d.id,
                        d.kind.value,
                        d.model,
                        d.memory_mb,
                        d.price_per_hour,
                        d.status,
                        d.stake or "-",
                    )
                    for w in workers
                    for d in w.devices
                ],
            )
        )


def _span(prices: Iterable[str]) -> str:
    """One worker's device prices: "0.10", or "0.05-0.10" where they differ."""
    ordered = sorted(set(prices), key=Decimal)
    if not ordered:
        return "-"
    return ordered[0] if len(ordered) == 1 else f"{ordered[0]}-{ordered[-1]}"


def _link(up: float | None, down: float | None, tier: int) -> str:
    """Measured bandwidth and the connectivity tier it earns ("unmeasured" before)."""
    if up is None or down is None:
        return "unmeasured"
    return f"up {up:.0f} / down {down:.0f} Mbit/s, tier {tier}"
