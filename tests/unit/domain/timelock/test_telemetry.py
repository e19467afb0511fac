"""Plausibility rules: each fires on a crafted series and stays quiet on realistic ones."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpupool.domain.models import DeviceKind
from gpupool.domain.timelock.samples import Sample
from gpupool.domain.timelock.telemetry import (
    CONSTANT_RUN_SAMPLES,
    REPLAY_WINDOW_SAMPLES,
    BoardPower,
    DeviceProfile,
    Flag,
    Rule,
    board_power,
    check_telemetry,
)
from tests.unit.domain.timelock.conftest import (
    CPU,
    H100,
    Reading,
    busy_readings,
    chain_dicts,
    samples,
    second_times,
)


def series(readings: list[Reading], **fields: object) -> list[Sample]:
    return samples(chain_dicts(second_times(len(readings)), readings, **fields))


def rules(flags: list[Flag]) -> set[Rule]:
    return {f.rule for f in flags}


def test_a_busy_gpu_shows_no_flags() -> None:
    assert check_telemetry(series(busy_readings(900)), H100) == []


def test_an_idle_gpu_shows_no_flags() -> None:
    readings: list[Reading] = [(0, 0, 69_000 + (i * 37) % 900, 31) for i in range(300)]
    assert check_telemetry(series(readings, processes=[]), H100) == []


def test_a_steady_cpu_job_shows_no_flags() -> None:
    # No power sensor: a pinned job at 100 % and fixed memory repeats for minutes, legitimately.
    readings: list[Reading] = [(100, 4_096, None, None)] * 300
    assert check_telemetry(series(readings, processes=[]), CPU) == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", BoardPower(70, 700)),
        ("NVIDIA H100 PCIe", BoardPower(50, 350)),
        ("NVIDIA A100-SXM4-80GB", BoardPower(50, 400)),
        ("NVIDIA A100-PCIE-40GB", BoardPower(35, 300)),
        ("NVIDIA L40S", BoardPower(35, 350)),
        ("NVIDIA L4", BoardPower(16, 72)),
        ("NVIDIA A10", BoardPower(20, 150)),
        ("NVIDIA GeForce RTX 4090", BoardPower(20, 450)),
        ("NVIDIA GeForce RTX 3090 Ti", BoardPower(25, 450)),
        ("NVIDIA GeForce RTX 3090", BoardPower(25, 350)),
        ("Tesla V100-SXM2-32GB", BoardPower(30, 300)),
        ("Tesla T4", BoardPower(10, 70)),
        ("NVIDIA B200", None),
    ],
)
def test_board_power_is_found_by_nvml_name(name: str, expected: BoardPower | None) -> None:
    assert board_power(name) == expected


def test_values_beyond_the_device_are_flagged() -> None:
    base = series([(90, 30_000, 500_000, 60)])[0]
    too_much = [
        dataclasses.replace(base, memory_mb=90_000),
        dataclasses.replace(base, seq=1, power_mw=800_000),
        dataclasses.replace(base, seq=2, temperature_c=120),
        dataclasses.replace(base, seq=3, utilization_pct=150),
    ]
    flags = check_telemetry(too_much, H100)
    bounds = [f for f in flags if f.rule is Rule.BOUNDS]
    assert [f.seq for f in bounds] == [0, 1, 2, 3]
    assert "above the device's 81559 MB" in bounds[0].detail


def test_a_cpu_group_over_its_share_of_host_memory_is_not_out_of_bounds() -> None:
    # The share is not a limit (no memory.max): an honest job may use more of the host.
    over = series([(100, CPU.memory_mb * 2, None, None)])
    assert check_telemetry(over, CPU) == []
    gpu_over = series([(90, H100.memory_mb + 1, 500_000, 60)])
    assert rules(check_telemetry(gpu_over, H100)) == {Rule.BOUNDS}


def test_full_utilization_at_idle_power_is_flagged() -> None:
    flags = check_telemetry(series([(100, 30_000, 80_000, 60)]), H100)
    assert rules(flags) == {Rule.POWER_VS_UTILIZATION}
    assert check_telemetry(series([(100, 30_000, 140_000, 60)]), H100) == []


def test_no_utilization_at_near_maximum_power_is_flagged() -> None:
    flags = check_telemetry(series([(0, 30_000, 680_000, 80)]), H100)
    assert rules(flags) == {Rule.POWER_VS_UTILIZATION}


def test_power_rules_skip_unknown_models() -> None:
    unknown = DeviceProfile(DeviceKind.GPU, "NVIDIA B200", 180_000)
    assert check_telemetry(series([(100, 30_000, 1_000, 60), (0, 0, 999_000, 60)]), unknown) == []


def test_gpu_memory_in_use_without_a_lease_process_is_flagged() -> None:
    system_only = [{"pid": 7, "name": "Xorg", "owner": "system"}]
    flags = check_telemetry(series([(90, 20_000, 500_000, 60)], processes=system_only), H100)
    assert rules(flags) == {Rule.MEMORY_WITHOUT_PROCESS}
    assert check_telemetry(series([(0, 500, 70_000, 30)], processes=system_only), H100) == []


def test_cpu_memory_without_a_lease_process_is_not_a_gpu_rule() -> None:
    assert check_telemetry(series([(50, 20_000, None, None)], processes=[]), CPU) == []


def test_a_minute_of_unchanged_telemetry_under_load_is_flagged() -> None:
    steady: list[Reading] = [(90, 30_000, 500_000, 60)] * CONSTANT_RUN_SAMPLES
    flags = check_telemetry(series(busy_readings(10) + steady + busy_readings(10)), H100)
    assert rules(flags) == {Rule.CONSTANT_VALUES}
    assert [f.seq for f in flags] == list(range(10, 10 + CONSTANT_RUN_SAMPLES))


def test_a_shorter_run_or_an_idle_run_is_not_flagged() -> None:
    short: list[Reading] = [(90, 30_000, 500_000, 60)] * (CONSTANT_RUN_SAMPLES - 1)
    idle: list[Reading] = [(0, 0, 70_000, 30)] * (CONSTANT_RUN_SAMPLES * 2)
    assert check_telemetry(series(short), H100) == []
    assert check_telemetry(series(idle, processes=[]), H100) == []


def test_telemetry_copied_from_earlier_in_the_chain_is_flagged() -> None:
    real = busy_readings(60, seed=7)
    replayed = real + real[5 : 5 + REPLAY_WINDOW_SAMPLES]
    flags = check_telemetry(series(replayed), H100)
    assert rules(flags) == {Rule.REPLAYED_VALUES}
    assert [f.seq for f in flags] == list(range(60, 60 + REPLAY_WINDOW_SAMPLES))
    assert "repeats seq 5" in flags[0].detail


def test_a_repeated_idle_stretch_is_not_a_replay() -> None:
    idle: list[Reading] = [(0, 0, 70_000 + i % 3, 30) for i in range(30)]
    assert check_telemetry(series(idle + idle, processes=[]), H100) == []


def _replays_window_by_window(readings: list[Reading]) -> list[tuple[int, int]]:
    """(seq, copied seq) of each replayed sample, each window compared as it is."""
    width = REPLAY_WINDOW_SAMPLES
    first_at: dict[tuple[Reading, ...], int] = {}
    copied: dict[int, int] = {}
    for i in range(len(readings) - width + 1):
        window = tuple(readings[i : i + width])
        if (
            any(power is None for _, _, power, _ in window)
            or all((util or 0) == 0 for util, _, _, _ in window)
            or len(set(window)) == 1
        ):
            continue
        earlier = first_at.setdefault(window, i)
        if earlier != i:
            for k in range(width):
                copied.setdefault(i + k, earlier + k)
    return sorted(copied.items())


# Few distinct readings, so that windows repeat by themselves now and then.
FEW_READINGS = st.sampled_from(
    [(0, 0, 70_000, 30), (0, 0, None, 30), (90, 30_000, 500_000, 60), (80, 30_000, 480_000, 60)]
)


@settings(max_examples=300)
@given(
    runs=st.lists(st.tuples(FEW_READINGS, st.integers(1, 25)), max_size=12),
    copies=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 90)), max_size=3),
)
def test_replays_are_found_as_comparing_every_window_would_find_them(
    runs: list[tuple[Reading, int]], copies: list[tuple[int, int]]
) -> None:
    readings = [reading for reading, length in runs for _ in range(length)]
    for source, target in copies:  # paste a window of the series elsewhere in it
        window = readings[source : source + REPLAY_WINDOW_SAMPLES]
        readings = readings[:target] + window + readings[target:]
    flags = [f for f in check_telemetry(series(readings), H100) if f.rule is Rule.REPLAYED_VALUES]
    expected = _replays_window_by_window(readings)
    assert [f.seq for f in flags] == [seq for seq, _ in expected]
    assert [f.detail.split()[3] for f in flags] == [str(source) for _, source in expected]
