"""Placement keeps any two workers from sharing a second open lease (their mesh routes
would collide in one namespace)."""

from __future__ import annotations

from dataclasses import replace

from gpupool.domain.mesh import ApartFromOpenLeases
from gpupool.domain.models import BookingRequest, Device, DeviceKind, DeviceSpec, Shortfall
from gpupool.domain.placement import FirstFit, Placed
from tests.unit.domain.test_placement import device


def _devices(per_worker: dict[str, int]) -> list[Device]:
    out = []
    for w, n in per_worker.items():
        for i in range(n):
            d = device(0, kind=DeviceKind.CPU)
            spec = DeviceSpec(f"cpu{i}", DeviceKind.CPU, "CPU", 1024, 100_000, cores=(i,))
            out.append(replace(d, id=f"{w}:cpu{i}", worker_id=w, spec=spec))
    return out


def _request(n: int) -> BookingRequest:
    return BookingRequest(devices=n, kind=DeviceKind.CPU, hours=1, max_price_micros_per_hour=10**9)


def test_two_workers_sharing_an_open_lease_are_not_placed_together_again() -> None:
    pool = _devices({"a": 1, "b": 1, "c": 1})
    placed = ApartFromOpenLeases(FirstFit(), [frozenset({"a", "b"})]).place(_request(2), pool)
    assert isinstance(placed, Placed)
    workers = {d.worker_id for d in placed.devices}
    assert workers != {"a", "b"} and len(workers) == 2


def test_a_single_worker_lease_never_conflicts() -> None:
    pool = _devices({"a": 2})
    placed = ApartFromOpenLeases(FirstFit(), [frozenset({"a"})]).place(_request(2), pool)
    assert isinstance(placed, Placed)


def test_no_way_apart_is_a_shortfall() -> None:
    pool = _devices({"a": 1, "b": 1})
    placed = ApartFromOpenLeases(FirstFit(), [frozenset({"a", "b"})]).place(_request(2), pool)
    assert isinstance(placed, Shortfall)
