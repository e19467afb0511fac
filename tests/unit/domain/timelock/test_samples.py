"""The sample format: parsed with clear errors, and written back to exactly the same dict."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpupool.domain.errors import InvalidRequest
from gpupool.domain.timelock.samples import (
    MAX_JSON_INT,
    SAMPLE_KEYS,
    InvalidSample,
    Owner,
    Sample,
    _from_plain_dict,
)
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


# Values a JSON document may hold, and a few a Python caller might pass instead.
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([0, 100, 101, -50, -51, 200, 201, MAX_JSON_INT, MAX_JSON_INT + 1]),
    st.floats(allow_nan=False),
    st.text(max_size=70),
    st.sampled_from(["", "ab", "AB", "0" * 64, "f" * 64, "g" * 64, "x" * 257, "lease", "foreign"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def _parse_both(d: Any) -> tuple[Sample | None, Sample | str]:
    """(the one-pass parse, the field-by-field parse or its error message)."""
    fast = _from_plain_dict(d)
    try:
        slow: Sample | str = Sample._from_dict_naming_faults(d)
    except InvalidSample as exc:
        slow = exc.message
    return fast, slow


@settings(max_examples=400)
@given(
    key=st.sampled_from(sorted(SAMPLE_KEYS)),
    value=ODD_VALUES,
    process_key=st.sampled_from(["pid", "name", "owner", None]),
    drop=st.booleans(),
)
def test_the_one_pass_parse_accepts_exactly_what_the_field_by_field_parse_accepts(
    key: str, value: Any, process_key: str | None, drop: bool
) -> None:
    d = sample_dict(3, T1 + 3_000, prev="ab" * 32)
    if process_key is None:
        if drop:
            del d[key]
        else:
            d[key] = value
    elif drop:
        del d["processes"][0][process_key]
    else:
        d["processes"][0][process_key] = value
    fast, slow = _parse_both(d)
    if isinstance(slow, str):
        assert fast is None, slow
    else:
        assert fast is None or fast == slow


def test_the_one_pass_parse_leaves_samples_with_violations_to_the_full_parse() -> None:
    d = with_violation()
    assert _from_plain_dict(d) is None
    assert Sample.from_dict(d).to_dict() == d
    assert _from_plain_dict(sample_dict(0, T1)) == Sample._from_dict_naming_faults(
        sample_dict(0, T1)
    )
