"""The nouns of gpupool as frozen value types: devices, workers, bookings and leases.

Storage and wire formats are defined elsewhere (the coordinator's tables, `gpupool.wire`);
these types carry no ORM or HTTP concerns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from gpupool.domain.coordinates import Coordinate


class Role(StrEnum):
    RENTER = "renter"
    SUPPLIER = "supplier"
    VALIDATOR = "validator"


class DeviceKind(StrEnum):
    GPU = "gpu"
    CPU = "cpu"


class DeviceStatus(StrEnum):
    IDLE = "idle"
    LEASED = "leased"
    DOWN = "down"
    UNSUPPORTED = "unsupported"
    BLOCKED = "blocked"


class WorkerStatus(StrEnum):
    UP = "up"
    DOWN = "down"


class SecurityTier(StrEnum):
    """How much a renter requires of the supplier's security posture, weakest first."""

    ANY = "any"
    SOC2_CLAIMED = "soc2-claimed"
    SOC2_VERIFIED = "soc2-verified"


@dataclass(frozen=True, slots=True)
class Location:
    latitude: float
    longitude: float
    region: str


@dataclass(frozen=True, slots=True)
class SupplierAttributes:
    """What a supplier says (and what the coordinator verified) about where devices run.

    `datacenter_tier` follows the Uptime Institute tiers 1-4; 0 means not a datacenter
    (a home or an office).
    """

    datacenter_tier: int = 0
    soc2_claimed: bool = False
    soc2_verified: bool = False

    def meets(self, tier: SecurityTier) -> bool:
        if tier is SecurityTier.SOC2_VERIFIED:
            return self.soc2_verified
        if tier is SecurityTier.SOC2_CLAIMED:
            return self.soc2_claimed or self.soc2_verified
        return True


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A device as an agent reports it: one NVIDIA GPU or one group of CPU cores.

    `local_name` is unique within its worker (`gpu0`, `cpu0-3`); the coordinator names the
    device globally as `<worker id>:<local name>`.
    """

    local_name: str
    kind: DeviceKind
    model: str
    memory_mb: int
    price_micros_per_hour: int
    uuid: str | None = None
    cores: tuple[int, ...] = ()
    driver_version: str | None = None
    cuda_version: str | None = None
    pci_bus_id: str | None = None


def device_id(worker_id: str, local_name: str) -> str:
    return f"{worker_id}:{local_name}"


@dataclass(frozen=True, slots=True)
class Device:
    """A device in the pool, with the worker facts placement needs beside it."""

    id: str
    worker_id: str
    supplier_id: str
    spec: DeviceSpec
    status: DeviceStatus
    worker_status: WorkerStatus
    location: Location
    attributes: SupplierAttributes
    # Passed its latest capability challenge (and none is running now).
    verified: bool = True
    flops: float | None = None  # measured by the latest passed challenge
    challenged_at: float | None = None
    # The worker's network coordinate (None until it has measured a peer) and connectivity
    # tier from measured bandwidth (0 = unmeasured); reputation breaks placement ties.
    coordinate: Coordinate | None = None
    connectivity_tier: int = 0
    reputation: float = 0.0
    # What the worker's sandbox offers besides the container (its `sandbox` words: docker,
    # egress), as the agent registered them.
    features: frozenset[str] = frozenset()

    @property
    def available(self) -> bool:
        return (
            self.status is DeviceStatus.IDLE
            and self.worker_status is WorkerStatus.UP
            and self.verified
        )


@dataclass(frozen=True, slots=True)
class BookingRequest:
    """What a renter asks for: hard constraints, a size and a duration in whole hours.

    Empty `gpu_models` or `regions` mean "any". Prices are integer micro-units per
    device-hour.
    """

    devices: int
    kind: DeviceKind
    hours: int
    max_price_micros_per_hour: int
    gpu_models: tuple[str, ...] = ()
    min_memory_mb: int = 0
    regions: tuple[str, ...] = ()
    security_tier: SecurityTier = SecurityTier.ANY
    min_datacenter_tier: int = 0
    min_connectivity_tier: int = 0
    # Sealed-lease options (docs/sandbox.md): a container image the members run (needs a
    # worker whose agent runs Docker) and Internet egress (needs a worker that offers it).
    image: str | None = None
    egress: bool = False

    def features(self) -> frozenset[str]:
        """What a worker's sandbox must offer for this booking (Device.features)."""
        return frozenset(
            name for name, wanted in (("docker", self.image), ("egress", self.egress)) if wanted
        )


@dataclass(frozen=True, slots=True)
class Shortfall:
    """Why a booking could not be placed: how many devices each constraint ruled out."""

    requested: int
    matching: int
    excluded_by: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        """The counts in the order the constraints are checked, each in words, so the
        first cause named is the first constraint a device failed."""
        parts = [
            f"{n} {_RULED_OUT.get(name, f'by {name}')}" for name, n in self.excluded_by.items() if n
        ]
        why = f"; ruled out: {', '.join(parts)}" if parts else ""
        return f"requested {self.requested} devices, {self.matching} match{why}"


# What each hard constraint (domain.placement.hard_constraints) says about the devices it
# ruled out; `stake` is the market's pool rule, checked after every hard constraint.
_RULED_OUT = {
    "availability": "busy, down or not verified",
    "kind": "of the other kind",
    "gpu_model": "of other GPU models",
    "memory": "with too little memory",
    "region": "in other regions",
    "security_tier": "below the security tier",
    "datacenter_tier": "below the datacenter tier",
    "connectivity_tier": "below the connectivity tier",
    "price": "over the price limit",
    "image": "on workers without Docker",
    "egress": "on workers that offer no egress",
    "stake": "without their full stake",
}


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    role: Role
    name: str
    created_at: float
    soc2_verified: bool = False


@dataclass(frozen=True, slots=True)
class Worker:
    """A supplier machine running the agent. `attributes` joins what the agent claims with
    what the coordinator verified about its supplier."""

    id: str
    supplier_id: str
    public_key: str
    hostname: str
    location: Location
    attributes: SupplierAttributes
    status: WorkerStatus
    last_heartbeat: float
    registered_at: float
    agent_version: str
    sandbox: str = ""
    # Measured against the coordinator (see domain/connectivity.py); None until measured.
    upload_mbps: float | None = None
    download_mbps: float | None = None
    connectivity_tier: int = 0


@dataclass(frozen=True, slots=True)
class Cluster:
    id: str
    renter_id: str
    request: BookingRequest
    created_at: float
    predicted_diameter_ms: float | None = None
