"""Protocol mode on the coordinator: renters submit independent deterministic jobs, the
coordinator assigns each run to a staked idle device, agents run them in a sandbox and send
back the output with its sha256, and validators have a random fraction re-run on another
supplier's device. The rules (sampling, agreement, majority) are `domain.replication`;
slashes and rewards go through the ledger in the transaction that reaches the verdict.

A job's runs: `job` (the original), `check` (a validator's re-run, on a device of a
supplier that has not run the job), `third` (after a mismatch, on a third supplier's).
Every run goes to a device drawn with the coordinator's own randomness from those
`replication.eligible` allows; a run no device may take waits (docs/ledger.md). Each run has
its own random id, and agents are told only that id and the work, so a re-run looks to
the agent like any first run.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from gpupool.domain import ledger as money
from gpupool.domain import replication as rules
from gpupool.domain.errors import Conflict, InvalidRequest, NotFound
from gpupool.domain.ledger import MoveKind
from gpupool.domain.models import Account, Role
from gpupool.domain.stake import VALIDATOR_REWARD, SlashReason
from gpupool.services.ids import new_id
from gpupool.services.ledger import post, require_role
from gpupool.services.ports import Clock, Database, RunRecord, TaskRecord, Transaction
from gpupool.services.stake import in_pool, slash

MAX_INPUT_BYTES = 512 << 10  # base64 in a request body under the 1 MiB limit
MAX_OUTPUT_BYTES = 512 << 10
MAX_COMMAND_CHARS = 4096
# A run the agent has not answered by then goes to another device (agents give a run at most
# 600 s, then report a timeout).
RUN_DEADLINE_SECONDS = 900.0


@dataclass(frozen=True, slots=True)
class TaskView:
    task: TaskRecord
    runs: tuple[RunRecord, ...]

    @property
    def result(self) -> RunRecord | None:
        return next((r for r in self.runs if r.purpose == "job" and r.state == "done"), None)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Tasks:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        rng: random.Random | None = None,
        run_deadline_seconds: float = RUN_DEADLINE_SECONDS,
    ) -> None:
        self._db = db
        self._clock = clock
        self.run_deadline_seconds = run_deadline_seconds
        # Validators' sampling and the choice of devices; tests pass a seeded generator.
        self._rng = rng or random.SystemRandom()

    # renters --------------------------------------------------------------------------

    def submit(
        self,
        renter: Account,
        command: str,
        data: bytes,
        image: str | None = None,
        tolerance: float | None = None,
    ) -> TaskView:
        require_role(renter, Role.RENTER)
        if not command.strip() or len(command) > MAX_COMMAND_CHARS:
            raise InvalidRequest(f"a command of 1 to {MAX_COMMAND_CHARS} characters is needed")
        if len(data) > MAX_INPUT_BYTES:
            raise InvalidRequest(f"the input is over {MAX_INPUT_BYTES} bytes")
        if tolerance is not None and not 0 <= tolerance < 1:
            raise InvalidRequest("a tolerance lies in [0, 1)")
        now = self._clock.now()
        with self._db.transaction() as tx:
            if image is not None and not any("docker" in w.sandbox for w in tx.workers.list_all()):
                raise Conflict("no worker runs Docker: submit the job with --command only")
            task = TaskRecord(
                new_id("t"),
                renter.id,
                command,
                image,
                data,
                sha256(data),
                tolerance,
                "queued",
                "none",
                None,
                now,
            )
            tx.tasks.add_task(task)
            tx.tasks.add_run(_waiting(task.id, "job", now))
            self._assign(tx)
            return _view(tx, task.id)

    def tasks(self, renter: Account) -> list[TaskView]:
        require_role(renter, Role.RENTER)
        with self._db.transaction() as tx:
            return [_view(tx, t.id) for t in tx.tasks.tasks_of(renter.id)]

    def get(self, viewer: Account, task_id: str) -> TaskView:
        with self._db.transaction() as tx:
            task = tx.tasks.task(task_id)
            mine = task is not None and viewer.id in (task.renter_id, task.validator_id)
            if task is None or not mine:
                raise NotFound(f"no task {task_id}")
            return _view(tx, task_id)

    # assignment -------------------------------------------------------------------------

    def assign_pending(self) -> int:
        """Give up on runs that got no answer within the deadline (each goes to another
        device) and give waiting runs to devices (ticker); returns how many were assigned."""
        now = self._clock.now()
        with self._db.transaction() as tx:
            for run in tx.tasks.overdue_runs(now - self.run_deadline_seconds):
                error = f"no answer within {self.run_deadline_seconds:.0f} s"
                if tx.tasks.finish_run(
                    run.id, state="failed", output=None, output_hash=None, error=error, at=now
                ):
                    tx.tasks.add_run(_waiting(run.task_id, run.purpose, now))
            return self._assign(tx)

    def _assign(self, tx: Transaction) -> int:
        waiting = tx.tasks.waiting_runs()
        if not waiting:
            return 0
        devices = {d.id: d for d in tx.workers.devices()}
        pool = [d for d in in_pool(tx, list(devices.values())) if d.available]
        addresses = tx.tasks.addresses(sorted({d.worker_id for d in devices.values()}))
        networks = {w: rules.network_of(a) for w, a in addresses.items()}
        seats = [rules.Seat(d.id, d.supplier_id, networks.get(d.worker_id)) for d in pool]

        def seat_of(run: RunRecord) -> rules.Seat:
            # the supplier recorded with the run, so a device since removed still counts
            network = networks.get(run.worker_id or "")
            return rules.Seat(run.device_id or "", run.supplier_id or "", network)

        load = tx.tasks.load()
        assigned = 0
        told: set[str] = set()
        for run in waiting:
            earlier = [
                seat_of(r)
                for r in tx.tasks.runs(run.task_id)
                if run.purpose != "job" and r.supplier_id is not None
            ]
            choices = rules.eligible(seats, earlier)
            if run.purpose == "job":
                choices = rules.unqueued(choices, load)
            if not choices:
                continue  # waits for a device it may go to (never the same supplier's)
            chosen = devices[self._rng.choice(choices).device_id]
            now = self._clock.now()
            tx.tasks.assign_run(run.id, chosen.id, chosen.worker_id, chosen.supplier_id, now)
            load[chosen.id] = load.get(chosen.id, 0) + 1
            told.add(chosen.worker_id)
            assigned += 1
        if told:
            tx.workers.bump_lease_version(sorted(told))
        return assigned

    # agents -------------------------------------------------------------------------------

    def work(
        self, worker_id: str, address: str | None = None
    ) -> list[tuple[RunRecord, TaskRecord]]:
        """The runs assigned to a worker, with their tasks; `address` is where the request
        came from (remembered so that re-runs avoid this worker's network)."""
        with self._db.transaction() as tx:
            if address:
                tx.tasks.note_address(worker_id, address, self._clock.now())
            runs = tx.tasks.assigned_runs(worker_id)
            tasks = {t.id: t for t in tx.tasks.tasks_by_id(sorted({r.task_id for r in runs}))}
            return [(r, tasks[r.task_id]) for r in runs]

    def report(
        self,
        worker_id: str,
        run_id: str,
        output: bytes | None,
        output_hash: str | None,
        error: str = "",
    ) -> RunRecord:
        """A worker's result for a run it was given: the output and its sha256, or an error.
        A resend of a stored result changes nothing."""
        if output is not None:
            if len(output) > MAX_OUTPUT_BYTES:
                raise InvalidRequest(f"the output is over {MAX_OUTPUT_BYTES} bytes")
            if output_hash != sha256(output):
                raise InvalidRequest("the output does not match its sha256")
        now = self._clock.now()
        with self._db.transaction() as tx:
            run = tx.tasks.run(run_id)
            if run is None or run.worker_id != worker_id:
                raise NotFound(f"no task run {run_id} for this worker")
            state = "done" if output is not None and not error else "failed"
            if not tx.tasks.finish_run(
                run_id, state=state, output=output, output_hash=output_hash, error=error, at=now
            ):
                return run
            task = tx.tasks.task(run.task_id)
            assert task is not None
            if run.purpose == "job":
                tx.tasks.set_task(
                    task.id, state=state, validation=task.validation, validator_id=None
                )
            elif state == "failed":  # a checker that could not run it: ask another device
                tx.tasks.add_run(_waiting(task.id, run.purpose, now))
            else:
                self._judge(tx, task, now)
            self._assign(tx)
            finished = tx.tasks.run(run_id)
            assert finished is not None
            return finished

    # validators ---------------------------------------------------------------------------

    def validate(self, validator: Account, p: float) -> list[str]:
        """Sample each finished, unsampled job with probability p for a re-run on another
        supplier's device; the rest are marked passed over (sampled at most once). A job
        passed over at q < p is drawn again with (p - q) / (1 - q): in all, with the largest
        p asked for."""
        require_role(validator, Role.VALIDATOR)
        if not 0 <= p <= 1:
            raise InvalidRequest("p lies in [0, 1]")
        now = self._clock.now()
        with self._db.transaction() as tx:
            candidates = tx.tasks.unvalidated(p)
            drawn = {t: q for t, q in candidates.items() if q is not None}
            chosen = set(rules.pick(list(candidates), p, self._rng.random, drawn))
            picked = []
            for task_id in candidates:
                # a concurrent validator may have claimed it since it was read: skip it then
                if task_id not in chosen:
                    tx.tasks.claim_validation(task_id, "passed-over", None, p)
                elif tx.tasks.claim_validation(task_id, "sampled", validator.id, p):
                    tx.tasks.add_run(_waiting(task_id, "check", now))
                    picked.append(task_id)
            self._assign(tx)
            return picked

    def validations(self, validator: Account, task_ids: list[str]) -> list[TaskView]:
        require_role(validator, Role.VALIDATOR)
        with self._db.transaction() as tx:
            found = tx.tasks.tasks_by_id(task_ids)
            return [_view(tx, t.id) for t in found if t.validator_id == validator.id]

    def _judge(self, tx: Transaction, task: TaskRecord, now: float) -> None:
        runs = [r for r in tx.tasks.runs(task.id) if r.state != "failed"]
        if any(r.state != "done" for r in runs):
            return  # a run is still out
        verdict = rules.judge(
            [rules.Run(r.id, r.output_hash or "", r.output or b"") for r in runs], task.tolerance
        )
        validation = verdict.outcome.value
        if verdict.outcome is rules.Outcome.THIRD_RUN:
            tx.tasks.add_run(_waiting(task.id, "third", now))
            validation = "disputed"
        elif verdict.outcome is rules.Outcome.CAUGHT:
            devices = {d.id: d for d in tx.workers.devices()}
            for run in runs:
                if run.id in verdict.wrong and run.device_id in devices:
                    key = f"slash:task:{run.id}"
                    slash(tx, devices[run.device_id], SlashReason.WRONG_OUTPUT, key, now)
            if task.validator_id:
                reward = money.transfer(
                    MoveKind.REWARD,
                    f"reward:task:{task.id}",
                    money.MINT,
                    money.validator(task.validator_id),
                    VALIDATOR_REWARD,
                    {"task": task.id},
                )
                post(tx, reward, now)
        tx.tasks.set_task(
            task.id, state=task.state, validation=validation, validator_id=task.validator_id
        )


def _waiting(task_id: str, purpose: str, now: float) -> RunRecord:
    return RunRecord(
        new_id("r"), task_id, purpose, None, None, None, "waiting", None, None, "", now, None
    )


def _view(tx: Transaction, task_id: str) -> TaskView:
    task = tx.tasks.task(task_id)
    assert task is not None
    return TaskView(task, tuple(tx.tasks.runs(task_id)))
