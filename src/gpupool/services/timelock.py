"""Proof of Time-Lock on the coordinator: beacons, accepting signed sample batches, and
certificates at lease end.

A request's batches are checked in one transaction with their leases locked, so two batches
of one chain never interleave, and are committed, with the request's nonce, before the agent
hears "accepted". The rules
(chain continuity, beacon freshness, coverage, plausibility, verdict) are the pure functions
of `domain.timelock`; this module fetches, hashes, verifies signatures, and stores.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from gpupool.crypto.canonical import canonical_json, sha256_hex
from gpupool.crypto.identity import Identity, b64, unb64, verify
from gpupool.crypto.timelock import (
    batch_message,
    beacon_secret,
    beacon_value,
    certificate_message,
    sample_json,
)
from gpupool.domain.errors import Conflict, InvalidRequest
from gpupool.domain.leases import ACTIVE_STATES, TERMINAL_STATES, Lease, LeaseState
from gpupool.domain.models import Account
from gpupool.domain.timelock import certificate, chain
from gpupool.domain.timelock.anomaly import ModelStats
from gpupool.domain.timelock.samples import Sample
from gpupool.domain.timelock.telemetry import DeviceProfile
from gpupool.services.agent_auth import Authenticated
from gpupool.services.challenges import OPEN_STATES
from gpupool.services.market import own_cluster
from gpupool.services.ports import (
    Clock,
    Database,
    HeadMove,
    StoredBatch,
    StoredCertificate,
    StoredHead,
    StoredSample,
    Transaction,
)

# How far an agent's clock may run behind the beacon schedule (NTP keeps real machines far
# closer); the same figure goes into each certificate.
MAX_SKEW_MS = 2_000
BEACON_CACHE = 64  # recent beacon values kept (each is one HMAC to recompute)


@dataclass(frozen=True, slots=True)
class Beacon:
    number: int
    value: str
    epoch_ms: int
    interval_ms: int


@dataclass(frozen=True, slots=True)
class BatchIn:
    lease_id: str
    device_id: str
    samples: list[dict[str, Any]]
    signature: str


@dataclass(frozen=True, slots=True)
class BatchResult:
    lease_id: str
    device_id: str
    accepted: int
    head_seq: int | None
    head_hash: str | None
    refused: str | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SignedCertificate:
    lease_id: str
    cluster_id: str
    body: dict[str, Any]
    signature: str
    coordinator_key: str


@dataclass(frozen=True, slots=True)
class ProofBundle:
    certificate: SignedCertificate
    samples: dict[str, list[dict[str, Any]]]
    batches: list[tuple[str, StoredBatch]]
    worker_keys: dict[str, str]


class TimeLock:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        signer: Identity,
        *,
        epoch_seconds: float = 10.0,
        interval_seconds: float = 1.0,
    ) -> None:
        self._db = db
        self._clock = clock
        self._signer = signer
        self._secret = beacon_secret(signer.private_bytes())
        self.epoch_ms = round(epoch_seconds * 1000)
        self._beacons: dict[int, str] = {}
        self.interval_ms = round(interval_seconds * 1000)

    @property
    def public_key(self) -> str:
        return self._signer.public_key_b64

    def _now_ms(self) -> int:
        return round(self._clock.now() * 1000)

    def beacon_value(self, number: int) -> str:
        cached = self._beacons.get(number)
        if cached is None:
            cached = self._beacons[number] = beacon_value(self._secret, number)
            if len(self._beacons) > BEACON_CACHE:
                del self._beacons[min(self._beacons)]
        return cached

    def beacon(self) -> Beacon:
        number = self._now_ms() // self.epoch_ms
        return Beacon(number, self.beacon_value(number), self.epoch_ms, self.interval_ms)

    # samples --------------------------------------------------------------------------------

    def accept(self, request: Authenticated, batches: list[BatchIn]) -> list[BatchResult]:
        """Check and store one request's batches in one transaction (one commit), each batch
        accepted whole or refused with a code. The request's nonce is remembered in that
        transaction, so a replay is refused and nothing of a failed request is kept. Leases
        are locked in id order, so two requests never wait on each other in a circle.

        Parsing, encoding, hashing and signature checks need no database and are done
        before the transaction opens, which keeps its lock short."""
        prepared = [_Prepared.of(batch, request.public_key) for batch in batches]
        order = sorted(range(len(batches)), key=lambda k: (batches[k].lease_id, k))
        results: dict[int, BatchResult] = {}
        with self._db.transaction() as tx:
            request.remember_nonce(tx)
            work = _Request(tx, request.worker_id)
            for k in order:
                results[k] = self._accept_one(work, batches[k], prepared[k])
            # The leases are locked, so no other request can have moved these heads.
            if not tx.proofs.move_heads(work.moves):
                raise Conflict("a chain moved while this request was checked; send it again")
            tx.proofs.add_samples(work.samples)
            tx.proofs.add_batches(work.batches)
        return [results[k] for k in range(len(batches))]

    def _accept_one(self, work: _Request, batch: BatchIn, ready: _Prepared) -> BatchResult:
        def refuse(code: str, reason: str, head: StoredHead | None = None) -> BatchResult:
            return BatchResult(
                batch.lease_id,
                batch.device_id,
                0,
                head.seq if head else None,
                head.hash if head else None,
                code,
                reason,
            )

        lease_info = work.lease(batch.lease_id)
        if lease_info is None or batch.device_id not in lease_info.devices:
            return refuse(
                "not-a-member",
                f"device {batch.device_id} of this worker is not in lease {batch.lease_id}",
            )
        if ready.malformed is not None:
            return refuse("malformed", ready.malformed)
        head = lease_info.heads.get(batch.device_id)
        if not ready.samples:
            return refuse(chain.RefusalCode.EMPTY.value, "the batch holds no samples", head)
        if not ready.signed:
            return refuse("bad-signature", "the batch signature does not verify", head)
        parsed, hashes = ready.samples, ready.hashes
        now = self._now_ms()
        if head is not None and head.hash == hashes[-1] and head.seq == parsed[-1].seq:
            # A resend of the batch we already stored (its answer was lost): say so again.
            return BatchResult(batch.lease_id, batch.device_id, 0, head.seq, head.hash)
        refusal = chain.check_batch(
            chain.ChainHead(head.seq, head.hash, head.time_ms) if head else None,
            lease_id=batch.lease_id,
            device_id=batch.device_id,
            t1_ms=round(lease_info.lease.t1 * 1000),
            t_end_ms=lease_info.end_ms,
            samples=[chain.HashedSample(s, h) for s, h in zip(parsed, hashes, strict=True)],
            current_beacon=now // self.epoch_ms,
            beacons=self.beacon_value,
            now_ms=now,
            epoch_ms=self.epoch_ms,
            max_skew_ms=MAX_SKEW_MS,
        )
        if refusal is not None:
            return refuse(refusal.code.value, refusal.message, head)
        new_head = StoredHead(parsed[-1].seq, hashes[-1], parsed[-1].time_ms)
        work.moves.append(HeadMove(batch.lease_id, batch.device_id, head, new_head))
        lease_info.heads[batch.device_id] = new_head
        work.samples.extend(
            (batch.lease_id, batch.device_id, StoredSample(s.seq, s.time_ms, h, body.decode()))
            for s, h, body in zip(parsed, hashes, ready.bodies, strict=True)
        )
        work.batches.append(
            (
                batch.lease_id,
                batch.device_id,
                StoredBatch(new_head.seq, new_head.hash, batch.signature, now),
            )
        )
        return BatchResult(
            batch.lease_id, batch.device_id, len(parsed), new_head.seq, new_head.hash
        )

    # certificates ---------------------------------------------------------------------------

    def certify_due(self) -> list[str]:
        """Certify every ended or failed lease that has no certificate yet (ticker)."""
        with self._db.transaction() as tx:
            due = [
                lease.id
                for lease in tx.leases.leases_in(TERMINAL_STATES)
                if tx.proofs.certificate(lease.id) is None and not _spot_open(tx, lease.id)
            ]
        for lease_id in due:
            self._certify(lease_id)
        return due

    def _certify(self, lease_id: str) -> StoredCertificate:
        with self._db.transaction() as tx:
            lease = tx.leases.lease_for_update(lease_id)
            assert lease is not None
            existing = tx.proofs.certificate(lease_id)
            if existing is not None:
                return existing
            if lease.state not in TERMINAL_STATES:
                raise Conflict(
                    f"lease {lease_id} is {lease.state}; its certificate comes at the end"
                )
            if _spot_open(tx, lease_id):  # judged within seconds: its outcome belongs in it
                raise Conflict(
                    f"lease {lease_id} has a spot check in flight; the certificate follows it"
                )
            body, learn = self._assess(tx, lease)
            signature = b64(self._signer.sign(certificate_message(body)))
            stored = StoredCertificate(canonical_json(body).decode(), signature, self._clock.now())
            tx.proofs.add_certificate(lease_id, stored)
            for model, samples in learn.items():
                stored_stats = tx.proofs.model_stats(model)
                stats = ModelStats.from_dict(stored_stats) if stored_stats else ModelStats(model)
                tx.proofs.save_model_stats(model, stats.learn(samples).to_dict(), self._clock.now())
            return stored

    def _assess(
        self, tx: Transaction, lease: Lease
    ) -> tuple[dict[str, Any], dict[str, list[Sample]]]:
        t1, t_end = round(lease.t1 * 1000), _end_ms(tx, lease)
        chains: dict[str, list[chain.HashedSample]] = defaultdict(list)
        for device_id, row in tx.proofs.samples(lease.id):
            sample = Sample.from_dict(json.loads(row.body))
            chains[device_id].append(chain.HashedSample(sample, row.hash))
        last_signature = {device_id: b.signature for device_id, b in tx.proofs.batches(lease.id)}
        devices = {d.id: d for d in tx.workers.devices()}
        misses: dict[str, list[certificate.MissedSpotCheck]] = defaultdict(list)
        for c in tx.proofs.challenges(lease_id=lease.id, states=("failed", "wrong")):
            at_ms = round((c.finished_at or c.issued_at) * 1000)
            misses[c.device_id].append(certificate.MissedSpotCheck(c.id, at_ms, c.state, c.reason))
        results = []
        for member in tx.leases.members(lease.id):
            spec = devices[member.device_id].spec
            stored = tx.proofs.model_stats(spec.model)
            results.append(
                certificate.evaluate_device(
                    member.device_id,
                    member.worker_id,
                    DeviceProfile(spec.kind, spec.model, spec.memory_mb),
                    chains.get(member.device_id, []),
                    ModelStats.from_dict(stored) if stored else ModelStats(spec.model),
                    t1_ms=t1,
                    t_end_ms=t_end,
                    interval_ms=self.interval_ms,
                    spot_misses=misses.get(member.device_id, ()),
                )
            )
        all_samples = [h.sample for c in chains.values() for h in c]
        body = certificate.certificate_body(
            lease_id=lease.id,
            cluster_id=lease.cluster_id,
            devices=results,
            t1_ms=t1,
            t_end_ms=t_end,
            beacons=certificate.beacons_used(all_samples),
            interval_ms=self.interval_ms,
            epoch_ms=self.epoch_ms,
            max_skew_ms=MAX_SKEW_MS,
            issued_at_ms=self._now_ms(),
            head_signatures={d: last_signature[d] for d in chains if d in last_signature},
        )
        # The workers' keys travel under the coordinator's signature, so an exported proof
        # names the keys its chains must be signed with.
        body["worker_keys"] = {
            w: worker.public_key
            for w in sorted({r.worker for r in results})
            if (worker := tx.workers.get(w)) is not None
        }
        learn: dict[str, list[Sample]] = defaultdict(list)
        if body["verdict"] == "pass":  # learn only from leases that verified cleanly
            for r in results:
                learn[r.profile.model].extend(h.sample for h in chains.get(r.device, []))
        return body, learn

    def certificate(self, renter: Account, cluster_id: str) -> SignedCertificate:
        with self._db.transaction() as tx:
            cluster = own_cluster(tx, renter, cluster_id)
            lease = tx.leases.lease_of_cluster(cluster.id)
        stored = self._certify(lease.id)
        return SignedCertificate(
            lease.id, cluster_id, json.loads(stored.body), stored.signature, self.public_key
        )

    def export(self, renter: Account, cluster_id: str) -> ProofBundle:
        cert = self.certificate(renter, cluster_id)
        with self._db.transaction() as tx:
            samples: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for device_id, row in tx.proofs.samples(cert.lease_id):
                samples[device_id].append(json.loads(row.body))
            workers = {m.worker_id for m in tx.leases.members(cert.lease_id)}
            keys = {}
            for worker_id in sorted(workers):
                worker = tx.workers.get(worker_id)
                if worker is not None:
                    keys[worker_id] = worker.public_key
            # Each chain's last signed batch commits to every sample before it.
            last = {device_id: b for device_id, b in tx.proofs.batches(cert.lease_id)}
            return ProofBundle(cert, dict(samples), sorted(last.items()), keys)


@dataclass
class _LeaseInfo:
    lease: Lease
    devices: set[str]  # this worker's devices in the lease
    end_ms: int
    heads: dict[str, StoredHead]


@dataclass(frozen=True, slots=True)
class _Prepared:
    """What can be made of a batch before its chain is read: the parsed samples, their
    canonical bytes and hashes, whether the agent's signature holds, or why it is
    malformed."""

    samples: list[Sample]
    bodies: list[bytes]
    hashes: list[str]
    signed: bool
    malformed: str | None = None

    @classmethod
    def of(cls, batch: BatchIn, public_key: str) -> _Prepared:
        try:
            parsed = [Sample.from_dict(s) for s in batch.samples]
        except InvalidRequest as exc:
            return cls([], [], [], False, exc.message)
        if not parsed:  # check_batch names it
            return cls([], [], [], False)
        # from_dict refuses unknown fields and wrong types, so the dict as sent is the sample
        bodies = [sample_json(s) for s in batch.samples]
        hashes = [sha256_hex(body) for body in bodies]
        message = batch_message(batch.lease_id, batch.device_id, parsed[-1].seq, hashes[-1])
        return cls(parsed, bodies, hashes, _signature_holds(public_key, batch.signature, message))


@dataclass
class _Request:
    """What one request's batches share: the transaction, the worker, the leases it names
    (each read and locked once), and the rows to insert at the end."""

    tx: Transaction
    worker_id: str
    moves: list[HeadMove] = field(default_factory=list)
    samples: list[tuple[str, str, StoredSample]] = field(default_factory=list)
    batches: list[tuple[str, str, StoredBatch]] = field(default_factory=list)
    _leases: dict[str, _LeaseInfo | None] = field(default_factory=dict)

    def lease(self, lease_id: str) -> _LeaseInfo | None:
        if lease_id not in self._leases:
            lease = self.tx.leases.lease_for_update(lease_id)
            if lease is None:
                self._leases[lease_id] = None
            else:
                devices = {m.device_id for m in self.tx.leases.members(lease_id, self.worker_id)}
                self._leases[lease_id] = _LeaseInfo(
                    lease,
                    devices,
                    _end_ms(self.tx, lease),
                    self.tx.proofs.heads(lease_id, devices),
                )
        return self._leases[lease_id]


def _signature_holds(public_key_b64: str, signature_b64: str, message: bytes) -> bool:
    try:
        return verify(unb64(public_key_b64), unb64(signature_b64), message)
    except ValueError:
        return False


def _end_ms(tx: Transaction, lease: Lease) -> int:
    """When the lease stopped running: T2, or earlier when it was terminated or failed."""
    end = lease.t2
    if lease.state in ACTIVE_STATES:
        return round(end * 1000)  # states only move forward: no end or failure yet
    for at, state, _note in tx.leases.events(lease.id):
        if state in (LeaseState.ENDING, LeaseState.FAILED):
            end = min(end, at)
            break
    return round(end * 1000)


def _spot_open(tx: Transaction, lease_id: str) -> bool:
    return bool(tx.proofs.challenges(lease_id=lease_id, states=OPEN_STATES))
