"""Spot checks during leases, against a real coordinator through the real signed link: an
honest agent answers them beside the lease; an agent that cannot is caught before the lease
ends at the rate docs/challenge.md states, measured over 200 simulated leases."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from gpupool.agent.proof.challenger import Challenger
from tests.api.conftest import HOUR, AgentSim, Api

TICK = 5.0  # the simulated ticker's period, seconds
DEADLINE = 1.0


@pytest.fixture
def renter(api: Api) -> str:
    return api.account("renter", "renter")


def _configure(api: Api, per_hour: float = 4.0, seed: int = 7) -> None:
    api.services.challenges.spot_deadline_seconds = DEADLINE
    api.services.spot_checks.per_hour = per_hour
    api.services.spot_checks._random = random.Random(seed).randbytes  # reproducible plans


def _start(api: Api, sim: AgentSim, renter: str, leases: int = 1) -> list[str]:
    ids = []
    for _ in range(leases):
        r = api.book(renter)
        assert r.status_code == 201, r.text
        ids.append(r.json()["lease_id"])
    for lease in sim.link.heartbeat().leases:
        if lease.lease_id in ids:
            for device in lease.local_devices:
                for state in ("provisioning", "ready"):
                    sim.link.report(lease.lease_id, device, state)
    return ids


def _spot(api: Api, lease_id: str) -> list[Any]:
    with api.db.transaction() as tx:
        return tx.proofs.challenges(lease_id=lease_id)


def _run(api: Api, seconds: float, answer: AgentSim | None = None) -> None:
    """Advance the coordinator in ticker steps; an honest agent answers what it is sent."""
    for _ in range(round(seconds / TICK)):
        api.clock.advance(TICK)
        api.tick()
        if answer is not None:
            for c in answer.link.heartbeat().challenges:
                Challenger(answer.link).solve(c)


def test_an_honest_agent_answers_spot_checks_beside_the_lease(api: Api, renter: str) -> None:
    _configure(api, per_hour=40)
    sim = api.agent(api.account("supplier", "s"))
    sim.register(devices=1)
    [lease_id] = _start(api, sim, renter)
    _run(api, HOUR * 0.9, answer=sim)
    done = [c for c in _spot(api, lease_id) if c.state not in ("scheduled", "issued")]
    assert len(done) >= 5  # each takes a tick to plan and one to issue: 9 at most here
    assert {c.state for c in done} == {"passed"}, {c.reason for c in done}
    workers = api.http.get("/v1/workers", headers=api.as_key(sim.supplier_key)).json()
    assert workers[0]["devices"][0]["status"] == "leased"  # the lease kept running
    assert workers[0]["devices"][0]["verified"] is True


def test_a_silent_agent_is_caught_and_loses_its_proof(api: Api, renter: str) -> None:
    _configure(api, per_hour=40)
    sim = api.agent(api.account("supplier", "s"))
    sim.register(devices=1)
    [lease_id] = _start(api, sim, renter)
    _run(api, HOUR * 0.5)  # heartbeats would not help: the checks go unanswered
    failed = [c for c in _spot(api, lease_id) if c.state == "failed"]
    assert failed and failed[0].reason == "no answer before the deadline"
    workers = api.http.get("/v1/workers", headers=api.as_key(sim.supplier_key)).json()
    assert workers[0]["devices"][0]["verified"] is False  # to be proven again after the lease

    # on the certificate: a violation per missed check, the lease failed, nothing paid, and
    # the stake slashed to the renter (5 % a violation, 20 % for the failed lease)
    _run(api, HOUR)  # the hour runs out; the ticker certifies and settles
    cluster = api.http.get("/v1/clusters", headers=api.as_key(renter)).json()[0]
    proof = api.http.get(f"/v1/clusters/{cluster['id']}/proof", headers=api.as_key(renter))
    body = proof.json()["body"]
    [device] = body["devices"]
    missed = [v for v in device["violations"] if "spot_check" in v]
    assert [v["spot_check"] for v in missed] == [
        c.id for c in _spot(api, lease_id) if c.state == "failed"
    ]
    assert body["verdict"] == "fail" and body["payout_ppm"] == 0
    assert any("spot check" in r for r in body["reasons"])
    entries = api.http.get("/v1/ledger/entries", headers=api.as_key(renter)).json()
    slashed = [e for e in entries if e["kind"] == "slash"]
    assert slashed, "the renter is compensated from the stake"


def test_a_late_root_is_refused_and_counted(api: Api, renter: str) -> None:
    _configure(api, per_hour=40)
    sim = api.agent(api.account("supplier", "s"))
    sim.register(devices=1)
    [lease_id] = _start(api, sim, renter)
    while not (challenges := sim.link.heartbeat().challenges):
        api.clock.advance(TICK)
        api.services.spot_checks.tick()
    api.clock.advance(DEADLINE + 0.5)  # the ticker has not run: the answer itself is judged
    from gpupool.agent.link import LinkError

    with pytest.raises(LinkError) as exc:
        sim.link.challenge_answer(challenges[0].id, "ab" * 32, 0.01)
    assert exc.value.status == 409
    [late] = [c for c in _spot(api, lease_id) if c.state == "failed"]
    assert late.reason == "the root came after the deadline"


def test_plans_end_with_the_lease(api: Api, renter: str) -> None:
    _configure(api, per_hour=0.01)  # planned far beyond the lease
    sim = api.agent(api.account("supplier", "s"))
    sim.register(devices=1)
    [lease_id] = _start(api, sim, renter)
    _run(api, TICK)
    assert [c.state for c in _spot(api, lease_id)] == ["scheduled"]
    _run(api, HOUR + TICK)  # the lease's hour runs out
    assert [c.state for c in _spot(api, lease_id)] == ["cancelled"]


def predicted_detection(per_hour: float, lease_seconds: float) -> float:
    """docs/challenge.md, "Spot checks": the first check is planned at the first tick of the
    running lease, at a gap G ~ Exp(rate); it is issued at the first tick after that, and
    judged missed at the first tick after its deadline. It counts when that tick is no later
    than the last tick before the lease ends, so G must be at most L - 2 ticks - deadline,
    the deadline rounded up to whole ticks."""
    rate = per_hour / HOUR
    window = lease_seconds - 2 * TICK - TICK * math.ceil(DEADLINE / TICK)
    return 1 - math.exp(-rate * window)


def test_a_silent_agent_is_caught_at_the_documented_rate_over_200_leases(
    api: Api, renter: str
) -> None:
    _configure(api, per_hour=4.0, seed=2026)
    caught = total = 0
    for round_ in range(20):  # 20 rounds of 10 concurrent one-device leases
        # a fresh supplier each round: two failed leases block a worker (docs/ledger.md)
        sim = api.agent(api.account("supplier", f"silent-{round_}"))
        sim.register(devices=10)
        ids = _start(api, sim, renter, leases=10)
        _run(api, HOUR - TICK)  # ticks up to the last one before the hour runs out
        for lease_id in ids:
            total += 1
            caught += any(c.state == "failed" for c in _spot(api, lease_id))
        _run(api, 2 * TICK)  # the leases end
        for lease in sim.link.heartbeat().leases:
            for device in lease.local_devices:
                sim.link.report(lease.lease_id, device, "released")
        api.tick()
    p = predicted_detection(4.0, HOUR)
    spread = 3 * math.sqrt(p * (1 - p) / total)
    print(f"spot checks caught {caught} of {total} silent leases; predicted {p:.4f}")
    assert total == 200
    assert abs(caught / total - p) <= spread, (caught, total, p)
