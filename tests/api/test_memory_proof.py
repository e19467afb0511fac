"""The capability challenge's memory phase against a real coordinator: a GPU's chain keeps its
last states, and once the root is in the coordinator asks for a sketch of them on a short
clock (docs/challenge.md, "Memory: the held states"). The attackers are modified agents on the
real signed link: one that held nothing, one that held half of the states' rows, one too slow
to read them, one that sends the sketch out of turn."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from gpupool.agent.link import LinkError
from gpupool.agent.proof.challenge import ChallengeWork, open_rows, run_challenge
from gpupool.services.challenges import Sizing
from tests.api.conftest import AgentSim, Api

N = 64
# 1 MiB claimed: 0.75 of it is 48 float32 states of 64 x 64; the chain is as long as that.
MEMORY_MB = 1
HELD = math.ceil(0.75 * MEMORY_MB * 2**20 / (4 * N * N))


@pytest.fixture(autouse=True)
def _small_chains(api: Api) -> None:
    # The test's clock stands still while this CPU computes: throughput passes, and what is
    # left to judge is the memory phase.
    api.services.challenges.sizing = Sizing(gpu_size=N, target_seconds=1e-9, max_steps=64)


def _gpu(api: Api, name: str) -> tuple[AgentSim, Any]:
    sim = api.agent(api.account("supplier", name))
    sim.solve_challenges = False
    sim.register_gpus(memory_mb=MEMORY_MB)  # staking issues its challenge
    [challenge] = sim.link.heartbeat().challenges
    return sim, challenge


def _work(c: Any) -> ChallengeWork:
    return run_challenge(c.n, int(c.seed_a, 16), int(c.seed_b, 16), "numpy", c.steps, c.held)


def _status(api: Api, sim: AgentSim) -> tuple[str, bool]:
    workers = api.http.get("/v1/workers", headers=api.as_key(sim.supplier_key)).json()
    [device] = [d for w in workers for d in w["devices"]]
    return device["status"], device["verified"]


def _cheat(
    sim: AgentSim, c: Any, work: ChallengeWork, forge: Any, between: Any = None
) -> tuple[Any, list[int]]:
    """Commit the honest root, then send `forge(true sketch)` as the sketch and open the rows."""
    answer = sim.link.challenge_answer(c.id, work.root, 1e-6)
    assert answer.rows == [] and answer.memory is not None and answer.memory.held == c.held
    if between is not None:
        between()
    rows = sim.link.challenge_sketch(c.id, forge(work.sketch(int(answer.memory.seed, 16))))
    return sim.link.challenge_open(c.id, open_rows(work, rows)), rows


def test_a_gpu_challenge_holds_states_for_three_quarters_of_the_claimed_memory(api: Api) -> None:
    sim, c = _gpu(api, "honest")
    assert c.held == HELD == 48 and c.steps == HELD  # the chain is as long as the held states
    [result] = sim.solve_pending()  # the agent's real Challenger: holds, sketches, opens
    assert result.state == "passed", result.reason
    assert _status(api, sim) == ("idle", True)


def test_cpu_devices_and_spot_checks_have_no_memory_phase(api: Api) -> None:
    sim = api.agent(api.account("supplier", "cpu"))
    sim.solve_challenges = False
    sim.register(devices=1)
    [c] = sim.link.heartbeat().challenges
    assert c.held == 0
    answer = sim.link.challenge_answer(c.id, _work(c).root, 1e-6)
    assert answer.memory is None and answer.rows


def test_an_agent_that_held_no_states_is_caught_and_slashed(api: Api) -> None:
    sim, c = _gpu(api, "forgetful")
    work = _work(c)
    result, _ = _cheat(sim, c, work, lambda s: [0] * len(s))  # a sketch it cannot compute
    assert result.state == "wrong" and "did not hold its last 48 states" in result.reason
    assert _status(api, sim) == ("blocked", False)
    slashes = api.http.get("/v1/ledger/entries", headers=api.as_key(sim.supplier_key)).json()
    assert [e["kind"] for e in slashes].count("slash") == 1


def test_an_agent_that_held_half_the_rows_is_caught_at_the_predicted_rate(api: Api) -> None:
    """It held rows 0..31 of every state and guessed the rest; the coordinator opens k rows
    chosen after the sketch, so it escapes only when all k fall in the held half:
    C(32, k) / C(64, k)."""
    trials, caught, k = 120, 0, 0
    for trial in range(trials):
        sim, c = _gpu(api, f"half{trial}")
        work = _work(c)
        result, rows = _cheat(
            sim, c, work, lambda s: [v if i < N // 2 else v + 1 for i, v in enumerate(s)]
        )
        k = len(rows)
        caught += result.state == "wrong"
        assert result.state in ("wrong", "passed")
        assert (result.state == "wrong") == any(i >= N // 2 for i in rows)
    escape = math.comb(N // 2, k) / math.comb(N, k)
    rate = caught / trials
    sd = math.sqrt(escape * (1 - escape) / trials)
    print(f"held half the rows: caught {caught}/{trials} = {rate:.3f}, predicted {1 - escape:.3f}")
    assert abs(rate - (1 - escape)) < 4 * sd


def test_a_sketch_slower_than_one_read_of_device_memory_makes_the_device_unsupported(
    api: Api,
) -> None:
    sim, c = _gpu(api, "slow")
    work = _work(c)
    allowed = api.services.challenges.sizing.memory_deadline(c.n, c.held)
    with pytest.raises(LinkError) as err:
        _cheat(sim, c, work, lambda s: s, between=lambda: api.clock.advance(allowed + 0.01))
    assert err.value.status == 409 and "too late" in err.value.message
    assert _status(api, sim) == ("unsupported", False)  # the rows were never known: no slash
    entries = api.http.get("/v1/ledger/entries", headers=api.as_key(sim.supplier_key)).json()
    assert "slash" not in [e["kind"] for e in entries]


def test_the_sketch_comes_only_after_the_root_and_only_once(api: Api) -> None:
    sim, c = _gpu(api, "eager")
    work = _work(c)
    with pytest.raises(LinkError) as early:
        sim.link.challenge_sketch(c.id, [0] * N)
    assert early.value.status == 409 and "issued" in early.value.message
    answer = sim.link.challenge_answer(c.id, work.root, 1e-6)
    assert answer.memory is not None
    with pytest.raises(LinkError) as short:
        sim.link.challenge_sketch(c.id, [0] * (N - 1))
    assert short.value.status == 422 and f"expected {N}" in short.value.message
    rows = sim.link.challenge_sketch(c.id, work.sketch(int(answer.memory.seed, 16)))
    with pytest.raises(LinkError) as twice:  # a second sketch, knowing the rows, is refused
        sim.link.challenge_sketch(c.id, [0] * N)
    assert twice.value.status == 409 and "answered" in twice.value.message
    assert sim.link.challenge_open(c.id, open_rows(work, rows)).state == "passed"


def test_a_sketch_missing_one_state_is_wrong(api: Api) -> None:
    """Every held state counts: an agent that dropped the first one and counted the last
    twice (47 states' memory) does not answer the sketch."""
    sim, c = _gpu(api, "one-short")
    work = _work(c)
    short = replace(work, held=work.held[1:] + work.held[-1:])
    result, _ = _cheat(sim, c, short, lambda s: s)
    assert result.state == "wrong" and "memory sketch" in result.reason
