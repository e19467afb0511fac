"""Hard constraints and first-fit placement, including property tests."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gpupool.domain.models import (
    BookingRequest,
    Device,
    DeviceKind,
    DeviceSpec,
    DeviceStatus,
    Location,
    SecurityTier,
    Shortfall,
    SupplierAttributes,
    WorkerStatus,
)
from gpupool.domain.placement import FirstFit, Placed, filter_devices, hard_constraints

MODELS = ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", "NVIDIA GeForce RTX 4090"]
REGIONS = ["eu-west", "us-east", "ap-south"]


def device(
    i: int,
    *,
    kind: DeviceKind = DeviceKind.GPU,
    model: str = MODELS[0],
    memory: int = 81920,
    price: int = 1_000_000,
    region: str = "eu-west",
    status: DeviceStatus = DeviceStatus.IDLE,
    up: bool = True,
    attrs: SupplierAttributes | None = None,
) -> Device:
    return Device(
        id=f"w-{i}:gpu0",
        worker_id=f"w-{i}",
        supplier_id="a-1",
        spec=DeviceSpec(f"gpu{i}", kind, model, memory, price),
        status=status,
        worker_status=WorkerStatus.UP if up else WorkerStatus.DOWN,
        location=Location(0, 0, region),
        attributes=attrs or SupplierAttributes(),
    )


def request(n: int, **kw: object) -> BookingRequest:
    base: dict[str, object] = {
        "devices": n,
        "kind": DeviceKind.GPU,
        "hours": 1,
        "max_price_micros_per_hour": 10_000_000,
    }
    return BookingRequest(**{**base, **kw})  # type: ignore[arg-type]


def test_first_fit_picks_the_cheapest_and_names_the_first_head() -> None:
    pool = [device(1, price=3), device(2, price=1), device(3, price=2)]
    placed = FirstFit().place(request(2), pool)
    assert isinstance(placed, Placed)
    assert [d.id for d in placed.devices] == ["w-2:gpu0", "w-3:gpu0"]
    assert placed.head.id == "w-2:gpu0"


def test_shortfall_counts_the_first_constraint_each_device_fails() -> None:
    pool = [
        device(1, status=DeviceStatus.LEASED),
        device(2, up=False),
        device(3, kind=DeviceKind.CPU),
        device(4, model=MODELS[2]),
        device(5, memory=1024),
        device(6, region="us-east"),
        device(7, price=99_000_000),
        device(8),
    ]
    wanted = request(2, gpu_models=(MODELS[0],), min_memory_mb=40_000, regions=("EU-WEST",))
    result = FirstFit().place(wanted, pool)
    assert isinstance(result, Shortfall)
    assert (result.requested, result.matching) == (2, 1)
    assert result.excluded_by == {
        "availability": 2,
        "kind": 1,
        "gpu_model": 1,
        "memory": 1,
        "region": 1,
        "security_tier": 0,
        "price": 1,
    }
    assert "requested 2 devices, 1 match" in result.describe()


def test_security_tiers() -> None:
    claimed = SupplierAttributes(soc2_claimed=True)
    verified = SupplierAttributes(soc2_claimed=True, soc2_verified=True)
    assert SupplierAttributes().meets(SecurityTier.ANY)
    assert not SupplierAttributes().meets(SecurityTier.SOC2_CLAIMED)
    assert claimed.meets(SecurityTier.SOC2_CLAIMED)
    assert not claimed.meets(SecurityTier.SOC2_VERIFIED)
    assert verified.meets(SecurityTier.SOC2_VERIFIED)


devices_st = st.builds(
    device,
    i=st.integers(0, 10_000),
    kind=st.sampled_from(list(DeviceKind)),
    model=st.sampled_from(MODELS),
    memory=st.integers(0, 100_000),
    price=st.integers(0, 5_000_000),
    region=st.sampled_from(REGIONS),
    status=st.sampled_from(list(DeviceStatus)),
    up=st.booleans(),
    attrs=st.builds(SupplierAttributes, st.integers(0, 4), st.booleans(), st.booleans()),
)
requests_st = st.builds(
    request,
    st.integers(1, 6),
    kind=st.sampled_from(list(DeviceKind)),
    gpu_models=st.lists(st.sampled_from(MODELS), max_size=2).map(tuple),
    min_memory_mb=st.integers(0, 100_000),
    regions=st.lists(st.sampled_from(REGIONS), max_size=2).map(tuple),
    security_tier=st.sampled_from(list(SecurityTier)),
    min_datacenter_tier=st.integers(0, 4),
    max_price_micros_per_hour=st.integers(0, 5_000_000),
)


@given(requests_st, st.lists(devices_st, max_size=30, unique_by=lambda d: d.id))
def test_placement_never_breaks_a_hard_constraint(req: BookingRequest, pool: list[Device]) -> None:
    result = FirstFit().place(req, pool)
    matching, excluded = filter_devices(req, pool)
    assert len(matching) + sum(excluded.values()) == len(pool)
    if isinstance(result, Shortfall):
        assert result.matching == len(matching) < req.devices
        return
    assert len(result.devices) == req.devices
    assert len({d.id for d in result.devices}) == req.devices
    assert result.head in result.devices
    for d in result.devices:
        assert all(check(d) for _, check in hard_constraints(req))
