"""Cheating on telemetry does not pay: modified agents on the real signed link against a real
coordinator, each against an honest lease of the same length, paid by the amounts
docs/timelock.md ("Verdict and payout") states.

The cheater registers "H100"s and gets them through the capability challenge (the test's
clock stands still while it computes, as if the devices were real); what it forges is the
telemetry.
Each stream then goes through the agent's own recorder (chained, signed batches), and the
lease is certified, settled and slashed by the coordinator's ticker.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gpupool.agent.proof.challenge import run_challenge
from gpupool.services.challenges import Sizing
from gpupool.services.proof_files import verify_folder
from tests.api.conftest import HOUR, AgentSim, Api
from tests.api.test_timelock import agent_recorder, export_folder
from tests.unit.domain.timelock.conftest import Reading, busy_readings

H100 = {"model": "NVIDIA H100 80GB HBM3", "memory_mb": 81_559}
PRICE = "2.00"
HOURS = 2
SECONDS = int(HOUR) * HOURS - 1  # samples until the renter ends the lease
PPM = 1_000_000
LEASE_PROCESS = {"pid": 4242, "name": "python", "owner": "lease"}
MINER = {"pid": 31337, "name": "xmrig", "owner": "foreign"}

Stream = Callable[[int], tuple[list[dict[str, Any]], Reading]]
"""Second -> (processes listed, (utilization, memory, power, temperature)) for that sample."""


@dataclass
class Shown:
    device_id: str
    lease_id: str
    processes: list[dict[str, Any]]
    reading: Reading

    def sample_fields(self) -> dict[str, Any]:
        util, memory, power, temperature = self.reading
        return {
            "processes": self.processes,
            "utilization_pct": util,
            "memory_mb": memory,
            "power_mw": power,
            "temperature_c": temperature,
            "violations": [],  # the cheater never admits to a kill
        }


def _gpu_supplier(api: Api, devices: int = 1) -> tuple[str, AgentSim]:
    key = api.account("supplier", "cheat")
    sim = api.agent(key)
    # A small chain, and the test's clock stands still while this CPU computes it: the
    # coordinator sees an answer as fast as an H100's, so the devices pass and the question
    # left is the telemetry (tests/api/test_challenges.py shows the real clock failing them).
    api.services.challenges.sizing = Sizing(gpu_size=64, target_seconds=1e-6, max_steps=4)
    sim.solve_challenges = False
    sim.register_gpus(devices, price=PRICE, **H100)  # staking issues the challenges
    for c in sim.link.heartbeat().challenges:
        work = run_challenge(c.n, int(c.seed_a, 16), int(c.seed_b, 16), "numpy", c.steps, c.held)
        claimed = 2 * c.steps * c.n**3 / 60e12  # an H100's FP32 rate, not this CPU's
        assert sim.submit(c.id, work, claimed).state == "passed"
    return key, sim


Supplier = tuple[str, AgentSim]


def _lease_run(api: Api, tmp_path: Path, cheat: Supplier, stream: Stream) -> dict[str, Any]:
    """Book the supplier's one "H100" for HOURS, send `stream` through the recorder, end the
    lease; the body of its certificate (the ticker has certified and settled it), with what
    the supplier was paid and the stake it has left."""
    renter = api.account("renter", "r")
    supplier, sim = cheat
    r = api.book(renter, kind="gpu", hours=HOURS, max_price_per_hour="3")
    assert r.status_code == 201, r.text
    cluster = r.json()
    lease_id, device_id = cluster["lease_id"], cluster["members"][0]["device_id"]
    for state in ("provisioning", "ready"):
        sim.link.report(lease_id, device_id, state)
    recorder = agent_recorder(api, sim, tmp_path / f"chains-{cluster['id']}.json")
    for second in range(SECONDS):
        if recorder.beacon_outdated():
            recorder.refresh_beacon()
        processes, reading = stream(second)
        recorder.record([Shown(device_id, lease_id, processes, reading)])
        api.clock.advance(1)
        if second % 10 == 9:
            sim.link.heartbeat()  # the worker stays up through the lease and after it
            recorder.flush()
    recorder.flush()
    r = api.http.post(f"/v1/clusters/{cluster['id']}/terminate", headers=api.as_key(renter))
    assert r.status_code == 200, r.text
    sim.link.report(lease_id, device_id, "released")
    api.tick()
    proof = api.http.get(f"/v1/clusters/{cluster['id']}/proof", headers=api.as_key(renter))
    assert proof.status_code == 200, proof.text
    body: dict[str, Any] = proof.json()["body"]
    body["_renter"] = renter
    body["_paid_micros"] = _paid(api, renter, supplier)
    body["_stake_left"] = _stake_held(api, supplier)
    return body


def _paid(api: Api, renter: str, supplier: str) -> int:
    entries = api.http.get("/v1/ledger/entries", headers=api.as_key(renter)).json()
    settle = next(e for e in entries if e["kind"] == "settle")
    me = api.http.get("/v1/accounts/me", headers=api.as_key(supplier)).json()
    paid = {p["account"]: p["amount_micros"] for p in settle["postings"]}
    return int(paid.get(f"supplier:{me['id']}", 0))


def _stake_held(api: Api, supplier: str) -> int:
    stakes = api.http.get("/v1/stakes", headers=api.as_key(supplier)).json()
    return int(stakes[0]["held_micros"])


def honest(seed: int = 1) -> Stream:
    readings = busy_readings(SECONDS, seed=seed)
    return lambda second: ([LEASE_PROCESS], readings[second])


def constant(second: int) -> tuple[list[dict[str, Any]], Reading]:
    return [LEASE_PROCESS], (90, 30_000, 500_000, 60)


def with_miner(seconds: int) -> Stream:
    """Honest-looking telemetry, and a foreign miner listed (never killed) for `seconds`."""
    base = honest(seed=2)

    def stream(second: int) -> tuple[list[dict[str, Any]], Reading]:
        processes, reading = base(second)
        return ([*processes, MINER] if second < seconds else processes), reading

    return stream


def made_up(seed: int = 5) -> Stream:
    """What a forger with no board writes: a plausible range for each reading, drawn anew
    every second."""
    rng = random.Random(seed)
    readings = [
        (
            rng.randint(90, 99),
            rng.randint(30_000, 40_000),
            rng.randint(400_000, 600_000),
            rng.randint(60, 70),
        )
        for _ in range(SECONDS)
    ]
    return lambda second: ([LEASE_PROCESS], readings[second])


def too_regular(second: int) -> tuple[list[dict[str, Any]], Reading]:
    """Seven made-up readings, cycled: it never repeats one tuple for a minute."""
    cycle = [(93 + k, 32_000, 510_000 + 3_000 * k, 61 + k % 2) for k in range(7)]
    return [LEASE_PROCESS], cycle[second % len(cycle)]


def _device(body: dict[str, Any]) -> dict[str, Any]:
    device: dict[str, Any] = body["devices"][0]
    return device


def _price_paid(body: dict[str, Any], payout_ppm: int) -> int:
    """What settlement pays the supplier for `payout_ppm` of this lease (docs/ledger.md)."""
    ran_ms = body["t_end_ms"] - body["t1_ms"]
    return 2_000_000 * ran_ms // round(HOUR * 1000) * payout_ppm // PPM


@pytest.fixture
def cheat(api: Api) -> Supplier:
    return _gpu_supplier(api)


@pytest.fixture
def baseline(api: Api, tmp_path: Path, cheat: Supplier) -> dict[str, Any]:
    """The same device's honest lease of the same length, before it cheats."""
    body = _lease_run(api, tmp_path, cheat, honest())
    assert body["verdict"] == "pass", body["reasons"]
    assert body["payout_ppm"] == body["coverage_ppm"] > 990_000
    assert body["_paid_micros"] == _price_paid(body, body["payout_ppm"])
    return body


def test_a_stream_constant_throughout_is_flagged_fails_and_is_paid_nothing(
    api: Api, tmp_path: Path, cheat: Supplier, baseline: dict[str, Any]
) -> None:
    body = _lease_run(api, tmp_path, cheat, constant)
    d = _device(body)
    assert d["flags_by_rule"] == {"constant-values": d["samples"]}
    assert d["flag_penalty_ppm"] == PPM  # every sample at full weight
    assert body["verdict"] == "fail" and "flag penalty 1.000000 is above 0.5" in body["reasons"]
    assert body["payout_ppm"] == 0 and body["_paid_micros"] == 0
    assert baseline["_paid_micros"] > 0


def test_a_constant_run_inside_an_honest_lease_costs_exactly_its_samples(
    api: Api, tmp_path: Path, cheat: Supplier, baseline: dict[str, Any]
) -> None:
    real = honest()

    def stream(second: int) -> tuple[list[dict[str, Any]], Reading]:
        return constant(second) if 50 <= second < 120 else real(second)

    body = _lease_run(api, tmp_path, cheat, stream)
    d = _device(body)
    assert d["flags_by_rule"] == {"constant-values": 70}
    penalty = 70 * PPM // d["samples"]  # full weight per flagged sample
    assert body["verdict"] == "degraded"
    # the splice's temperature jump is an outlier too, and costs its one sample
    share = d["coverage_ppm"] * (PPM - penalty) // PPM
    assert body["payout_ppm"] == share * (PPM - d["anomaly_ppm"]) // PPM
    assert body["_paid_micros"] == _price_paid(body, body["payout_ppm"])
    assert baseline["payout_ppm"] - body["payout_ppm"] > 300_000


def test_a_foreign_miner_listed_and_never_killed_fails_and_loses_the_stake(
    api: Api, tmp_path: Path, cheat: Supplier, baseline: dict[str, Any]
) -> None:
    body = _lease_run(api, tmp_path, cheat, with_miner(SECONDS))
    d = _device(body)
    assert len(d["violations"]) == d["samples"]  # one per sample that lists it
    assert {v["pid"] for v in d["violations"]} == {MINER["pid"]}
    assert not any(v["reported"] for v in d["violations"])
    assert body["verdict"] == "fail" and body["payout_ppm"] == 0
    assert body["_paid_micros"] == 0
    assert body["_stake_left"] == 0  # 5 % per violation, to the renter, until none is left


def test_a_miner_listed_for_three_samples_costs_three_violations(
    api: Api, tmp_path: Path, cheat: Supplier, baseline: dict[str, Any]
) -> None:
    body = _lease_run(api, tmp_path, cheat, with_miner(3))
    d = _device(body)
    assert len(d["violations"]) == 3 and body["verdict"] == "degraded"
    assert body["payout_ppm"] == d["coverage_ppm"] * 7 // 10  # a tenth per violation
    assert body["_paid_micros"] == _price_paid(body, body["payout_ppm"])
    staked = baseline["_stake_left"]  # the required stake: the honest lease took none
    assert body["_stake_left"] == staked - 3 * (staked * 5 // 100)  # 5 % per violation


def test_made_up_h100_telemetry_scores_an_anomaly_from_the_prior_and_is_paid_nothing(
    api: Api, tmp_path: Path, cheat: Supplier, baseline: dict[str, Any]
) -> None:
    body = _lease_run(api, tmp_path, cheat, made_up())
    d = _device(body)
    assert d["flags"] == 0  # no plausibility rule fires on it
    assert "temperature_step_c" in d["anomaly_reason"], d["anomaly_reason"]
    assert d["anomaly_ppm"] >= 500_000
    assert body["verdict"] == "fail" and body["payout_ppm"] == 0
    assert baseline["devices"][0]["anomaly_ppm"] == 0


def test_too_regular_made_up_telemetry_is_flagged_as_replayed_and_paid_nothing(
    api: Api, tmp_path: Path, cheat: Supplier, baseline: dict[str, Any]
) -> None:
    body = _lease_run(api, tmp_path, cheat, too_regular)
    d = _device(body)
    assert set(d["flags_by_rule"]) == {"replayed-values"}
    flagged = d["flags_by_rule"]["replayed-values"]
    assert d["flag_penalty_ppm"] == flagged * PPM // d["samples"]
    assert body["verdict"] == "fail" and body["payout_ppm"] == 0


def test_a_forger_who_copies_a_real_trace_is_paid_like_an_honest_device(
    api: Api, tmp_path: Path, cheat: Supplier, baseline: dict[str, Any]
) -> None:
    # The limit of telemetry checks: a trace recorded on a real H100 and replayed without
    # repeating itself inside the chain looks real. The capability challenge and spot
    # checks, not telemetry, must catch a device that is not there.
    body = _lease_run(api, tmp_path, cheat, honest(seed=77))
    assert body["verdict"] == "pass" and body["payout_ppm"] == baseline["payout_ppm"]


def test_the_offline_verifier_recomputes_the_cheaters_certificate_and_agrees(
    api: Api, tmp_path: Path, cheat: Supplier
) -> None:
    real = honest()

    def stream(second: int) -> tuple[list[dict[str, Any]], Reading]:
        processes, reading = constant(second) if second >= 100 else real(second)
        return ([*processes, MINER] if second < 2 else processes), reading

    body = _lease_run(api, tmp_path, cheat, stream)
    d = _device(body)
    assert len(d["violations"]) == 2 and d["flags_by_rule"] == {"constant-values": 99}
    folder = export_folder(api, body["_renter"], body["cluster"], tmp_path / "proof")
    assert verify_folder(folder) == []
