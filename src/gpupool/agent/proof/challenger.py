"""Runs the capability challenges the coordinator sends, one at a time, on a thread of its
own, so heartbeats and leases never wait for a matrix multiplication. Spot checks on leased
devices go first: they have 10 s, an idle device's challenge has minutes."""

from __future__ import annotations

import logging
import queue
import threading

from gpupool.agent.link import CoordinatorLink, LinkError
from gpupool.agent.proof.challenge import ChallengeWork, open_rows, run_challenge, run_pinned
from gpupool.domain.models import DeviceKind, DeviceSpec
from gpupool.wire import models as w

log = logging.getLogger("gpupool.agent.proof.challenger")


class Challenger:
    def __init__(self, link: CoordinatorLink, devices: list[DeviceSpec] | None = None) -> None:
        self.link = link
        self.specs = {d.local_name: d for d in devices or []}
        # (0 for a spot check, else 1; arrival order; the challenge)
        self._queue: queue.PriorityQueue[tuple[int, int, w.ChallengeOut]] = queue.PriorityQueue()
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def offer(self, challenges: list[w.ChallengeOut]) -> None:
        with self._lock:
            for c in challenges:
                if c.id not in self._seen:
                    self._seen.add(c.id)
                    self._queue.put((0 if c.lease_id else 1, len(self._seen), c))

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                _, _, challenge = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            self.solve(challenge)

    def _compute(self, c: w.ChallengeOut) -> ChallengeWork:
        seed_a, seed_b = int(c.seed_a, 16), int(c.seed_b, 16)
        spec = self.specs.get(c.device_id.split(":", 1)[-1])
        # A spot check runs in the agent's own process beside the lease: a child pinned to
        # the lease's cores would be a foreign process to the lease's guard.
        if spec is not None and spec.kind is DeviceKind.CPU and spec.cores and not c.lease_id:
            return run_pinned(c.n, seed_a, seed_b, spec.cores, c.steps)  # on its own cores
        return run_challenge(c.n, seed_a, seed_b, steps=c.steps, held=c.held)

    def solve(self, c: w.ChallengeOut) -> w.ChallengeResultOut | None:
        try:
            work = self._compute(c)
        except Exception as exc:  # any failure to compute is the device's answer
            log.error(
                "event=challenge_failed challenge=%s device=%s reason=%s", c.id, c.device_id, exc
            )
            try:
                return self.link.challenge_fail(c.id, f"{type(exc).__name__}: {exc}")
            except LinkError:
                return None
        try:
            answer = self.link.challenge_answer(c.id, work.root, work.compute_seconds)
            rows = answer.rows
            if answer.memory is not None:  # the held states' sketch first, on a short clock
                rows = self.link.challenge_sketch(c.id, work.sketch(int(answer.memory.seed, 16)))
            result = self.link.challenge_open(c.id, open_rows(work, rows))
        except LinkError as exc:
            log.warning("event=challenge_not_sent challenge=%s reason=%s", c.id, exc.message)
            return None
        finally:
            work.release()
        log.info(
            "event=challenge_done challenge=%s device=%s state=%s gflops=%.1f backend=%s",
            c.id,
            c.device_id,
            result.state,
            (result.flops or 0) / 1e9,
            work.backend,
        )
        return result
