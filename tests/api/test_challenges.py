"""Capability challenges through the API: a device joins the pool only after it proves what
it is; a wrong answer blocks it, a failure or a too-slow answer makes it unsupported."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from gpupool.agent.proof.challenge import ChallengeWork, run_challenge
from gpupool.crypto.merkle import MerkleTree, row_leaves
from gpupool.domain.challenge import challenge_flops
from gpupool.services.challenges import Sizing
from tests.api.conftest import AgentSim, Api


@pytest.fixture
def renter(api: Api) -> str:
    return api.account("renter", "renter")


def _statuses(api: Api, key: str) -> dict[str, tuple[str, bool]]:
    workers = api.http.get("/v1/workers", headers=api.as_key(key)).json()
    return {d["id"]: (d["status"], d["verified"]) for w in workers for d in w["devices"]}


def _unsolved(api: Api, **register: Any) -> tuple[AgentSim, str]:
    key = api.account("supplier", "s")
    sim = api.agent(key)
    sim.solve_challenges = False
    sim.register(devices=1, **register)
    return sim, key


def test_a_new_device_is_bookable_only_after_it_passes(api: Api, renter: str) -> None:
    sim, key = _unsolved(api)
    assert _statuses(api, key)[sim.device(0)] == ("idle", False)
    assert api.book(renter).status_code == 409

    results = sim.solve_pending()
    assert [r.state for r in results] == ["passed"]
    assert results[0].flops and results[0].flops > 0
    assert _statuses(api, key)[sim.device(0)] == ("idle", True)
    assert api.book(renter).status_code == 201


def _answer(sim: AgentSim, work: ChallengeWork) -> Any:
    challenge = sim.link.heartbeat().challenges[0]
    return sim.submit(challenge.id, work, work.compute_seconds)


def _honest_work(sim: AgentSim) -> ChallengeWork:
    c = sim.link.heartbeat().challenges[0]
    return run_challenge(c.n, int(c.seed_a, 16), int(c.seed_b, 16), backend="numpy")


def test_a_wrong_product_blocks_the_device(api: Api, renter: str) -> None:
    sim, key = _unsolved(api)
    work = _honest_work(sim)
    wrong = work.product + np.int32(1)  # every row wrong, consistently committed
    forged = replace(work, product=wrong, tree=MerkleTree(row_leaves(wrong)))
    result = _answer(sim, forged)
    assert result.state == "wrong"
    assert "differs from the product" in result.reason
    assert _statuses(api, key)[sim.device(0)][0] == "blocked"
    assert api.book(renter).status_code == 409


def test_rows_that_do_not_match_the_committed_root_block_the_device(api: Api) -> None:
    sim, key = _unsolved(api)
    work = _honest_work(sim)
    other = MerkleTree(row_leaves(work.product[::-1].copy()))
    result = _answer(sim, replace(work, tree=other))  # root of another matrix
    assert result.state == "wrong"
    assert "proof" in result.reason or "differs" in result.reason
    assert _statuses(api, key)[sim.device(0)][0] == "blocked"


def test_an_agent_that_cannot_compute_makes_the_device_unsupported(api: Api) -> None:
    sim, key = _unsolved(api)
    challenge = sim.link.heartbeat().challenges[0]
    result = sim.link.challenge_fail(challenge.id, "CUDA error: out of memory")
    assert result.state == "failed"
    assert _statuses(api, key)[sim.device(0)][0] == "unsupported"


def test_no_answer_before_the_deadline_makes_the_device_unsupported(api: Api) -> None:
    sim, key = _unsolved(api)
    api.clock.advance(api.services.settings.challenge_deadline_seconds + 1)
    sim.link.heartbeat()  # stays up
    api.tick()
    assert _statuses(api, key)[sim.device(0)][0] == "unsupported"


H100 = "NVIDIA H100 80GB HBM3"


def _gpu_agent(api: Api, model: str = H100) -> tuple[AgentSim, str]:
    """A staked worker that claims one GPU of `model`, its challenge issued and unsolved."""
    key = api.account("supplier", "s")
    sim = api.agent(key)
    sim.solve_challenges = False
    sim.register_gpus(model=model)  # staked on registering: only a staked device is challenged
    return sim, key


def _small_gpu_chains(api: Api) -> None:
    # Small enough for this CPU to answer in a fraction of a second, still hundreds of links.
    api.services.challenges.sizing = Sizing(gpu_size=256, target_seconds=2e-4, max_steps=512)


def test_a_cpu_claiming_an_h100_is_never_verified_whatever_time_it_reports(
    api: Api, renter: str
) -> None:
    _small_gpu_chains(api)
    sim, key = _gpu_agent(api)
    [challenge] = sim.link.heartbeat().challenges  # the coordinator's clock starts here
    assert challenge.n == 256 and challenge.steps > 100  # sized for an H100, not for this CPU
    started = time.perf_counter()
    work = run_challenge(
        challenge.n,
        int(challenge.seed_a, 16),
        int(challenge.seed_b, 16),
        backend="numpy",
        steps=challenge.steps,
        held=challenge.held,
    )
    api.clock.advance(time.perf_counter() - started)  # what the coordinator's clock saw
    result = sim.submit(challenge.id, work, 1e-6)  # "a microsecond"
    assert result.state == "failed", result.reason  # the product was right ...
    assert "is below" in result.reason  # ... and far too slow for an H100
    assert result.flops < 0.5 * 50e12
    assert _statuses(api, key)[f"{sim.worker_id}:gpu0"] == ("unsupported", False)
    assert api.book(renter).status_code == 409


def test_throughput_is_timed_on_the_coordinators_clock(api: Api) -> None:
    _small_gpu_chains(api)
    sim, _ = _gpu_agent(api)
    [challenge] = sim.link.heartbeat().challenges
    seeds = int(challenge.seed_a, 16), int(challenge.seed_b, 16)
    work = run_challenge(challenge.n, *seeds, "numpy", challenge.steps, challenge.held)
    api.clock.advance(1.0)
    # the sketch and the openings come after the root: their time is not the device's compute
    result = sim.submit(challenge.id, work, between=lambda: api.clock.advance(0.2))
    allowance = api.services.challenges.sizing.rtt_allowance_seconds
    expected = challenge_flops(challenge.n, challenge.steps) / (1.0 - allowance)
    assert result.flops == pytest.approx(expected)


def test_a_chain_answer_wrong_in_its_last_link_blocks_the_device(api: Api) -> None:
    _small_gpu_chains(api)
    sim, key = _gpu_agent(api)
    [challenge] = sim.link.heartbeat().challenges
    # one link short: a cheater that skips work commits to a different, consistent product
    work = run_challenge(
        challenge.n,
        int(challenge.seed_a, 16),
        int(challenge.seed_b, 16),
        "numpy",
        challenge.steps - 1,
        challenge.held - 1,
    )
    result = sim.submit(challenge.id, work)
    assert result.state == "wrong" and "differs from the product" in result.reason
    assert _statuses(api, key)[f"{sim.worker_id}:gpu0"][0] == "blocked"


def test_a_challenge_belongs_to_its_worker(api: Api) -> None:
    sim, _ = _unsolved(api)
    intruder = api.agent(api.account("supplier", "other"))
    intruder.register(devices=1)
    challenge = sim.link.heartbeat().challenges[0]
    from gpupool.agent.link import LinkError

    with pytest.raises(LinkError) as exc:
        intruder.link.challenge_answer(challenge.id, "0" * 64, 1.0)
    assert exc.value.status == 404


# Identity is fixed by the proof, and a wrong answer always costs (issue 13, item 2) --------------


def _slashes(api: Api, key: str) -> list[dict[str, Any]]:
    entries = api.http.get("/v1/ledger/entries", headers=api.as_key(key)).json()
    return [e for e in entries if e["kind"] == "slash"]


def test_an_unstaked_device_is_not_challenged(api: Api) -> None:
    sim = api.agent(api.account("supplier", "s"))
    sim.stake = False
    worker = sim.register(devices=1)
    assert sim.link.heartbeat().challenges == []  # nothing to slash yet: no challenge
    sim.solve_challenges = False
    sim.stake_devices(worker.devices)
    assert [c.device_id for c in sim.link.heartbeat().challenges] == [sim.device(0)]


def test_re_registering_under_another_model_needs_a_new_challenge(api: Api, renter: str) -> None:
    key = api.account("supplier", "s")
    sim = api.agent(key)
    sim.register(devices=1)
    assert _statuses(api, key)[sim.device(0)] == ("idle", True)
    sim.solve_challenges = False
    sim.register(devices=1, model="Other CPU")
    assert _statuses(api, key)[sim.device(0)] == ("idle", False)  # the old proof is void
    workers = api.http.get("/v1/workers", headers=api.as_key(key)).json()
    assert workers[0]["devices"][0]["model"] == "Other CPU"
    assert api.book(renter).status_code == 409
    api.tick()  # the ticker challenges it again
    assert [r.state for r in sim.solve_pending()] == ["passed"]
    assert api.book(renter).status_code == 201


def test_the_same_registration_again_keeps_the_proof(api: Api) -> None:
    key = api.account("supplier", "s")
    sim = api.agent(key)
    sim.register(devices=1)
    sim.register(devices=1)  # an agent restart: the same claim
    assert _statuses(api, key)[sim.device(0)] == ("idle", True)


def test_giving_up_after_seeing_the_rows_is_a_wrong_answer_and_slashed(api: Api) -> None:
    sim, key = _unsolved(api)
    challenge = sim.link.heartbeat().challenges[0]
    sim.link.challenge_answer(challenge.id, "ab" * 32, 0.001)  # a guessed root
    result = sim.link.challenge_fail(challenge.id, "out of memory, honestly")
    assert result.state == "wrong" and "abandoned" in result.reason
    assert _statuses(api, key)[sim.device(0)][0] == "blocked"
    [slash] = _slashes(api, key)
    assert sum(p["amount_micros"] for p in slash["postings"] if p["amount_micros"] > 0) > 0


def test_walking_away_after_seeing_the_rows_is_a_wrong_answer(api: Api) -> None:
    sim, key = _unsolved(api)
    challenge = sim.link.heartbeat().challenges[0]
    sim.link.challenge_answer(challenge.id, "ab" * 32, 0.001)
    api.clock.advance(api.services.settings.challenge_deadline_seconds + 1)
    sim.link.heartbeat()
    api.tick()
    assert _statuses(api, key)[sim.device(0)][0] == "blocked"
    assert len(_slashes(api, key)) == 1


def test_failing_before_committing_costs_nothing(api: Api) -> None:
    sim, key = _unsolved(api)
    challenge = sim.link.heartbeat().challenges[0]
    assert sim.link.challenge_fail(challenge.id, "no CUDA").state == "failed"
    assert _slashes(api, key) == []


def test_an_unsupported_device_is_tried_again_each_period_and_can_come_back(
    api: Api, renter: str
) -> None:
    sim, key = _unsolved(api)
    challenge = sim.link.heartbeat().challenges[0]
    sim.link.challenge_fail(challenge.id, "the driver was not loaded yet")
    assert _statuses(api, key)[sim.device(0)] == ("unsupported", False)
    api.tick()
    assert sim.link.heartbeat().challenges == []  # not before the period is over
    api.clock.advance(api.services.challenges.every_seconds + 1)
    sim.link.heartbeat()
    api.tick()
    assert [r.state for r in sim.solve_pending()] == ["passed"]
    assert _statuses(api, key)[sim.device(0)] == ("idle", True)
    assert api.book(renter).status_code == 201


def test_a_blocked_device_is_never_challenged_again(api: Api) -> None:
    sim, key = _unsolved(api)
    challenge = sim.link.heartbeat().challenges[0]
    sim.link.challenge_answer(challenge.id, "ab" * 32, 0.01)
    sim.link.challenge_fail(challenge.id, "gave up")  # a wrong answer: blocked
    api.clock.advance(api.services.challenges.every_seconds + 1)
    sim.link.heartbeat()
    api.tick()
    assert sim.link.heartbeat().challenges == []
    assert _statuses(api, key)[sim.device(0)][0] == "blocked"
