"""Spot checks: short capability challenges sent to leased devices at times the agent cannot
predict (docs/challenge.md, "Spot checks").

Each running lease's device has at most one spot check planned or open. A plan is a
challenge row in state `scheduled` whose `issued_at` is the planned time, drawn by the
coordinator as now + Exp(rate): the gaps are memoryless, so having seen every earlier check
tells the agent nothing about the next. When the time comes the ticker draws the seeds and
issues it like any challenge (state `issued`, the agent sees it at its next poll); the
outcome is judged by `Challenges` (in time and correct, or a violation). When a lease stops
running, its plans are cancelled.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import replace

from gpupool.domain.leases import LeaseState
from gpupool.services.challenges import OPEN_STATES, Challenges
from gpupool.services.ids import new_id
from gpupool.services.ports import ChallengeRecord, Clock, Database

RUNNING = frozenset({LeaseState.READY, LeaseState.DEGRADED})
SCHEDULED = "scheduled"


def exponential_gap(random_bytes: bytes, rate_per_second: float) -> float:
    """A gap of an exponential distribution with `rate_per_second`, from 8 random bytes:
    -ln(U) / rate with U uniform in (0, 1]."""
    u = (int.from_bytes(random_bytes[:8], "little") + 1) / 2**64
    return -math.log(u) / rate_per_second


class SpotChecks:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        challenges: Challenges,
        *,
        per_hour: float,
        hour_seconds: float,
        size: int = 4096,
        target_seconds: float = 0.25,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._db = db
        self._clock = clock
        self._challenges = challenges
        self.per_hour = per_hour
        self.hour_seconds = hour_seconds
        # the challenges' sizing, with a spot check's smaller n and shorter target
        self.sizing = replace(challenges.sizing, gpu_size=size, target_seconds=target_seconds)
        self._random = random_bytes

    @property
    def rate_per_second(self) -> float:
        return self.per_hour / self.hour_seconds

    def tick(self) -> list[ChallengeRecord]:
        """Plan a check for every running lease's device that has none, issue the plans
        whose time has come, cancel those of leases that stopped; returns what it issued."""
        if self.per_hour <= 0:
            return []
        now = self._clock.now()
        issued: list[ChallengeRecord] = []
        with self._db.transaction() as tx:
            plans = {
                (c.lease_id, c.device_id): c for c in tx.proofs.challenges(states=(SCHEDULED,))
            }
            busy = {c.device_id for c in tx.proofs.challenges(states=OPEN_STATES)}
            devices = {d.id: d for d in tx.workers.devices()}
            touched: set[str] = set()
            for lease in tx.leases.leases_in(RUNNING):
                for member in tx.leases.members(lease.id):
                    plan = plans.pop((lease.id, member.device_id), None)
                    if plan is None:
                        gap = exponential_gap(self._random(8), self.rate_per_second)
                        tx.proofs.add_challenge(
                            ChallengeRecord(
                                id=new_id("ch"),
                                device_id=member.device_id,
                                worker_id=member.worker_id,
                                n=0,
                                seed_a="",
                                seed_b="",
                                state=SCHEDULED,
                                issued_at=now + gap,
                                lease_id=lease.id,
                            )
                        )
                    elif plan.issued_at <= now and member.device_id not in busy:
                        expected = self._challenges.expected(tx, devices[member.device_id])
                        n, steps, _ = self.sizing.shape(expected, self._challenges.size)
                        record = replace(
                            plan,
                            n=n,
                            steps=steps,
                            seed_a=self._random(8).hex(),
                            seed_b=self._challenges.pool_seed(),
                            state="issued",
                            issued_at=now,
                        )
                        tx.proofs.save_challenge(record)
                        touched.add(member.worker_id)
                        issued.append(record)
            for plan in plans.values():  # the lease stopped running: nothing more to check
                tx.proofs.save_challenge(
                    replace(plan, state="cancelled", reason="the lease ended", finished_at=now)
                )
            tx.workers.bump_lease_version(sorted(touched))  # wake the agents' long polls
        return issued
