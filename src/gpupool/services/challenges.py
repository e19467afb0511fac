"""Capability challenges on the coordinator: issue, take the committed answer, ask for
random rows, check them, and set the device's fate.

A device enters the pool only after it passes (`verified`), and leaves it while a periodic
re-challenge runs, so a challenge never competes with a lease. An agent error or a missed
deadline before the root is committed makes the device `unsupported`; a wrong row or a bad
Merkle proof makes it `blocked`; too little throughput for the claimed model makes it
`unsupported`.

Throughput is the coordinator's own measurement: the chain's operations over the time from
handing the challenge to the agent (its first delivery in a heartbeat or long poll) to
receiving the root, less a small capped round-trip allowance. The work is sized from the
claimed model (`chain_steps`) so that an honest device computes for `target_seconds`; the
`compute_seconds` the agent reports is kept for information only.

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
from dataclasses import dataclass, replace

from gpupool.domain.challenge import (
    MAX_STEPS,
    STATE_BYTES_PER_ENTRY,
    chain_steps,
    expected_flops,
    memory_deadline,
    memory_steps,
    pick_rows,
    throughput_verdict,
    timed_flops,
)
from gpupool.domain.errors import Conflict, InvalidRequest, NotFound
from gpupool.domain.models import Device, DeviceKind, DeviceStatus
from gpupool.domain.stake import SlashReason
from gpupool.services.capability import BPool, ChallengeSpec, Opening, verify_opening
from gpupool.services.ids import new_id
from gpupool.services.ports import ChallengeRecord, Clock, Database, Transaction
from gpupool.services.stake import in_pool, slash

OPEN_STATES = ("issued", "probing", "answered")
RETRIED = (DeviceStatus.IDLE, DeviceStatus.UNSUPPORTED)  # blocked devices never are
ABANDONED = "abandoned after its rows were known: "
B_SEEDS = 4  # B matrices kept materialised; A is fresh for every challenge


@dataclass(frozen=True, slots=True)
class Sizing:
    """How much work a challenge asks for (docs/challenge.md, "Sizing and timing")."""

    gpu_size: int = 8192  # n for a GPU whose expected throughput is known
    target_seconds: float = 3.0  # what an honest device of the claimed model computes for
    max_steps: int = MAX_STEPS  # bounds the coordinator's check, k (steps - 1) n^2 multiply-adds
    # The memory phase (docs/challenge.md, "Memory: the held states"): the device holds its
    # last states, `memory_fraction` of the claimed memory as float32, and answers a sketch of
    # them within `memory_floor_seconds` plus one read of them at `memory_bandwidth` bytes/s
    # (twice what a PCIe 5.0 x16 link carries: host memory cannot stand in for HBM).
    memory_fraction: float = 0.75
    memory_floor_seconds: float = 0.3
    memory_bandwidth: float = 128e9
    rtt_allowance_seconds: float = 0.05  # credited back, at most half the elapsed time
    # Rows opened of a chain (steps > 1): each costs the coordinator (steps - 1) n^2, so a
    # chain opens fewer than a single product; the timing, not the row count, is what
    # catches a slow device, and a device that skips a fraction of the rows is caught with
    # probability 1 - (1 - fraction)^chain_rows per challenge and slashed.
    chain_rows: int = 2

    def shape(
        self, expected: float | None, cpu_size: int, memory_bytes: int = 0
    ) -> tuple[int, int, int]:
        """(n, steps, held) for a device expected to reach `expected` FLOP/s and claiming
        `memory_bytes`: the chain is long enough for the target time and for the held states
        (at most max_steps). A device with no expected figure (a CPU core group, an unknown
        model) gets one product at `cpu_size` and no memory phase."""
        if expected is None:
            return cpu_size, 1, 0
        n = self.gpu_size
        # (at most n: the sketch's vectors are rows of one n x n challenge matrix)
        held = min(self.max_steps, n, memory_steps(memory_bytes, n, self.memory_fraction))
        timed = chain_steps(expected, n, self.target_seconds, self.max_steps)
        return n, max(timed, held), held

    def memory_deadline(self, n: int, held: int) -> float:
        working_set = held * STATE_BYTES_PER_ENTRY * n * n
        return memory_deadline(working_set, self.memory_floor_seconds, self.memory_bandwidth)


@dataclass(frozen=True, slots=True)
class MemoryProbe:
    """What the agent gets once its root is in, for a challenge with a memory phase."""

    seed: str
    held: int
    deadline_seconds: float


@dataclass(frozen=True, slots=True)
class Answer:
    rows: list[int]  # open these; empty while a memory probe is outstanding
    memory: MemoryProbe | None = None


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
        spot_deadline_seconds: float = 10.0,
        sizing: Sizing | None = None,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._db = db
        self._clock = clock
        self.size = size
        self.rows = rows
        self.every_seconds = every_seconds
        self.deadline_seconds = deadline_seconds
        self.spot_deadline_seconds = spot_deadline_seconds
        self.sizing = sizing or Sizing()
        self._random = random_bytes
        self._b_seeds = [random_bytes(8).hex() for _ in range(B_SEEDS)]
        self.pool = BPool(capacity=2 * B_SEEDS)  # every seed at both sizes

    def expected(self, tx: Transaction, device: Device) -> float | None:
        """The FLOP/s the claimed model should reach: the table, else for a GPU model it
        lacks the median of earlier passed figures; None for CPU core groups (measured)."""
        if device.spec.kind is DeviceKind.CPU:
            return None
        return expected_flops(device.spec.model) or self._learned(tx, device)

    def _learned(self, tx: Transaction, device: Device) -> float | None:
        """The median of earlier passed figures of a GPU's model; CPU core groups are
        measured, not judged: their figure depends on the cores per device and on their
        neighbours' load."""
        if device.spec.kind is DeviceKind.CPU:
            return None
        reference = tx.proofs.passed_flops(device.spec.model)
        return statistics.median(reference) if reference else None

    def pool_seed(self) -> str:
        """One of the pooled B seeds, chosen with the coordinator's randomness."""
        return self._b_seeds[self._random(1)[0] % len(self._b_seeds)]

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
                if device.id in open_devices or device.status not in RETRIED:
                    continue
                if device.worker_status.value != "up":
                    continue
                old = (
                    self.every_seconds > 0
                    and now - (device.challenged_at or 0) >= self.every_seconds
                )
                # An unsupported device (too slow, no backend, no answer) gets another try
                # each period: a busy host or a driver fixed since may pass it now.
                due = old or (device.status is DeviceStatus.IDLE and not device.verified)
                if not due:
                    continue
                memory = device.spec.memory_mb * 2**20
                n, steps, held = self.sizing.shape(self.expected(tx, device), self.size, memory)
                record = ChallengeRecord(
                    id=new_id("ch"),
                    device_id=device.id,
                    worker_id=device.worker_id,
                    n=n,
                    steps=steps,
                    seed_a=self._random(8).hex(),
                    seed_b=self.pool_seed(),
                    state="issued",
                    issued_at=now,
                    held=held,
                )
                tx.proofs.add_challenge(record)
                tx.workers.set_verification(device.id, verified=False, at=now)
                touched.add(device.worker_id)
                issued.append(record)
            tx.workers.bump_lease_version(sorted(touched))  # wake the agents' long polls
        return issued

    def deadline(self, c: ChallengeRecord) -> float:
        """Seconds from issue by which the root must arrive: a spot check's is short, since
        an honest device answers it in well under a second (docs/challenge.md)."""
        return self.spot_deadline_seconds if c.lease_id else self.deadline_seconds

    def _expire(self, tx: Transaction, now: float) -> None:
        for c in tx.proofs.challenges(states=OPEN_STATES):
            if now - c.issued_at <= self.deadline(c):
                continue
            if c.state == "answered":  # the rows were known: walking away is a wrong answer
                self._finish(tx, c, "wrong", ABANDONED + "no openings before the deadline", now)
            else:
                self._finish(tx, c, "failed", "no answer before the deadline", now)

    def pending(self, worker_id: str) -> list[ChallengeRecord]:
        """The worker's unanswered challenges, as they go out to its agent: the first
        delivery starts the coordinator's clock on each (`delivered_at`)."""
        now = self._clock.now()
        with self._db.transaction() as tx:
            out = []
            for c in tx.proofs.challenges(worker_id=worker_id, states=("issued",)):
                delivered = c if c.delivered_at is not None else replace(c, delivered_at=now)
                if delivered is not c:
                    tx.proofs.save_challenge(delivered)
                out.append(delivered)
            return out

    # the agent's side of the protocol -----------------------------------------------------------

    def answer(
        self, worker_id: str, challenge_id: str, root: str, compute_seconds: float
    ) -> Answer:
        """Take the committed Merkle root; only now choose which rows to open, or, for a
        challenge with a memory phase, the seed of the sketch (the rows come after it)."""
        now = self._clock.now()
        with self._db.transaction() as tx:
            c = self._own(tx, worker_id, challenge_id)
            if c.state != "issued":
                raise Conflict(f"challenge {challenge_id} is {c.state}")
            late = now - c.issued_at > self.deadline(c)
            if late:  # judged now, whether or not the ticker has expired it yet
                self._finish(tx, c, "failed", "the root came after the deadline", now)
                out = Answer([])
            else:
                c = replace(c, root=root, compute_seconds=compute_seconds, answered_at=now)
                if c.held and c.lease_id is None:
                    c = replace(
                        c, state="probing", memory_seed=self._random(8).hex(), probed_at=now
                    )
                    tx.proofs.save_challenge(c)
                    deadline = self.sizing.memory_deadline(c.n, c.held)
                    out = Answer([], MemoryProbe(c.memory_seed or "", c.held, deadline))
                else:
                    out = Answer(self._pick_rows(tx, c))
        if late:  # refused once the judgement is committed
            raise Conflict(f"challenge {challenge_id} is past its deadline")
        return out

    def sketch(self, worker_id: str, challenge_id: str, values: Sequence[int]) -> list[int]:
        """Take the memory sketch S on the coordinator's clock; a late one means the held
        states were not in device memory (or not held at all): the device is unsupported. In
        time, the rows to open are chosen now, and S is kept at those rows for the check."""
        now = self._clock.now()
        with self._db.transaction() as tx:
            c = self._own(tx, worker_id, challenge_id)
            if c.state != "probing" or c.probed_at is None:
                raise Conflict(f"challenge {challenge_id} is {c.state}; it asks for no sketch")
            if len(values) != c.n:
                raise InvalidRequest(f"the sketch has {len(values)} values, expected {c.n}")
            took, allowed = now - c.probed_at, self.sizing.memory_deadline(c.n, c.held)
            late = took > allowed
            if late:
                reason = (
                    f"the sketch of {c.held} held states took {took:.3g} s, over the "
                    f"{allowed:.3g} s a device holding them in its memory needs"
                )
                self._finish(tx, c, "failed", reason, now)
            else:
                rows = self._pick_rows(tx, c, values)
        if late:  # refused once the judgement is committed
            raise Conflict(f"challenge {challenge_id}: the sketch came too late")
        return rows

    def _pick_rows(
        self, tx: Transaction, c: ChallengeRecord, sketch: Sequence[int] | None = None
    ) -> list[int]:
        # a chain opens fewer rows (docs/challenge.md, "Sizing and timing")
        k = self.rows if c.steps == 1 else min(self.rows, self.sizing.chain_rows)
        rows = pick_rows(self._random(32), c.n, min(k, c.n))
        kept = tuple(int(sketch[i]) for i in rows) if sketch is not None else None
        tx.proofs.save_challenge(replace(c, state="answered", rows=tuple(rows), sketch=kept))
        return rows

    def open(
        self, worker_id: str, challenge_id: str, openings: Sequence[Opening]
    ) -> ChallengeRecord:
        with self._db.transaction() as tx:
            c = self._answered(tx, worker_id, challenge_id)
        # A long chain takes the check seconds: run it outside any transaction, then finish
        # only if nothing else (the deadline, a fail) finished the challenge meanwhile.
        assert c.root is not None and c.rows is not None
        memory_seed = int(c.memory_seed, 16) if c.memory_seed else None
        spec = ChallengeSpec(
            c.id, c.n, int(c.seed_a, 16), int(c.seed_b, 16), c.steps, c.held, memory_seed
        )
        sketch = dict(zip(c.rows, c.sketch, strict=True)) if c.sketch is not None else None
        outcome = verify_opening(spec, c.root, list(openings), list(c.rows), self.pool, sketch)
        with self._db.transaction() as tx:
            c = self._answered(tx, worker_id, challenge_id)
            now = self._clock.now()
            if not outcome.ok:
                return self._finish(tx, c, "wrong", outcome.reason, now)
            # The coordinator's clock, never the agent's compute_seconds (docs/challenge.md).
            started = c.delivered_at if c.delivered_at is not None else c.issued_at
            elapsed = (c.answered_at or now) - started
            flops = timed_flops(c.n, c.steps, elapsed, self.sizing.rtt_allowance_seconds)
            if c.lease_id is not None:  # the renter's work shares the device: in time is enough
                return self._finish(tx, c, "passed", f"spot check answered in {elapsed:.3g} s", now)
            device = next(d for d in tx.workers.devices(c.worker_id) if d.id == c.device_id)
            # GPUs answer to the table of expected figures (or, for a model it lacks, to what
            # that model measured before); CPU core groups pass while no reference exists.
            verdict = throughput_verdict(device.spec.model, flops, self._learned(tx, device))
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

    def _answered(self, tx: Transaction, worker_id: str, challenge_id: str) -> ChallengeRecord:
        c = self._own(tx, worker_id, challenge_id)
        if c.state != "answered" or c.root is None or c.rows is None:
            raise Conflict(f"challenge {challenge_id} is {c.state}; answer it first")
        return c

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
        if c.lease_id is None:
            fate = {
                "passed": DeviceStatus.IDLE,  # back from unsupported, if it was
                "failed": DeviceStatus.UNSUPPORTED,
                "wrong": DeviceStatus.BLOCKED,
            }[state]
            tx.workers.set_verification(
                c.device_id, verified=state == "passed", at=now, status=fate, flops=flops
            )
        elif state != "passed":
            # A spot check leaves the lease running: a missed, late or wrong answer is a
            # violation on the lease's certificate (slashed to the renter at settlement) and
            # voids the device's proof, so it must pass a new challenge after the lease.
            tx.workers.set_verification(c.device_id, verified=False, at=now)
        if state == "wrong":  # fraud: the device's stake pays at once (docs/ledger.md)
            device = next(d for d in tx.workers.devices(c.worker_id) if d.id == c.device_id)
            slash(tx, device, SlashReason.WRONG_ANSWER, f"slash:challenge:{c.id}", now)
        return done
