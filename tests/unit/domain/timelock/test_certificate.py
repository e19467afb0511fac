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
from gpupool.domain.timelock.coverage import PPM
from gpupool.domain.timelock.samples import Sample
from gpupool.domain.timelock.telemetry import Flag, Rule
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
    rule: Rule = Rule.REPLAYED_VALUES,
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
        flags=[Flag(seq, rule, "test") for seq in range(flags)],
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


# The documented amounts (docs/timelock.md, "Verdict and payout"), written out here rather
# than taken from the code: a flagged sample costs its weight's share of the device's pay.
FULL, HALF = 1_000_000, 500_000
COVERAGE = 970_833  # 582 samples in a ten-minute window


def test_each_flagged_sample_costs_the_weight_of_its_rule() -> None:
    for rule, weight in (
        (Rule.CONSTANT_VALUES, FULL),
        (Rule.REPLAYED_VALUES, FULL),
        (Rule.BOUNDS, FULL),
        (Rule.POWER_VS_UTILIZATION, HALF),
        (Rule.MEMORY_WITHOUT_PROCESS, HALF),
    ):
        d = device(flags=116, rule=rule)
        penalty = 116 * weight // 582
        assert d.flag_penalty_ppm == penalty, rule
        assert d.payout_share_ppm == COVERAGE * (PPM - penalty) // PPM, rule
        assert d.flags_by_rule == {rule.value: 116}


def test_one_glitch_in_a_lease_costs_one_sample_of_pay() -> None:
    a = judge(device(flags=1, rule=Rule.BOUNDS))
    assert a.verdict is Verdict.PASS
    assert a.payout_ppm == COVERAGE * (PPM - PPM // 582) // PPM
    assert COVERAGE - a.payout_ppm < 2_000  # 0.2 % of the pay


def test_a_sample_flagged_twice_is_lost_once_at_its_heaviest_weight() -> None:
    dicts = chain_dicts(second_times(582), busy_readings(582))
    flags = [Flag(0, Rule.POWER_VS_UTILIZATION, "x"), Flag(0, Rule.BOUNDS, "y")]
    flags += [Flag(1, Rule.POWER_VS_UTILIZATION, "x"), Flag(1, Rule.MEMORY_WITHOUT_PROCESS, "z")]
    d = measure_device(
        DEVICE, WORKER, H100, hashed(dicts), t1_ms=T1, t_end_ms=T_END, interval_ms=INTERVAL,
        flags=flags, anomaly_ppm=0,
    )  # fmt: skip
    assert d.flag_penalty_ppm == (FULL + HALF) // 582


def test_more_than_half_flagged_at_full_weight_fails() -> None:
    assert judge(device(flags=582, rule=Rule.CONSTANT_VALUES)).payout_ppm == 0
    half = judge(device(flags=291, rule=Rule.CONSTANT_VALUES))
    assert half.verdict is Verdict.DEGRADED and half.payout_ppm == COVERAGE * HALF // PPM
    a = judge(device(flags=292, rule=Rule.CONSTANT_VALUES))
    assert a.verdict is Verdict.FAIL and a.payout_ppm == 0
    assert f"flag penalty 0.{292 * FULL // 582:06d} is above 0.5" in a.reasons
    # half-weight rules alone never reach the fail line: they cost at most half the pay
    b = judge(device(flags=582, rule=Rule.POWER_VS_UTILIZATION))
    assert b.verdict is Verdict.DEGRADED and b.payout_ppm == COVERAGE * HALF // PPM


MINER = {"pid": 31337, "name": "xmrig", "owner": "foreign"}


def test_a_listed_foreign_process_is_a_violation_in_every_sample_that_lists_it() -> None:
    dicts = chain_dicts(second_times(582), busy_readings(582))
    for d in dicts[:3]:
        d["processes"] = [*d["processes"], MINER]
    result = measure_device(
        DEVICE, WORKER, H100, hashed(relink(dicts)), t1_ms=T1, t_end_ms=T_END,
        interval_ms=INTERVAL, flags=[], anomaly_ppm=0,
    )  # fmt: skip
    assert len(result.violations) == 3
    assert [v.to_dict()["reported"] for v in result.violations] == [False] * 3
    assert result.payout_share_ppm == COVERAGE * 7 // 10


def test_a_foreign_process_listed_with_its_violation_record_counts_once() -> None:
    dicts = chain_dicts(second_times(582), busy_readings(582))
    dicts[0]["processes"] = [*dicts[0]["processes"], MINER]
    dicts[0]["violations"] = [KILLED | {"pid": MINER["pid"]}]  # what the honest guard sends
    result = measure_device(
        DEVICE, WORKER, H100, hashed(relink(dicts)), t1_ms=T1, t_end_ms=T_END,
        interval_ms=INTERVAL, flags=[], anomaly_ppm=0,
    )  # fmt: skip
    assert len(result.violations) == 1 and "reported" not in result.violations[0].to_dict()


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
        flags=[], anomaly_ppm=0,
    )  # fmt: skip
    assert empty.chain_head is None and empty.coverage_ppm == 0


def test_evaluate_device_counts_telemetry_flags_and_scores_from_the_prior() -> None:
    readings = busy_readings(100)
    readings[50] = (100, 30_000, 80_000, 60)  # full load at idle power
    chain = hashed(chain_dicts(second_times(100), readings))
    result = evaluate_device(
        DEVICE, WORKER, H100, chain, ModelStats(H100.model),
        t1_ms=T1, t_end_ms=T_END, interval_ms=INTERVAL,
    )  # fmt: skip
    assert result.flags_count == 1
    assert result.flags_by_rule == {"power-vs-utilization": 1}
    # an H100 is scored against its board's prior from its first lease
    assert result.anomaly_ppm == 0 and "0 of 100 samples" in result.anomaly_reason


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
    assert body["version"] == 2 and body["verdict"] == "degraded"
    assert body["payout_fraction"] == format_ppm(body["payout_ppm"]) == "0.873749"
    assert body["beacons"] == {str(T1 // EPOCH): chain_samples[0].beacon_value}
    entry = body["devices"][0]
    assert entry["worker"] == WORKER and entry["head_signature"] == "sig"
    assert entry["head"]["seq"] == 581 and entry["samples"] == 582
    assert entry["violations"][0]["exe"] == "/tmp/miner"
    assert entry["coverage"] == "0.970833" and entry["payout_ppm"] == body["payout_ppm"]
