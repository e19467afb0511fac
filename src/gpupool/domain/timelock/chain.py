"""Whether a batch of samples posted for one (lease, device) may join that device's chain.

The coordinator keeps, per (lease, device), the head of the accepted chain. A batch is taken
whole or refused whole with a `Refusal` whose `code` is one of the stable strings of
`RefusalCode`. Hashes are computed by the caller (sha256 of the sample's canonical JSON),
and the agent's signature over the batch's last hash is checked before this is called.

Beacon b is issued at `b * epoch_ms`; its value is secret until then. A sample naming beacon
b with b's value cannot have been made before b existed, and a batch is accepted only while
the beacons it names are current or one before current, so samples cannot be held back
either. `check_chain` applies every rule that does not depend on the moment of arrival (the
offline verifier uses it); `check_batch` adds freshness.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

from gpupool.domain.timelock.samples import ZERO_HASH, Sample

DEFAULT_EPOCH_MS = 10_000
# Agents keep their clocks by NTP (within milliseconds); two seconds forgives a slow sync
# without letting a sample claim a time it could not have had.
DEFAULT_MAX_SKEW_MS = 2_000

BeaconLookup: TypeAlias = Mapping[int, str] | Callable[[int], str | None]
"""Beacon number -> its value (hex), or None (a mapping may simply lack it) if unknown."""


class RefusalCode(StrEnum):
    WRONG_LEASE = "wrong-lease"
    CHAIN_BROKEN = "chain-broken"
    BEACON_FUTURE = "beacon-future"
    BEACON_STALE = "beacon-stale"
    BEACON_MISMATCH = "beacon-mismatch"
    BEFORE_BEACON = "before-beacon"
    TIME_ORDER = "time-order"
    OUT_OF_LEASE = "out-of-lease"
    EMPTY = "empty"


@dataclass(frozen=True, slots=True)
class Refusal:
    code: RefusalCode
    message: str
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last accepted sample of a chain: what the next batch must continue."""

    seq: int
    hash: str
    time_ms: int


@dataclass(frozen=True, slots=True)
class HashedSample:
    sample: Sample
    hash: str


def beacon_issued_at(beacon: int, epoch_ms: int = DEFAULT_EPOCH_MS) -> int:
    return beacon * epoch_ms


def current_beacon(now_ms: int, epoch_ms: int = DEFAULT_EPOCH_MS) -> int:
    """The newest beacon issued at `now_ms`."""
    return now_ms // epoch_ms


def head_after(samples: Sequence[HashedSample]) -> ChainHead:
    """The chain head once `samples` (non-empty, already checked) are accepted."""
    last = samples[-1]
    return ChainHead(seq=last.sample.seq, hash=last.hash, time_ms=last.sample.time_ms)


def check_batch(
    head: ChainHead | None,
    *,
    lease_id: str,
    device_id: str,
    t1_ms: int,
    t_end_ms: int,
    samples: Sequence[HashedSample],
    current_beacon: int,
    beacons: BeaconLookup,
    now_ms: int,
    epoch_ms: int = DEFAULT_EPOCH_MS,
    max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
) -> Refusal | None:
    """None if the batch continues the chain at `head` (None: no sample accepted yet).

    `t_end_ms` is T2, or the moment the lease ended; samples up to one epoch after it are
    accepted, since the last batch of a lease is sent after it ends.
    """
    rules = _Rules(lease_id, device_id, t1_ms, t_end_ms, beacons, epoch_ms, max_skew_ms)
    return rules.check(head, samples, current_beacon, now_ms)


def check_chain(
    head: ChainHead | None,
    *,
    lease_id: str,
    device_id: str,
    t1_ms: int,
    t_end_ms: int,
    samples: Sequence[HashedSample],
    beacons: BeaconLookup,
    epoch_ms: int = DEFAULT_EPOCH_MS,
    max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
) -> Refusal | None:
    """`check_batch` without the rules that depend on when the batch arrived (beacon
    freshness, times in the future): what can still be checked long after the lease."""
    rules = _Rules(lease_id, device_id, t1_ms, t_end_ms, beacons, epoch_ms, max_skew_ms)
    return rules.check(head, samples, None, None)


@dataclass(frozen=True, slots=True)
class _Rules:
    lease_id: str
    device_id: str
    t1_ms: int
    t_end_ms: int
    beacons: BeaconLookup
    epoch_ms: int
    max_skew_ms: int

    def check(
        self,
        head: ChainHead | None,
        samples: Sequence[HashedSample],
        current: int | None,
        now_ms: int | None,
    ) -> Refusal | None:
        if not samples:
            return Refusal(RefusalCode.EMPTY, "the batch holds no samples")
        # Every rule of `_sample` at once, on plain values: a device-hour is 3,600 samples.
        # A sample that fails here goes to `_sample`, which names the first rule it breaks.
        # (A new chain is one whose previous sample had seq -1, the zero hash and no time.)
        seq, hash_, time_ms = (
            (-1, ZERO_HASH, -1) if head is None else (head.seq, head.hash, head.time_ms)
        )
        latest = self.t_end_ms + self.epoch_ms
        if now_ms is not None:
            latest = min(latest, now_ms + self.max_skew_ms)
        known_beacon, known_value = -1, None
        for item in samples:
            s = item.sample
            if s.beacon != known_beacon:
                known_beacon, known_value = s.beacon, _lookup(self.beacons, s.beacon)
            if not (
                s.lease == self.lease_id
                and s.device == self.device_id
                and s.seq == seq + 1
                and s.prev == hash_
                and time_ms < s.time_ms
                and self.t1_ms <= s.time_ms <= latest
                and (current is None or current - 1 <= s.beacon <= current)
                and s.beacon_value == known_value
                and s.time_ms >= s.beacon * self.epoch_ms - self.max_skew_ms
            ):
                previous = None if seq == -1 else ChainHead(seq, hash_, time_ms)
                refusal = self._sample(previous, s, current, now_ms)
                if refusal is not None:
                    return refusal
            seq, hash_, time_ms = s.seq, item.hash, s.time_ms
        return None

    def _sample(
        self, previous: ChainHead | None, s: Sample, current: int | None, now_ms: int | None
    ) -> Refusal | None:
        def refuse(code: RefusalCode, why: str) -> Refusal:
            return Refusal(code, f"sample seq {s.seq}: {why}", s.seq)

        if s.lease != self.lease_id or s.device != self.device_id:
            return refuse(
                RefusalCode.WRONG_LEASE,
                f"names lease {s.lease!r} and device {s.device!r}, but the batch is for "
                f"lease {self.lease_id!r} and device {self.device_id!r}",
            )
        if previous is None and (s.seq != 0 or s.prev != ZERO_HASH):
            return refuse(
                RefusalCode.CHAIN_BROKEN, "a new chain must start at seq 0 with a zero prev"
            )
        if previous is not None and s.seq != previous.seq + 1:
            return refuse(RefusalCode.CHAIN_BROKEN, f"expected seq {previous.seq + 1}")
        if previous is not None and s.prev != previous.hash:
            return refuse(
                RefusalCode.CHAIN_BROKEN, f"prev is not the hash of sample seq {previous.seq}"
            )
        if previous is not None and s.time_ms <= previous.time_ms:
            return refuse(
                RefusalCode.TIME_ORDER,
                f"time {s.time_ms} is not after {previous.time_ms} of seq {previous.seq}",
            )
        latest = self.t_end_ms + self.epoch_ms
        if not self.t1_ms <= s.time_ms <= latest:
            return refuse(
                RefusalCode.OUT_OF_LEASE, f"time {s.time_ms} is outside {self.t1_ms}..{latest}"
            )
        if now_ms is not None and s.time_ms > now_ms + self.max_skew_ms:
            return refuse(
                RefusalCode.OUT_OF_LEASE, f"time {s.time_ms} is in the future (now {now_ms})"
            )
        if current is not None and s.beacon > current:
            return refuse(
                RefusalCode.BEACON_FUTURE, f"names beacon {s.beacon}, current is {current}"
            )
        if current is not None and s.beacon < current - 1:
            return refuse(
                RefusalCode.BEACON_STALE,
                f"names beacon {s.beacon}, older than the one before current {current}",
            )
        if _lookup(self.beacons, s.beacon) != s.beacon_value:
            return refuse(
                RefusalCode.BEACON_MISMATCH, f"beacon_value is not beacon {s.beacon}'s value"
            )
        issued = beacon_issued_at(s.beacon, self.epoch_ms)
        if s.time_ms < issued - self.max_skew_ms:
            return refuse(
                RefusalCode.BEFORE_BEACON,
                f"time {s.time_ms} is before beacon {s.beacon} was issued at {issued}",
            )
        return None


def _lookup(beacons: BeaconLookup, number: int) -> str | None:
    if isinstance(beacons, Mapping):
        return beacons.get(number)
    return beacons(number)
