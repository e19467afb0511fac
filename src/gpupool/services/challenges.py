"""Capability challenges on the coordinator: issue, take the committed answer, ask for
random rows, check them, and set the device's fate.

A device enters the pool only after it passes (`verified`), and leaves it while a periodic
re-challenge runs, so a challenge never competes with a lease. An agent error or a missed
deadline before the root is committed makes the device `unsupported`; a wrong row or a bad
Merkle proof makes it `blocked`; too little throughput for the claimed model makes it
`unsupported`.

Two rules keep a wrong answer from being free (docs/challenge.md, "Outcomes"):
- a device is challenged only once its stake is held, so a wrong answer always has stake to
  slash;
- once the root is committed the rows to open are known, so abandoning the challenge then (a
  `fail`, or no openings before the deadline) is judged exactly as a wrong answer: otherwise
  an agent could commit a guessed root, look at the rows, and walk away from the ones it
  cannot open.
"""

from __future__ import annotations

import secrets
import statistics
from collections.abc import Callable, Sequence
from dataclasses import replace

from gpupool.domain.challenge import pick_rows, throughput_verdict
from gpupool.domain.errors import Conflict, NotFound
from gpupool.domain.models import DeviceKind, DeviceStatus
from gpupool.domain.stake import SlashReason
from gpupool.services.capability import BPool, ChallengeSpec, Opening, verify_opening
from gpupool.services.ids import new_id
from gpupool.services.ports import ChallengeRecord, Clock, Database, Transaction
from gpupool.services.stake import in_pool, slash

OPEN_STATES = ("issued", "answered")
ABANDONED = "abandoned after its rows were known: "
B_SEEDS = 4  # B matrices kept materialised; A is fresh for every challenge


class Challenges:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        size: int,
        rows: int,
        every_seconds: float,
        deadline_seconds: float,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._db = db
        self._clock = clock
        self.size = size
        self.rows = rows
        self.every_seconds = every_seconds
        self.deadline_seconds = deadline_seconds
        self._random = random_bytes
        self._b_seeds = [random_bytes(8).hex() for _ in range(B_SEEDS)]
        self.pool = BPool(capacity=B_SEEDS)

    # issuing --------------------------------------------------------------------------------

    def issue_due(self, worker_id: str | None = None) -> list[ChallengeRecord]:
        """Challenge new devices and idle ones whose last challenge is old; expire overdue
        challenges. Safe to run often and on several replicas."""
        now = self._clock.now()
        issued: list[ChallengeRecord] = []
        with self._db.transaction() as tx:
            self._expire(tx, now)
            open_devices = {c.device_id for c in tx.proofs.challenges(states=OPEN_STATES)}
            touched: set[str] = set()
            # Only staked devices: a wrong answer must cost something (docs/challenge.md).
            for device in in_pool(tx, tx.workers.devices(worker_id)):
                if device.id in open_devices or device.status is not DeviceStatus.IDLE:
                    continue
                if device.worker_status.value != "up":
                    continue
                due = not device.verified or (
                    self.every_seconds > 0
                    and now - (device.challenged_at or 0) >= self.every_seconds
                )
                if not due:
                    continue
                record = ChallengeRecord(
                    id=new_id("ch"),
                    device_id=device.id,
                    worker_id=device.worker_id,
                    n=self.size,
                    seed_a=self._random(8).hex(),
                    seed_b=self._b_seeds[self._random(1)[0] % len(self._b_seeds)],
                    state="issued",
                    issued_at=now,
                )
                tx.proofs.add_challenge(record)
                tx.workers.set_verification(device.id, verified=False, at=now)
                touched.add(device.worker_id)
                issued.append(record)
            tx.workers.bump_lease_version(sorted(touched))  # wake the agents' long polls
        return issued

    def _expire(self, tx: Transaction, now: float) -> None:
        for c in tx.proofs.challenges(states=OPEN_STATES):
            if now - c.issued_at <= self.deadline_seconds:
                continue
            if c.state == "answered":  # the rows were known: walking away is a wrong answer
                self._finish(tx, c, "wrong", ABANDONED + "no openings before the deadline", now)
            else:
                self._finish(tx, c, "failed", "no answer before the deadline", now)

    def pending(self, worker_id: str) -> list[ChallengeRecord]:
        with self._db.transaction() as tx:
            return tx.proofs.challenges(worker_id=worker_id, states=("issued",))

    # the agent's side of the protocol -----------------------------------------------------------

    def answer(
        self, worker_id: str, challenge_id: str, root: str, compute_seconds: float
    ) -> list[int]:
        """Take the committed Merkle root; only now choose which rows to open."""
        now = self._clock.now()
        with self._db.transaction() as tx:
            c = self._own(tx, worker_id, challenge_id)
            if c.state != "issued":
                raise Conflict(f"challenge {challenge_id} is {c.state}")
            rows = pick_rows(self._random(32), c.n, min(self.rows, c.n))
            tx.proofs.save_challenge(
                replace(
                    c,
                    state="answered",
                    root=root,
                    rows=tuple(rows),
                    compute_seconds=compute_seconds,
                    answered_at=now,
                )
            )
            return rows

    def open(
        self, worker_id: str, challenge_id: str, openings: Sequence[Opening]
    ) -> ChallengeRecord:
        with self._db.transaction() as tx:
            c = self._own(tx, worker_id, challenge_id)
            if c.state != "answered" or c.root is None or c.rows is None:
                raise Conflict(f"challenge {challenge_id} is {c.state}; answer it first")
            spec = ChallengeSpec(c.id, c.n, int(c.seed_a, 16), int(c.seed_b, 16))
            outcome = verify_opening(spec, c.root, list(openings), list(c.rows), self.pool)
            now = self._clock.now()
            if not outcome.ok:
                return self._finish(tx, c, "wrong", outcome.reason, now)
            flops = 2 * c.n**3 / (c.compute_seconds or 1e-9)
            device = next(d for d in tx.workers.devices(c.worker_id) if d.id == c.device_id)
            # GPUs answer to the table of expected figures (or, for a model it lacks, to what
            # that model measured before); CPU core groups are measured, not judged: their
            # figure depends on the cores per device and on their neighbours' load.
            if device.spec.kind is DeviceKind.CPU:
                verdict = throughput_verdict(device.spec.model, flops, None)
            else:
                reference = tx.proofs.passed_flops(device.spec.model)
                verdict = throughput_verdict(
                    device.spec.model, flops, statistics.median(reference) if reference else None
                )
            if not verdict.ok:
                return self._finish(tx, c, "failed", verdict.reason, now, flops)
            return self._finish(tx, c, "passed", verdict.reason, now, flops)

    def fail(self, worker_id: str, challenge_id: str, reason: str) -> ChallengeRecord:
        with self._db.transaction() as tx:
            c = self._own(tx, worker_id, challenge_id)
            if c.state not in OPEN_STATES:
                raise Conflict(f"challenge {challenge_id} is {c.state}")
            now = self._clock.now()
            if c.state == "answered":  # after seeing the rows: judged as a wrong answer
                return self._finish(tx, c, "wrong", f"{ABANDONED}the agent gave up: {reason}", now)
            return self._finish(tx, c, "failed", f"the agent could not run it: {reason}", now)

    def _own(self, tx: Transaction, worker_id: str, challenge_id: str) -> ChallengeRecord:
        c = tx.proofs.challenge(challenge_id)
        if c is None or c.worker_id != worker_id:
            raise NotFound(f"no challenge {challenge_id} for this worker")
        return c

    def _finish(
        self,
        tx: Transaction,
        c: ChallengeRecord,
        state: str,
        reason: str,
        now: float,
        flops: float | None = None,
    ) -> ChallengeRecord:
        done = replace(c, state=state, reason=reason, finished_at=now, flops=flops)
        tx.proofs.save_challenge(done)
        fate = {
            "passed": None,
            "failed": DeviceStatus.UNSUPPORTED,
            "wrong": DeviceStatus.BLOCKED,
        }[state]
        tx.workers.set_verification(
            c.device_id, verified=state == "passed", at=now, status=fate, flops=flops
        )
        if state == "wrong":  # fraud: the device's stake pays (docs/ledger.md)
            device = next(d for d in tx.workers.devices(c.worker_id) if d.id == c.device_id)
            slash(tx, device, SlashReason.WRONG_ANSWER, f"slash:challenge:{c.id}", now)
        return done
