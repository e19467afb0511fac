"""Verdict, payout and the certificate body."""

from __future__ import annotations

from typing import Any

from gpupool.crypto.canonical import canonical_json
from gpupool.domain.timelock.anomaly import ModelStats
from gpupool.domain.timelock.certificate import (
    Assessment,
    DeviceResult,
    Verdict,
    assess,
    beacons_used,
    certificate_body,
    evaluate_device,
    format_ppm,
    measure_device,
)
from gpupool.domain.timelock.samples import Sample
from tests.unit.domain.timelock.conftest import (
    DEVICE,
    EPOCH,
    H100,
    INTERVAL,
    LEASE,
    T1,
    WORKER,
    busy_readings,
    chain_dicts,
    hashed,
    relink,
    second_times,
)

T_END = T1 + 600_000  # a ten-minute lease
KILLED = {"pid": 66, "exe": "/tmp/miner", "cmdline": "miner", "first_seen_ms": T1 + 1_000,
          "killed_at_ms": T1 + 1_010}  # fmt: skip


def device(
    seconds: int = 582,
    violations: int = 0,
    anomaly_ppm: int = 0,
    flags: int = 0,
    name: str = DEVICE,
) -> DeviceResult:
    dicts = chain_dicts(second_times(seconds), busy_readings(seconds), device=name)
    for i in range(violations):
        dicts[i]["violations"] = [KILLED | {"pid": 100 + i}]
    return measure_device(
        name,
        WORKER,
        H100,
        hashed(relink(dicts)),
        t1_ms=T1,
        t_end_ms=T_END,
        interval_ms=INTERVAL,
        flags_count=flags,
        anomaly_ppm=anomaly_ppm,
    )


def judge(*devices: DeviceResult) -> Assessment:
    return assess(list(devices), T1, T_END)


def test_a_clean_lease_passes_and_pays_its_coverage() -> None:
    d = device()
    assert d.covered_ms == 582_500 and d.coverage_ppm == 970_833
    a = judge(d)
    assert a.verdict is Verdict.PASS and a.reasons == ()
    assert a.payout_ppm == a.coverage_ppm == 970_833
    assert a.payout_fraction == 0.970833


def test_a_violation_degrades_the_lease_and_takes_a_tenth_of_the_device_pay() -> None:
    a = judge(device(violations=1))
    assert a.verdict is Verdict.DEGRADED
    assert a.reasons == ("1 violation",)
    assert a.payout_ppm == 970_833 * 9 // 10


def test_low_coverage_fails_and_pays_nothing() -> None:
    a = judge(device(seconds=200))
    assert a.verdict is Verdict.FAIL and a.payout_ppm == 0
    assert a.reasons == ("coverage 33.41 % is below 50 %",)


def test_a_high_anomaly_fails_and_a_moderate_one_degrades_and_costs_its_share() -> None:
    assert judge(device(anomaly_ppm=500_000)).verdict is Verdict.FAIL
    a = judge(device(anomaly_ppm=200_000))
    assert a.verdict is Verdict.DEGRADED
    assert a.payout_ppm == 970_833 * 8 // 10


def test_more_than_ten_violations_per_device_hour_fails() -> None:
    assert judge(device(violations=10)).verdict is Verdict.DEGRADED
    assert judge(device(violations=11)).verdict is Verdict.FAIL


def test_flags_beyond_one_per_hundred_samples_degrade() -> None:
    assert judge(device(flags=5)).verdict is Verdict.PASS
    a = judge(device(flags=6))
    assert a.verdict is Verdict.DEGRADED and "6 telemetry flags" in a.reasons[0]


def test_one_device_violations_do_not_cost_the_other_device_its_share() -> None:
    a = judge(device(), device(violations=10, name=f"{WORKER}:gpu1"))
    assert a.verdict is Verdict.DEGRADED
    assert a.payout_ppm == 970_833 // 2
    assert a.anomaly_ppm == 0 and a.violations_count == 10


def test_a_lease_without_devices_fails() -> None:
    assert assess([], T1, T_END).verdict is Verdict.FAIL


def test_a_device_without_samples_has_no_head_and_no_coverage() -> None:
    empty = measure_device(
        DEVICE, WORKER, H100, [], t1_ms=T1, t_end_ms=T_END, interval_ms=INTERVAL,
        flags_count=0, anomaly_ppm=0,
    )  # fmt: skip
    assert empty.chain_head is None and empty.coverage_ppm == 0


def test_evaluate_device_counts_telemetry_flags_and_scores_without_history() -> None:
    readings = busy_readings(100)
    readings[50] = (100, 30_000, 80_000, 60)  # full load at idle power
    chain = hashed(chain_dicts(second_times(100), readings))
    result = evaluate_device(
        DEVICE, WORKER, H100, chain, ModelStats(H100.model),
        t1_ms=T1, t_end_ms=T_END, interval_ms=INTERVAL,
    )  # fmt: skip
    assert result.flags_count == 1
    assert (result.anomaly_ppm, result.anomaly_reason) == (0, "not enough history")


def assert_plain(value: Any) -> None:
    if isinstance(value, dict):
        assert all(isinstance(k, str) for k in value)
        for v in value.values():
            assert_plain(v)
    elif isinstance(value, list):
        for v in value:
            assert_plain(v)
    else:
        assert value is None or isinstance(value, (str, int, bool)), value
        assert not isinstance(value, float)


def test_the_certificate_body_holds_only_plain_integers_and_strings() -> None:
    d = device(violations=1)
    chain_samples = [Sample.from_dict(x) for x in chain_dicts(second_times(3))]
    body = certificate_body(
        lease_id=LEASE,
        cluster_id="c-1",
        devices=[d],
        t1_ms=T1,
        t_end_ms=T_END,
        beacons=beacons_used(chain_samples),
        interval_ms=INTERVAL,
        epoch_ms=EPOCH,
        max_skew_ms=2_000,
        issued_at_ms=T_END + 5_000,
        head_signatures={DEVICE: "sig"},
    )
    assert_plain(body)
    canonical_json(body)  # hashable without ambiguity
    assert body["version"] == 1 and body["verdict"] == "degraded"
    assert body["payout_fraction"] == format_ppm(body["payout_ppm"]) == "0.873749"
    assert body["beacons"] == {str(T1 // EPOCH): chain_samples[0].beacon_value}
    entry = body["devices"][0]
    assert entry["worker"] == WORKER and entry["head_signature"] == "sig"
    assert entry["head"]["seq"] == 581 and entry["samples"] == 582
    assert entry["violations"][0]["exe"] == "/tmp/miner"
    assert entry["coverage"] == "0.970833" and entry["payout_ppm"] == body["payout_ppm"]
