"""The sample format: parsed with clear errors, and written back to exactly the same dict."""

from __future__ import annotations

from typing import Any

import pytest

from gpupool.domain.errors import InvalidRequest
from gpupool.domain.timelock.samples import InvalidSample, Owner, Sample
from tests.unit.domain.timelock.conftest import T1, hash_of, sample_dict


def with_violation() -> dict[str, Any]:
    return sample_dict(
        3,
        T1 + 3_000,
        prev="ab" * 32,
        violations=[
            {
                "pid": 99,
                "exe": "/usr/bin/xmrig",
                "cmdline": "xmrig -o pool",
                "first_seen_ms": T1,
                "killed_at_ms": T1 + 12,
            }
        ],
        processes=[
            {"pid": 1, "name": "python", "owner": "lease"},
            {"pid": 2, "name": "nvidia-persistenced", "owner": "system"},
        ],
    )


def test_to_dict_gives_back_exactly_the_parsed_dict_so_its_hash_is_stable() -> None:
    d = with_violation()
    parsed = Sample.from_dict(d)
    assert parsed.to_dict() == d
    assert list(parsed.to_dict()) == list(d)
    assert hash_of(parsed.to_dict()) == hash_of(d)
    assert parsed.processes[1].owner is Owner.SYSTEM
    assert parsed.violations[0].killed_at_ms == T1 + 12


def test_cpu_samples_may_leave_power_and_temperature_null() -> None:
    d = sample_dict(0, T1, reading=(40, 2_000, None, None))
    assert Sample.from_dict(d).to_dict() == d


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"utilization_pct": 101}, "utilization_pct must be within 0..100"),
        ({"seq": -1}, "seq must be within"),
        ({"time_ms": True}, "time_ms must be an integer"),
        ({"memory_mb": 1.5}, "memory_mb must be an integer"),
        ({"prev": "AB" * 32}, "prev must be 64 lowercase hex"),
        ({"beacon_value": "not hex"}, "beacon_value must be lowercase hex"),
        ({"lease": ""}, "lease must not be empty"),
        ({"processes": {}}, "processes must be a list"),
        ({"processes": [{"pid": 1, "name": "x", "owner": "root"}]}, "processes[0].owner"),
        ({"processes": [{"pid": 1, "name": "x"}]}, "processes[0] lacks owner"),
        ({"extra": 1}, "unknown fields extra"),
        (
            {
                "violations": [
                    {"pid": 1, "exe": "x", "cmdline": "", "first_seen_ms": 5, "killed_at_ms": 4}
                ]
            },
            "killed_at_ms is before first_seen_ms",
        ),
    ],
)
def test_from_dict_refuses_a_bad_field_and_names_it(change: dict[str, Any], message: str) -> None:
    d = sample_dict(0, T1) | change
    with pytest.raises(InvalidSample) as caught:
        Sample.from_dict(d)
    assert message in caught.value.message
    assert isinstance(caught.value, InvalidRequest)  # the API answers 422


def test_from_dict_names_a_missing_field() -> None:
    d = sample_dict(0, T1)
    del d["power_mw"]
    with pytest.raises(InvalidSample, match="lacks power_mw"):
        Sample.from_dict(d)


def test_from_dict_refuses_what_is_not_an_object() -> None:
    with pytest.raises(InvalidSample, match="must be an object"):
        Sample.from_dict([1, 2])
