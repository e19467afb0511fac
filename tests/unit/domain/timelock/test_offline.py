"""Offline re-verification finds every change to a certificate or its samples."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pytest

from gpupool.crypto.canonical import canonical_json, sha256_hex
from gpupool.domain.timelock.anomaly import ModelStats
from gpupool.domain.timelock.certificate import beacons_used, certificate_body, evaluate_device
from gpupool.domain.timelock.offline import verify_certificate
from tests.unit.domain.timelock.conftest import (
    EPOCH,
    H100,
    INTERVAL,
    LEASE,
    T1,
    WORKER,
    busy_readings,
    chain_dicts,
    hash_of,
    hashed,
    relink,
    samples,
    second_times,
)

T_END = T1 + 120_000
DEVICES = (f"{WORKER}:gpu0", f"{WORKER}:gpu1")

Chains = dict[str, list[dict[str, Any]]]


def head_signature(worker: str, head_hash: str) -> str:
    return f"sig({worker},{head_hash})"  # stands in for the worker's Ed25519 signature


def issue() -> tuple[dict[str, Any], Chains]:
    chains: Chains = {
        d: chain_dicts(second_times(118), busy_readings(118, seed=i), device=d)
        for i, d in enumerate(DEVICES)
    }
    results = [
        evaluate_device(
            d,
            WORKER,
            H100,
            hashed(chains[d]),
            ModelStats(H100.model),
            t1_ms=T1,
            t_end_ms=T_END,
            interval_ms=INTERVAL,
        )
        for d in DEVICES
    ]
    body = certificate_body(
        lease_id=LEASE,
        cluster_id="c-1",
        devices=results,
        t1_ms=T1,
        t_end_ms=T_END,
        beacons=beacons_used(s for d in DEVICES for s in samples(chains[d])),
        interval_ms=INTERVAL,
        epoch_ms=EPOCH,
        max_skew_ms=2_000,
        issued_at_ms=T_END + 3_000,
        head_signatures={d: head_signature(WORKER, hash_of(chains[d][-1])) for d in DEVICES},
    )
    return body, chains


@pytest.fixture
def issued() -> tuple[dict[str, Any], Chains]:
    return issue()


def verify(body: Mapping[str, Any], chains: Chains, signed: Mapping[str, Any]) -> list[str]:
    signed_hash = sha256_hex(canonical_json(signed))
    return verify_certificate(
        body,
        chains,
        {d: [hash_of(s) for s in chain] for d, chain in chains.items()},
        verify_sig=lambda b: sha256_hex(canonical_json(b)) == signed_hash,
        verify_head=lambda worker, h, sig: sig == head_signature(worker, h),
    )


def test_an_untouched_certificate_verifies(issued: tuple[dict[str, Any], Chains]) -> None:
    body, chains = issued
    assert body["verdict"] == "pass"
    assert verify(body, chains, body) == []


def test_a_changed_sample_value_breaks_the_chain(issued: tuple[dict[str, Any], Chains]) -> None:
    body, chains = issued
    chains[DEVICES[0]][40]["power_mw"] += 1
    problems = verify(body, chains, body)
    assert any("chain-broken" in p and "seq 41" in p for p in problems), problems


def test_a_changed_and_relinked_chain_no_longer_ends_at_the_signed_head(
    issued: tuple[dict[str, Any], Chains],
) -> None:
    body, chains = issued
    chains[DEVICES[0]][40]["utilization_pct"] = 3
    relink(chains[DEVICES[0]])
    problems = verify(body, chains, body)
    assert any(p.startswith("devices[0].head.hash") for p in problems), problems


def test_a_dropped_sample_is_found(issued: tuple[dict[str, Any], Chains]) -> None:
    body, chains = issued
    del chains[DEVICES[1]][60]
    problems = verify(body, chains, body)
    assert any("chain-broken" in p and "expected seq 60" in p for p in problems), problems


def test_a_dropped_last_sample_changes_the_count_and_head(
    issued: tuple[dict[str, Any], Chains],
) -> None:
    body, chains = issued
    chains[DEVICES[1]].pop()
    problems = verify(body, chains, body)
    assert any(p.startswith("devices[1].samples") for p in problems), problems
    assert any(p.startswith("devices[1].head.seq") for p in problems), problems


def test_a_changed_verdict_is_found_even_under_a_valid_signature(
    issued: tuple[dict[str, Any], Chains],
) -> None:
    body, chains = issued
    forged = copy.deepcopy(body) | {"verdict": "degraded"}
    unsigned = verify(forged, chains, body)
    assert "the coordinator's signature over the certificate does not hold" in unsigned
    resigned = verify(forged, chains, forged)
    assert resigned == ["verdict: the certificate says 'degraded', the samples give 'pass'"]


def test_a_raised_payout_is_found(issued: tuple[dict[str, Any], Chains]) -> None:
    body, chains = issued
    forged = copy.deepcopy(body)
    forged["devices"][0]["covered_ms"] = T_END - T1
    forged["payout_ppm"] = 1_000_000
    problems = verify(forged, chains, forged)
    assert any(p.startswith("devices[0].covered_ms") for p in problems)
    assert any(p.startswith("payout_ppm") for p in problems)


def test_a_head_the_worker_did_not_sign_is_found(issued: tuple[dict[str, Any], Chains]) -> None:
    body, chains = issued
    body["devices"][1]["head_signature"] = "forged"
    problems = verify(body, chains, body)
    assert problems == [f"{DEVICES[1]}: the worker's signature over the head does not hold"]


def test_samples_naming_a_beacon_value_the_certificate_lacks_are_found(
    issued: tuple[dict[str, Any], Chains],
) -> None:
    body, chains = issued
    chains[DEVICES[0]][0]["beacon_value"] = "ee" * 32
    relink(chains[DEVICES[0]])
    problems = verify(body, chains, body)
    assert any("beacon-mismatch" in p for p in problems), problems


def test_samples_of_a_device_the_certificate_omits_are_found(
    issued: tuple[dict[str, Any], Chains],
) -> None:
    body, chains = issued
    chains["w-xyz:gpu0"] = chains[DEVICES[0]]
    problems = verify(body, chains, body)
    assert "w-xyz:gpu0: samples given for a device the certificate omits" in problems


def test_a_malformed_certificate_is_reported_not_raised() -> None:
    body = {"version": 1}
    problems = verify(body, {}, body)
    assert problems == [
        "the certificate is malformed: certificate version 1; this verifier checks the rules"
        " of version 2"
    ]


def test_a_beacon_no_sample_names_is_found(issued: tuple[dict[str, Any], Chains]) -> None:
    body, chains = issued
    body["beacons"]["1"] = "ab" * 32
    problems = verify(body, chains, body)
    assert problems == ["beacons.1: in the certificate, but the samples do not give it"]


def test_the_anomaly_is_recomputed_from_the_bands_the_certificate_states(
    issued: tuple[dict[str, Any], Chains],
) -> None:
    body, chains = issued
    bands = body["devices"][0]["anomaly_bands"]
    assert set(bands) == {"power_w_per_pct", "temperature_step_c", "memory_step_mb"}
    # a coordinator that states the prior's bands but reports an anomaly it did not compute
    forged = copy.deepcopy(body)
    forged["devices"][0]["anomaly_ppm"] = 600_000
    problems = verify(forged, chains, forged)
    assert any(p.startswith("devices[0].anomaly_ppm") for p in problems), problems
    # a band moved away from these readings makes every busy sample an outlier: the verifier
    # derives that score (not the one stated) and the verdict that follows from it
    moved = copy.deepcopy(body)
    moved["devices"][0]["anomaly_bands"]["power_w_per_pct"] = {"mean_e6": 40_000_000,
                                                               "std_e6": 500_000}  # fmt: skip
    problems = verify(moved, chains, moved)
    assert any(p.startswith("devices[0].anomaly_ppm") for p in problems)
    assert any(p.startswith("verdict") for p in problems)


def test_malformed_bands_are_reported_not_raised(issued: tuple[dict[str, Any], Chains]) -> None:
    body, chains = issued
    for bad in (
        {"utilization_pct": {"mean_e6": 1, "std_e6": 20_000_000}},  # not a scored feature
        {"power_w_per_pct": {"mean_e6": 4_000_000, "std_e6": 1}},  # narrower than the floor
        {"memory_step_mb": 3},
        [],
    ):
        forged = copy.deepcopy(body)
        forged["devices"][0]["anomaly_bands"] = bad
        problems = verify(forged, chains, forged)
        assert any("devices[0] is malformed" in p for p in problems), problems
