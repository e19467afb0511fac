"""The agent's half of Proof of Time-Lock: one sample per leased device per interval, sent
as signed, hash-chained batches every epoch.

Samples are kept unsealed (without `seq` and `prev`) until they are sent; sealing chains
them onto the last head the coordinator accepted, which is kept on disk (`chains.json`), so
a restarted agent continues its chains and the time it was away shows as a gap in coverage.
Samples that name a beacon the coordinator would call stale are dropped before sending.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gpupool.agent.files import write_json
from gpupool.agent.link import CoordinatorLink, LinkError
from gpupool.crypto.identity import Identity, b64
from gpupool.crypto.timelock import ZERO_HASH, batch_message, sample_hash
from gpupool.wire import models as w

log = logging.getLogger("gpupool.agent.proof.recorder")

MAX_SAMPLES_PER_BATCH = 1200  # the coordinator's limit per batch
MAX_BATCHES_PER_REQUEST = 64


class Observation(Protocol):
    """What the guard saw on one device in one interval."""

    @property
    def device_id(self) -> str: ...
    @property
    def lease_id(self) -> str: ...

    def sample_fields(self) -> dict[str, Any]:
        """processes, utilization_pct, memory_mb, power_mw, temperature_c, violations."""
        ...


@dataclass(frozen=True, slots=True)
class Head:
    seq: int
    hash: str


class ChainStore:
    """The last accepted head of each (lease, device) chain, on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._heads: dict[tuple[str, str], Head] = {}
        if path.exists():
            for row in json.loads(path.read_text()):
                self._heads[(row["lease"], row["device"])] = Head(row["seq"], row["hash"])

    def get(self, lease_id: str, device_id: str) -> Head | None:
        return self._heads.get((lease_id, device_id))

    def set(self, lease_id: str, device_id: str, head: Head) -> None:
        self._heads[(lease_id, device_id)] = head
        self._save()

    def forget(self, lease_id: str) -> None:
        self._heads = {k: v for k, v in self._heads.items() if k[0] != lease_id}
        self._save()

    def _save(self) -> None:
        rows = [
            {"lease": lease, "device": dev, "seq": h.seq, "hash": h.hash}
            for (lease, dev), h in sorted(self._heads.items())
        ]
        write_json(self.path, rows)


def seal(unsealed: list[dict[str, Any]], head: Head | None) -> tuple[list[dict[str, Any]], Head]:
    """Chain samples onto `head`; returns the sealed samples and the new head."""
    seq, prev = (head.seq + 1, head.hash) if head else (0, ZERO_HASH)
    sealed = []
    for fields in unsealed:
        sample = {**fields, "seq": seq, "prev": prev}
        prev = sample_hash(sample)
        sealed.append(sample)
        seq += 1
    return sealed, Head(seq - 1, prev)


class Recorder:
    def __init__(
        self,
        link: CoordinatorLink,
        identity: Identity,
        chains: ChainStore,
        now_ms: Callable[[], int],
    ) -> None:
        self.link = link
        self.identity = identity
        self.chains = chains
        self.now_ms = now_ms
        self.beacon: w.BeaconOut | None = None
        self._pending: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._last_ms: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()  # pending samples
        self._send_lock = threading.Lock()  # one sender at a time: chains move in order

    @property
    def interval_seconds(self) -> float:
        return self.beacon.interval_ms / 1000 if self.beacon else 1.0

    @property
    def epoch_seconds(self) -> float:
        return self.beacon.epoch_ms / 1000 if self.beacon else 10.0

    def refresh_beacon(self) -> None:
        self.beacon = self.link.beacon()

    def beacon_outdated(self) -> bool:
        """True when the clock says a newer beacon exists than the one samples would name."""
        return self.beacon is None or self.now_ms() // self.beacon.epoch_ms > self.beacon.number

    def record(self, observations: Iterable[Observation]) -> None:
        beacon = self.beacon
        if beacon is None:
            return  # nothing can be proven before the first beacon
        now = self.now_ms()
        with self._lock:
            for obs in observations:
                key = (obs.lease_id, obs.device_id)
                # A chain's times strictly increase: two looks in one millisecond (the
                # bring-up sample and the sampler's) are recorded a millisecond apart.
                at = max(now, self._last_ms.get(key, 0) + 1)
                self._last_ms[key] = at
                fields = {
                    "lease": obs.lease_id,
                    "device": obs.device_id,
                    "time_ms": at,
                    "beacon": beacon.number,
                    "beacon_value": beacon.value,
                    **obs.sample_fields(),
                }
                self._pending.setdefault(key, []).append(fields)

    def flush(self, only_lease: str | None = None) -> None:
        """Seal and send pending samples (of one lease, or all); keep them if unreachable."""
        with self._send_lock:
            with self._lock:
                keys = [k for k in self._pending if only_lease in (None, k[0])]
                work = {k: self._pending.pop(k) for k in keys}
            if not work or self.beacon is None:
                return
            oldest_fresh = self.now_ms() // self.beacon.epoch_ms - 1
            batches: list[w.SampleBatchIn] = []
            heads: dict[tuple[str, str], Head] = {}
            for (lease_id, device_id), unsealed in work.items():
                fresh = [s for s in unsealed if s["beacon"] >= oldest_fresh]
                if len(fresh) < len(unsealed):
                    log.warning(
                        "event=samples_dropped_stale lease=%s device=%s count=%d",
                        lease_id,
                        device_id,
                        len(unsealed) - len(fresh),
                    )
                fresh = fresh[-MAX_SAMPLES_PER_BATCH:]
                if not fresh:
                    continue
                sealed, head = seal(fresh, self.chains.get(lease_id, device_id))
                signature = self.identity.sign(
                    batch_message(lease_id, device_id, head.seq, head.hash)
                )
                batches.append(
                    w.SampleBatchIn(
                        lease_id=lease_id,
                        device_id=device_id,
                        samples=sealed,
                        signature=b64(signature),
                    )
                )
                heads[(lease_id, device_id)] = head
            for start in range(0, len(batches), MAX_BATCHES_PER_REQUEST):
                chunk = batches[start : start + MAX_BATCHES_PER_REQUEST]
                try:
                    answer = self.link.send_samples(w.SamplesIn(batches=chunk))
                except LinkError as exc:
                    log.warning("event=samples_not_sent reason=%s", exc.message)
                    self._requeue(work, chunk)
                    continue
                self.beacon = answer.beacon
                for result in answer.results:
                    self._settle(result, heads)

    def _requeue(
        self, work: dict[tuple[str, str], list[dict[str, Any]]], chunk: list[w.SampleBatchIn]
    ) -> None:
        with self._lock:
            for batch in chunk:
                key = (batch.lease_id, batch.device_id)
                self._pending[key] = work[key] + self._pending.get(key, [])

    def _settle(self, result: w.BatchResultOut, heads: dict[tuple[str, str], Head]) -> None:
        key = (result.lease_id, result.device_id)
        if result.refused is None:
            self.chains.set(*key, heads[key])
            return
        log.warning(
            "event=samples_refused lease=%s device=%s code=%s reason=%s",
            result.lease_id,
            result.device_id,
            result.refused,
            result.reason,
        )
        if result.refused == "chain-broken" and result.head_seq is not None and result.head_hash:
            # The coordinator holds a later head than our disk (we stopped between its answer
            # and our write): continue from it; this interval's samples are lost.
            self.chains.set(*key, Head(result.head_seq, result.head_hash))

    def forget(self, lease_id: str) -> None:
        with self._lock:
            for key in [k for k in self._pending if k[0] == lease_id]:
                del self._pending[key]
            for key in [k for k in self._last_ms if k[0] == lease_id]:
                del self._last_ms[key]
        self.chains.forget(lease_id)
