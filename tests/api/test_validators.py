"""Validators catch a cheating worker and never an honest one (service level, SQLite and
PostgreSQL, seeded): a worker that returns wrong outputs for 20% of its 100 jobs, with
p = 0.1, escapes with probability 0.9^20 = 12%; under the fixed seeds below it is caught and
slashed, the validator is rewarded, and the honest worker that ran the other 100 jobs (and
the checkers) are never slashed."""

from __future__ import annotations

import hashlib
import random

import pytest

from gpupool.coordinator.storage.database import SqlDatabase
from gpupool.domain import ledger as money
from gpupool.domain.models import Account, Role
from gpupool.domain.stake import VALIDATOR_REWARD
from gpupool.services.tasks import Tasks, sha256
from tests.ledger_world import UNIT, World, make_world

JOBS = 200  # 100 on the cheater, 100 on the honest worker


def _honest_output(data: bytes) -> bytes:
    return hashlib.sha256(data).hexdigest().encode() + b"\n"  # what `sha256sum` computes


class Fleet:
    """Workers that execute their assigned runs: honestly, or wrong on a fixed 20%."""

    def __init__(self, world: World, tasks: Tasks, liar_worker: str, seed: int) -> None:
        self.world = world
        self.tasks = tasks
        self.liar = liar_worker
        self.rng = random.Random(seed)

    def drain(self, workers: list[str]) -> int:
        ran = 0
        while True:
            work = [(w, run, task) for w in workers for run, task in self.tasks.work(w)]
            if not work:
                return ran
            for worker_id, run, task in work:
                output = _honest_output(task.input)
                if worker_id == self.liar and self.rng.random() < 0.2:
                    output = b"0" * 64 + b"\n"  # skipped the work, made up a result
                self.tasks.report(worker_id, run.id, output, sha256(output))
                ran += 1


def _worker_of(world: World, supplier: Account) -> str:
    device = world.worker(supplier, [UNIT // 10])[0]
    return device.split(":")[0]


def _slashed(world: World, worker_id: str) -> int:
    with world.db.transaction() as tx:
        return tx.ledger.fraud_count(worker_id)


@pytest.mark.parametrize("seed", [1, 2])
def test_a_worker_lying_on_a_fifth_of_its_jobs_is_caught_and_an_honest_one_never(
    database: SqlDatabase, seed: int
) -> None:
    world = make_world(database)
    tasks = Tasks(database, world.clock, rng=random.Random(seed))
    cheat, honest = world.account(Role.SUPPLIER, "cheat"), world.account(Role.SUPPLIER, "honest")
    cheater_id, honest_id = _worker_of(world, cheat), _worker_of(world, honest)
    renter = world.account(Role.RENTER, "r")
    for i in range(JOBS):  # least-loaded assignment: 100 jobs each
        tasks.submit(renter, "sha256sum", f"job {i}".encode())
    checkers = [_worker_of(world, world.account(Role.SUPPLIER, f"v{i}")) for i in range(2)]
    fleet = Fleet(world, tasks, cheater_id, seed)
    everyone = [cheater_id, honest_id, *checkers]
    assert fleet.drain(everyone) == JOBS
    per_worker = {w: 0 for w in everyone}
    for view in tasks.tasks(renter):
        assert view.task.state == "done"
        per_worker[view.runs[0].worker_id or ""] += 1
    assert per_worker[cheater_id] == per_worker[honest_id] == JOBS // 2

    validator = world.account(Role.VALIDATOR, "val")
    sampled = tasks.validate(validator, 0.1)
    assert 5 <= len(sampled) <= 40  # about p x 200
    fleet.drain(everyone)
    views = tasks.validations(validator, sampled)
    outcomes = [v.task.validation for v in views]
    assert "sampled" not in outcomes and "disputed" not in outcomes

    assert outcomes.count("caught") >= 1
    assert _slashed(world, cheater_id) >= 1
    assert _slashed(world, honest_id) == 0
    assert all(_slashed(world, c) == 0 for c in checkers)
    with world.db.transaction() as tx:
        reward = tx.ledger.balances([money.validator(validator.id)])
    assert reward[money.validator(validator.id)] == VALIDATOR_REWARD * outcomes.count("caught")
    for view in views:  # every check ran on another supplier's device than the job
        suppliers = [r.supplier_id for r in view.runs if r.state == "done"]
        assert len(set(suppliers)) == len(suppliers)
    assert world.ledger.audit().ok
    assert tasks.validate(validator, 0.1) == []  # each job is drawn once at a given p
    # a larger p reaches the jobs passed over, never one already sampled
    again = tasks.validate(validator, 1.0)
    assert len(again) == JOBS - len(sampled) and not set(again) & set(sampled)
