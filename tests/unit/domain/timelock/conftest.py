"""Builders for time-lock tests: linked sample dicts hashed the way the coordinator hashes
them (sha256 of canonical JSON), beacons derived from their number, realistic telemetry."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

from gpupool.crypto.canonical import canonical_json, sha256_hex
from gpupool.domain.models import DeviceKind
from gpupool.domain.timelock.chain import HashedSample
from gpupool.domain.timelock.samples import ZERO_HASH, Sample
from gpupool.domain.timelock.telemetry import DeviceProfile

LEASE = "l-1"
WORKER = "w-abc"
DEVICE = f"{WORKER}:gpu0"
EPOCH = 10_000
INTERVAL = 1_000
T1 = 1_700_000_000_000  # a multiple of EPOCH: beacon T1 // EPOCH is issued at T1
H100 = DeviceProfile(DeviceKind.GPU, "NVIDIA H100 80GB HBM3", 81_559)
CPU = DeviceProfile(DeviceKind.CPU, "AMD EPYC 7763 (cores 0-7)", 65_536)

Reading = tuple[int | None, int | None, int | None, int | None]


def beacon_value(number: int) -> str:
    return hashlib.sha256(f"beacon {number}".encode()).hexdigest()


def hash_of(sample: dict[str, Any]) -> str:
    return sha256_hex(canonical_json(sample))


def sample_dict(
    seq: int,
    time_ms: int,
    prev: str = ZERO_HASH,
    reading: Reading = (90, 30_000, 500_000, 60),
    **fields: Any,
) -> dict[str, Any]:
    beacon = fields.pop("beacon", time_ms // EPOCH)
    util, memory, power, temperature = reading
    d: dict[str, Any] = {
        "lease": LEASE,
        "device": DEVICE,
        "seq": seq,
        "time_ms": time_ms,
        "beacon": beacon,
        "beacon_value": beacon_value(beacon),
        "prev": prev,
        "processes": [{"pid": 4242, "name": "python", "owner": "lease"}],
        "utilization_pct": util,
        "memory_mb": memory,
        "power_mw": power,
        "temperature_c": temperature,
        "violations": [],
    }
    d.update(fields)
    return d


def chain_dicts(
    times: Sequence[int],
    readings: Sequence[Reading] | None = None,
    start_seq: int = 0,
    prev: str = ZERO_HASH,
    **fields: Any,
) -> list[dict[str, Any]]:
    """Linked sample dicts at `times`, continuing from (start_seq - 1, prev)."""
    out: list[dict[str, Any]] = []
    for i, t in enumerate(times):
        reading = readings[i] if readings is not None else (90, 30_000, 500_000, 60)
        d = sample_dict(start_seq + i, t, prev, reading, **fields)
        prev = hash_of(d)
        out.append(d)
    return out


def relink(dicts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fix every prev after an edit, as a forger with the agent's key could."""
    prev = ZERO_HASH if dicts and dicts[0]["seq"] == 0 else dicts[0]["prev"]
    for d in dicts:
        d["prev"] = prev
        prev = hash_of(d)
    return dicts


def hashed(dicts: Sequence[dict[str, Any]]) -> list[HashedSample]:
    return [HashedSample(Sample.from_dict(d), hash_of(d)) for d in dicts]


def samples(dicts: Sequence[dict[str, Any]]) -> list[Sample]:
    return [Sample.from_dict(d) for d in dicts]


def busy_readings(n: int, seed: int = 1, util: int = 90) -> list[Reading]:
    """What a GPU under a training job shows: utilization near `util`, power following it
    with noise, memory steady with small moves, temperature drifting."""
    rng = random.Random(seed)
    out: list[Reading] = []
    temperature = 55.0
    for _ in range(n):
        u = max(0, min(100, round(rng.gauss(util, 4))))
        power = round(70_000 + 6_300 * u * rng.uniform(0.75, 0.95))
        temperature = min(85.0, temperature + rng.uniform(-0.3, 0.5))
        out.append((u, 30_000 + rng.randrange(0, 64), power, round(temperature)))
    return out


def second_times(n: int, start: int = T1 + 500) -> list[int]:
    return [start + i * INTERVAL for i in range(n)]
