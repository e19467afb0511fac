"""Request and response bodies of the `/v1` API."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from gpupool.domain.leases import LeaseState, MemberState
from gpupool.domain.models import DeviceKind, DeviceStatus, Role, SecurityTier, WorkerStatus
from gpupool.domain.stake import StakeState

Name = Annotated[str, StringConstraints(min_length=1, max_length=128, strip_whitespace=True)]
Text = Annotated[str, StringConstraints(max_length=2000)]
# A Docker image reference: [registry[:port]/]name[/name...][:tag][@sha256:digest]
ImageRef = Annotated[
    str,
    StringConstraints(
        max_length=255,
        pattern=r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*"
        r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$",
    ),
]
Count = Annotated[int, Field(strict=True, ge=1, le=4096)]
Hours = Annotated[int, Field(strict=True, ge=1, le=8760)]
Tier = Annotated[int, Field(strict=True, ge=0, le=4)]
PRICE_LIMIT = Decimal(1_000_000)
Price = Annotated[Decimal, Field(ge=0, le=PRICE_LIMIT, max_digits=16, decimal_places=6)]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ErrorBody(Response):
    error: str
    message: str


# the coordinator's signing key -----------------------------------------------------------

COORDINATOR_KEY_HEADER = "X-Gpupool-Coordinator-Key"
"""Every response carries the coordinator's public key, so a client that pinned it notices a
changed key on its next call without asking for it (docs/timelock.md, "Pinned key")."""


class CoordinatorKeyOut(Response):
    public_key: str = Field(description="The Ed25519 key (base64) that signs certificates.")


# accounts ------------------------------------------------------------------------------


class AccountCreate(Request):
    role: Role
    name: Name


class AccountOut(Response):
    id: str
    role: Role
    name: str
    soc2_verified: bool
    created_at: datetime


class AccountCreated(AccountOut):
    api_key: str = Field(description="Shown once; the coordinator keeps only its hash.")


class Soc2Update(Request):
    verified: bool = Field(strict=True)


# workers and devices --------------------------------------------------------------------


class LocationIn(Request):
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    region: Name


class DeviceSpecIn(Request):
    local_name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    kind: DeviceKind
    model: Name
    memory_mb: int = Field(strict=True, ge=0, le=1 << 40)
    price_per_hour: Price
    uuid: Name | None = None
    cores: list[Annotated[int, Field(strict=True, ge=0, le=65535)]] = Field(
        default_factory=list, max_length=4096
    )
    driver_version: Name | None = None
    cuda_version: Name | None = None
    pci_bus_id: Name | None = None


class WorkerRegister(Request):
    public_key: Annotated[str, StringConstraints(min_length=40, max_length=64)]
    hostname: Name
    location: LocationIn
    datacenter_tier: Tier = 0
    soc2_claimed: bool = Field(default=False, strict=True)
    devices: list[DeviceSpecIn] = Field(min_length=1, max_length=256)
    agent_version: Name
    sandbox: Name = Field(description="How the agent isolates leases, e.g. 'cgroup2'.")


class DeviceOut(Response):
    id: str
    worker_id: str
    local_name: str
    kind: DeviceKind
    model: str
    memory_mb: int
    price_per_hour: str
    status: DeviceStatus
    uuid: str | None
    cores: list[int]
    driver_version: str | None
    cuda_version: str | None
    verified: bool = Field(description="Passed its latest capability challenge.")
    gflops: float | None = Field(description="Throughput measured by that challenge.")
    stake: StakeState | None = Field(
        default=None,
        description="staked (in the pool), unstaking, short (holds less than required) or none.",
    )


class WorkerOut(Response):
    id: str
    supplier_id: str
    hostname: str
    region: str
    latitude: float
    longitude: float
    datacenter_tier: int
    soc2_claimed: bool
    soc2_verified: bool
    status: WorkerStatus
    last_heartbeat: datetime
    registered_at: datetime
    agent_version: str
    sandbox: str
    upload_mbps: float | None = None
    download_mbps: float | None = None
    connectivity_tier: int = 0
    devices: list[DeviceOut]


# leases as agents see them ---------------------------------------------------------------


class MemberOut(Response):
    device_id: str
    worker_id: str
    state: MemberState
    reason: str


class AssignmentOut(Response):
    lease_id: str
    cluster_id: str
    state: LeaseState
    t1: datetime
    t2: datetime
    head_device_id: str
    local_devices: list[str]
    members: list[MemberOut]
    image: str | None = Field(default=None, description="Run the members in this image.")
    egress: bool = Field(default=False, description="The lease may reach the Internet.")


class ChallengeOut(Response):
    """A capability challenge for one idle device: multiply the matrices the seeds name."""

    id: str
    device_id: str
    n: int
    seed_a: str
    seed_b: str
    steps: int = Field(
        1, ge=1, description="Chained multiplications: X_1 = A B, X_(t+1) = g(X_t) B."
    )
    lease_id: str | None = Field(
        None, description="Set for a spot check on a leased device: answer it beside the lease."
    )
    held: int = Field(
        0,
        ge=0,
        description="Keep the chain's last `held` states on the device: once the root is in, "
        "a sketch of them is asked for (docs/challenge.md, 'Memory: the held states').",
    )


class ProbePeerOut(Response):
    worker_id: str
    host: str
    port: int


class AssignmentsOut(Response):
    lease_version: int
    heartbeat_seconds: float
    leases: list[AssignmentOut]
    challenges: list[ChallengeOut] = Field(default_factory=list)
    probe_peers: list[ProbePeerOut] = Field(
        default_factory=list, description="Workers to measure RTT to before the next heartbeat."
    )


class CoordinateIn(Request):
    """A Vivaldi coordinate (docs/placement.md): milliseconds."""

    vec: list[Annotated[float, Field(ge=-1e6, le=1e6, allow_inf_nan=False)]] = Field(
        min_length=4, max_length=4
    )
    height: float = Field(ge=0, le=1e6, allow_inf_nan=False)
    error: float = Field(ge=0, le=10, allow_inf_nan=False)


class HeartbeatIn(Request):
    coordinate: CoordinateIn | None = None
    probe_port: int | None = Field(default=None, ge=1, le=65535)
    probe_host: str | None = Field(
        default=None,
        max_length=64,
        description="Where peers reach the probe port; default: the address the coordinator sees.",
    )


class ChallengeAnswerIn(Request):
    root: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    compute_seconds: float = Field(gt=0, le=86400)


class MemoryProbeOut(Response):
    seed: str = Field(description="The sketch vectors' seed: r_j is row j of its matrix.")
    held: int = Field(description="States the sketch covers: X_(steps-held+1) .. X_steps.")
    deadline_seconds: float = Field(
        description="Time from this answer to the sketch's arrival, on the coordinator's clock."
    )


class ChallengeRowsOut(Response):
    rows: list[int] = Field(
        description="Open these rows of the product, with Merkle proofs; empty while a "
        "memory probe is outstanding."
    )
    memory: MemoryProbeOut | None = Field(
        None, description="Send the sketch of the held states first; its answer names the rows."
    )


SKETCH_BOUND = 2**53  # |S| stays below it (domain.challenge's exactness argument)


class SketchIn(Request):
    values: list[Annotated[int, Field(strict=True, gt=-SKETCH_BOUND, lt=SKETCH_BOUND)]] = Field(
        min_length=1, max_length=8192, description="S = sum_j X_(steps-held+1+j) r_j, exactly."
    )


class OpeningIn(Request):
    index: int = Field(strict=True, ge=0)
    values: list[int] = Field(max_length=8192)
    proof: list[Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]] = Field(max_length=64)


class ChallengeOpenIn(Request):
    openings: list[OpeningIn] = Field(min_length=1, max_length=64)


class ChallengeFailIn(Request):
    reason: Text


class ChallengeResultOut(Response):
    id: str
    device_id: str
    state: str = Field(description="passed, failed (device unsupported) or wrong (blocked).")
    reason: str
    flops: float | None


class MemberReport(Request):
    device_id: Annotated[str, StringConstraints(min_length=1, max_length=96)]
    state: MemberState
    reason: Text = ""


class MemberReportOut(Response):
    lease_state: LeaseState


# clusters as renters see them --------------------------------------------------------------


class BookingFilters(Request):
    """The hard constraints a booking and an offers query share."""

    gpu_models: list[Name] = Field(default_factory=list, max_length=64)
    min_memory_mb: int = Field(default=0, strict=True, ge=0, le=1 << 40)
    regions: list[Name] = Field(default_factory=list, max_length=64)
    security_tier: SecurityTier = SecurityTier.ANY
    min_datacenter_tier: Tier = 0
    min_connectivity_tier: Tier = 0
    image: ImageRef | None = Field(
        default=None,
        description="A container image the members run (a worker whose agent runs Docker and "
        "has the image, or can pull it). None: the agent's own sandbox.",
    )
    egress: bool = Field(
        default=False,
        description="Internet egress from the lease (never the supplier's networks); only "
        "workers that offer it. Off: the members reach each other and nothing else.",
    )


class BookingIn(BookingFilters):
    devices: Count
    kind: DeviceKind = DeviceKind.GPU
    hours: Hours
    max_price_per_hour: Price = Field(description="Per device-hour, in account units.")


class OffersQuery(BookingFilters):
    """GET /v1/offers' query: a booking's constraints without its size; every one optional."""

    kind: DeviceKind | None = Field(default=None, description="None: both kinds.")
    max_price_per_hour: Price | None = Field(
        default=None, description="Per device-hour, in account units. None: any price."
    )


class OfferOut(Response):
    kind: DeviceKind
    model: str
    memory_mb: int
    region: str
    connectivity_tier: int
    price_per_hour: str = Field(description="Per device-hour, in account units.")
    features: list[str] = Field(description="What the workers' sandboxes offer: docker, egress.")
    count: int = Field(description="Devices bookable now.")
    workers: int = Field(description="The workers they are on.")


class QuoteDeviceOut(Response):
    device_id: str
    worker_id: str
    kind: DeviceKind
    model: str
    region: str
    connectivity_tier: int
    price_per_hour: str


class QuoteOut(Response):
    """A booking's dry run: what booking it now would get and cost. Nothing is booked."""

    devices: list[QuoteDeviceOut]
    head_device_id: str
    predicted_diameter_ms: float | None = Field(
        default=None, description="Largest predicted RTT between two of these devices."
    )
    hours: int
    price_per_hour: str = Field(description="All devices together, per hour.")
    total_price: str
    balance: str = Field(description="Your available funds now.")
    affordable: bool = Field(description="False: booking it now would be refused (402).")


class ExtendIn(Request):
    hours: Hours


class EventOut(Response):
    at: datetime
    state: LeaseState
    note: str


class ClusterOut(Response):
    id: str
    lease_id: str
    renter_id: str
    state: LeaseState
    t1: datetime
    t2: datetime
    hours: int
    head_device_id: str
    predicted_diameter_ms: float | None = Field(
        default=None, description="Largest predicted RTT between two members at booking."
    )
    price_per_hour: str = Field(description="All devices together, per hour.")
    total_price: str
    reason: str
    request: dict[str, Any]
    members: list[MemberOut]
    events: list[EventOut]


# Proof of Time-Lock -------------------------------------------------------------------------

HexHash = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class BandwidthOut(Response):
    stored: bool = Field(description="False: send `next_bytes` to measure over a longer time.")
    next_bytes: int | None = None
    upload_mbps: float | None = Field(None, description="Timed by the coordinator.")
    download_mbps: float | None = Field(None, description="Timed by the agent.")
    connectivity_tier: int | None = None


class BeaconOut(Response):
    number: int = Field(description="Beacon b is issued at b * epoch_ms (Unix ms).")
    value: str
    epoch_ms: int
    interval_ms: int = Field(description="How often agents sample each leased device.")


class SampleBatchIn(Request):
    lease_id: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    device_id: Annotated[str, StringConstraints(min_length=1, max_length=96)]
    samples: list[dict[str, Any]] = Field(min_length=1, max_length=1200)
    signature: Annotated[str, StringConstraints(min_length=80, max_length=100)] = Field(
        description="Base64 Ed25519 over the batch message naming the last sample's hash."
    )


class SamplesIn(Request):
    batches: list[SampleBatchIn] = Field(min_length=1, max_length=256)


class BatchResultOut(Response):
    lease_id: str
    device_id: str
    accepted: int
    head_seq: int | None = Field(description="The coordinator's chain head after this batch.")
    head_hash: str | None
    refused: str | None = Field(description="A stable code when the batch was refused.")
    reason: str


class SamplesOut(Response):
    results: list[BatchResultOut]
    beacon: BeaconOut


class CertificateOut(Response):
    lease_id: str
    cluster_id: str
    body: dict[str, Any] = Field(description="Exactly what the signature covers.")
    signature: str
    coordinator_key: str


class BatchSignatureOut(Response):
    device_id: str
    last_seq: int
    last_hash: str
    signature: str


class ProofExportOut(Response):
    certificate: CertificateOut
    samples: dict[str, list[dict[str, Any]]] = Field(description="Per device, in chain order.")
    batches: list[BatchSignatureOut]
    worker_keys: dict[str, str]
