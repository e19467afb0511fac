"""Placement: which devices a booking gets.

Hard constraints come first and are the same for every strategy; a strategy then picks N of
the matching devices and names the Ray head. `FirstFit` (cheapest first) is the placement of
the foundation; latency-aware grouping replaces it behind the same `Placement` interface.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gpupool.domain.models import BookingRequest, Device, DeviceKind, Shortfall

Check = Callable[[Device], bool]


def hard_constraints(request: BookingRequest) -> list[tuple[str, Check]]:
    """The booking's constraints, named, in the order a shortfall report counts them."""
    models = {m.casefold() for m in request.gpu_models}
    regions = {r.casefold() for r in request.regions}
    checks: list[tuple[str, Check]] = [
        ("availability", lambda d: d.available),
        ("kind", lambda d: d.spec.kind is request.kind),
    ]
    if models and request.kind is DeviceKind.GPU:
        checks.append(("gpu_model", lambda d: d.spec.model.casefold() in models))
    if request.min_memory_mb:
        checks.append(("memory", lambda d: d.spec.memory_mb >= request.min_memory_mb))
    if regions:
        checks.append(("region", lambda d: d.location.region.casefold() in regions))
    checks.append(("security_tier", lambda d: d.attributes.meets(request.security_tier)))
    if request.min_datacenter_tier:
        checks.append(
            (
                "datacenter_tier",
                lambda d: d.attributes.datacenter_tier >= request.min_datacenter_tier,
            )
        )
    if request.min_connectivity_tier:
        checks.append(
            (
                "connectivity_tier",
                lambda d: d.connectivity_tier >= request.min_connectivity_tier,
            )
        )
    checks.append(
        ("price", lambda d: d.spec.price_micros_per_hour <= request.max_price_micros_per_hour)
    )
    if request.image is not None:
        checks.append(("image", lambda d: "docker" in d.features))
    if request.egress:
        checks.append(("egress", lambda d: "egress" in d.features))
    return checks


def filter_devices(
    request: BookingRequest, devices: Sequence[Device]
) -> tuple[list[Device], dict[str, int]]:
    """Devices meeting every hard constraint, and per constraint how many it ruled out first."""
    checks = hard_constraints(request)
    excluded = {name: 0 for name, _ in checks}
    matching = []
    for device in devices:
        failed = next((name for name, check in checks if not check(device)), None)
        if failed is None:
            matching.append(device)
        else:
            excluded[failed] += 1
    return matching, excluded


@dataclass(frozen=True, slots=True)
class Placed:
    devices: tuple[Device, ...]
    head: Device
    # Largest predicted RTT between two members (None where placement does not predict),
    # the largest RTT measured among them when placement probed, and how many probes it used.
    predicted_diameter_ms: float | None = None
    measured_diameter_ms: float | None = None
    probes: int = 0

    @property
    def price_micros_per_hour(self) -> int:
        """All the chosen devices together, per hour."""
        return sum(d.spec.price_micros_per_hour for d in self.devices)


class Placement(Protocol):
    def place(self, request: BookingRequest, candidates: Sequence[Device]) -> Placed | Shortfall:
        """Choose `request.devices` of `candidates`, or say why that is impossible."""
        ...


class FirstFit:
    """The cheapest matching devices, ties broken by device id; the first is the head."""

    def place(self, request: BookingRequest, candidates: Sequence[Device]) -> Placed | Shortfall:
        matching, excluded = filter_devices(request, candidates)
        if len(matching) < request.devices:
            return Shortfall(request.devices, len(matching), excluded)
        chosen = sorted(matching, key=lambda d: (d.spec.price_micros_per_hour, d.id))
        chosen = chosen[: request.devices]
        return Placed(tuple(chosen), chosen[0])


def outside_pool(
    request: BookingRequest, shortfall: Shortfall, outside: Sequence[Device]
) -> Shortfall:
    """`shortfall` with the devices kept out of the pool (not staked) counted too: each by
    the first hard constraint it fails, and as `stake` only when it would have matched. A
    GPU booking on a pool of unstaked CPU devices is then refused for their kind, the
    cause a renter can act on, not for a stake that would not have helped. Availability is
    not asked of them: an unstaked device is never challenged, so never verified, and the
    stake is what it lacks first. Constraints that ruled out nothing are left out."""
    checks = [(name, check) for name, check in hard_constraints(request) if name != "availability"]
    counts = dict(shortfall.excluded_by)
    for device in outside:
        failed = next((name for name, check in checks if not check(device)), "stake")
        counts[failed] = counts.get(failed, 0) + 1
    return Shortfall(
        shortfall.requested, shortfall.matching, {k: v for k, v in counts.items() if v}
    )


@dataclass(frozen=True, slots=True)
class Offer:
    """Bookable devices that look alike to a booking: what it can ask for, and how many."""

    kind: DeviceKind
    model: str
    memory_mb: int
    region: str
    connectivity_tier: int
    price_micros_per_hour: int
    features: tuple[str, ...]  # what their workers' sandboxes offer: docker, egress
    count: int
    workers: int


def offers(
    request: BookingRequest, pool: Sequence[Device], *, any_kind: bool = False
) -> list[Offer]:
    """The pool's devices that meet every hard constraint of `request` (its kind too, unless
    `any_kind`), grouped by what a booking can ask for, cheapest first. The count is per
    device: a booking spread over several workers may still be refused to keep two open
    leases from sharing a pair of workers (domain.mesh.ApartFromOpenLeases)."""
    checks = [
        check for name, check in hard_constraints(request) if not (any_kind and name == "kind")
    ]
    groups: dict[tuple[DeviceKind, str, int, str, int, int, tuple[str, ...]], list[Device]] = {}
    for device in pool:
        if all(check(device) for check in checks):
            s = device.spec
            key = (
                s.kind,
                s.model,
                s.memory_mb,
                device.location.region,
                device.connectivity_tier,
                s.price_micros_per_hour,
                tuple(sorted(device.features)),
            )
            groups.setdefault(key, []).append(device)
    found = [
        Offer(*key, count=len(devices), workers=len({d.worker_id for d in devices}))
        for key, devices in groups.items()
    ]
    return sorted(
        found,
        key=lambda o: (
            o.price_micros_per_hour,
            o.kind.value,
            o.model,
            o.region,
            -o.connectivity_tier,
            o.memory_mb,
            o.features,
        ),
    )
