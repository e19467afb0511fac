"""Repositories for Proof of Time-Lock (chain heads, samples, signed batches, certificates,
anomaly statistics) and capability challenges."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from gpupool.coordinator.storage.tables import (
    certificates,
    chain_heads,
    challenges,
    devices,
    model_stats,
    sample_batches,
    samples,
)
from gpupool.services.ports import (
    ChallengeRecord,
    HeadMove,
    StoredBatch,
    StoredCertificate,
    StoredHead,
    StoredSample,
)

# The statements on the sample path, built once: each accepted batch runs them, and building
# SQLAlchemy statements anew per call cost more than the database work itself.
_HEAD = sa.text(
    "SELECT seq, hash, time_ms FROM chain_heads WHERE lease_id = :lease AND device_id = :device"
)
_HEADS = sa.text("SELECT device_id, seq, hash, time_ms FROM chain_heads WHERE lease_id = :lease")
_HEADS_OF = sa.text(
    "SELECT device_id, seq, hash, time_ms FROM chain_heads "
    "WHERE lease_id = :lease AND device_id IN :devices"
).bindparams(sa.bindparam("devices", expanding=True))
# Writes of many rows go to the driver's own executemany with plain tuples: SQLAlchemy's
# per-row parameter processing cost more than SQLite's inserts. Placeholders follow the
# driver's paramstyle (sqlite3: qmark; psycopg: pyformat).
_MOVE_HEAD = {
    "qmark": "UPDATE chain_heads SET seq = ?, hash = ?, time_ms = ? "
    "WHERE lease_id = ? AND device_id = ? AND seq = ?",
    "pyformat": "UPDATE chain_heads SET seq = %s, hash = %s, time_ms = %s "
    "WHERE lease_id = %s AND device_id = %s AND seq = %s",
}
_SAMPLE_COLUMNS = "INSERT INTO samples (lease_id, device_id, seq, time_ms, hash, body) "
_INSERT_SAMPLE = {
    "qmark": _SAMPLE_COLUMNS + "VALUES (?, ?, ?, ?, ?, ?)",
    "pyformat": _SAMPLE_COLUMNS + "VALUES (%s, %s, %s, %s, %s, %s)",
}
_BATCH_COLUMNS = (
    "INSERT INTO sample_batches (lease_id, device_id, last_seq, last_hash, signature, received_ms) "
)
_INSERT_BATCH = {
    "qmark": _BATCH_COLUMNS + "VALUES (?, ?, ?, ?, ?, ?)",
    "pyformat": _BATCH_COLUMNS + "VALUES (%s, %s, %s, %s, %s, %s)",
}


class SqlProofs:
    def __init__(self, conn: Connection) -> None:
        self._c = conn

    # chains -----------------------------------------------------------------------------

    def head(self, lease_id: str, device_id: str) -> StoredHead | None:
        row = self._c.execute(_HEAD, {"lease": lease_id, "device": device_id}).first()
        return StoredHead(row.seq, row.hash, row.time_ms) if row else None

    def heads(
        self, lease_id: str, device_ids: Collection[str] | None = None
    ) -> dict[str, StoredHead]:
        if device_ids is None:
            rows = self._c.execute(_HEADS, {"lease": lease_id})
        elif device_ids:
            rows = self._c.execute(_HEADS_OF, {"lease": lease_id, "devices": list(device_ids)})
        else:
            return {}
        return {r.device_id: StoredHead(r.seq, r.hash, r.time_ms) for r in rows}

    def move_heads(self, moves: Sequence[HeadMove]) -> bool:
        """Start new chains, then move the others' heads in one executemany."""
        for m in moves:
            if m.previous is None:
                # INSERT .. ON CONFLICT DO NOTHING: of two first batches only one starts it.
                dialect = sqlite_insert if self._c.dialect.name == "sqlite" else pg_insert
                started = self._c.execute(
                    dialect(chain_heads)
                    .values(
                        lease_id=m.lease_id,
                        device_id=m.device_id,
                        seq=m.head.seq,
                        hash=m.head.hash,
                        time_ms=m.head.time_ms,
                    )
                    .on_conflict_do_nothing()
                    .returning(chain_heads.c.seq)
                ).first()
                if started is None:
                    return False
        updates = [
            (m.head.seq, m.head.hash, m.head.time_ms, m.lease_id, m.device_id, m.previous.seq)
            for m in moves
            if m.previous is not None
        ]
        if not updates:
            return True
        # Both drivers report the rows changed by all the parameter sets together.
        moved = self._c.exec_driver_sql(_MOVE_HEAD[self._c.dialect.paramstyle], updates)
        return moved.rowcount == len(updates)

    def add_samples(self, rows: Sequence[tuple[str, str, StoredSample]]) -> None:
        if rows:
            self._c.exec_driver_sql(
                _INSERT_SAMPLE[self._c.dialect.paramstyle],
                [
                    (lease_id, device_id, r.seq, r.time_ms, r.hash, r.body)
                    for lease_id, device_id, r in rows
                ],
            )

    def add_batches(self, batches: Sequence[tuple[str, str, StoredBatch]]) -> None:
        if batches:
            self._c.exec_driver_sql(
                _INSERT_BATCH[self._c.dialect.paramstyle],
                [
                    (lease_id, device_id, b.last_seq, b.last_hash, b.signature, b.received_ms)
                    for lease_id, device_id, b in batches
                ],
            )

    def samples(self, lease_id: str) -> list[tuple[str, StoredSample]]:
        """Every accepted sample of a lease as (device id, sample), in chain order."""
        rows = self._c.execute(
            sa.select(
                samples.c.device_id,
                samples.c.seq,
                samples.c.time_ms,
                samples.c.hash,
                samples.c.body,
            )
            .where(samples.c.lease_id == lease_id)
            .order_by(samples.c.device_id, samples.c.seq)
        )
        return [(r.device_id, StoredSample(r.seq, r.time_ms, r.hash, r.body)) for r in rows]

    def batches(self, lease_id: str) -> list[tuple[str, StoredBatch]]:
        rows = self._c.execute(
            sample_batches.select()
            .where(sample_batches.c.lease_id == lease_id)
            .order_by(sample_batches.c.device_id, sample_batches.c.last_seq)
        )
        return [
            (r.device_id, StoredBatch(r.last_seq, r.last_hash, r.signature, r.received_ms))
            for r in rows
        ]

    # certificates and statistics ----------------------------------------------------------

    def certificate(self, lease_id: str) -> StoredCertificate | None:
        row = self._c.execute(
            certificates.select().where(certificates.c.lease_id == lease_id)
        ).first()
        return StoredCertificate(row.body, row.signature, row.issued_at) if row else None

    def add_certificate(self, lease_id: str, cert: StoredCertificate) -> None:
        self._c.execute(
            certificates.insert().values(
                lease_id=lease_id,
                body=cert.body,
                signature=cert.signature,
                issued_at=cert.issued_at,
            )
        )

    def model_stats(self, model: str) -> dict[str, Any] | None:
        row = self._c.execute(model_stats.select().where(model_stats.c.model == model)).first()
        return dict(json.loads(row.body)) if row else None

    def save_model_stats(self, model: str, body: dict[str, Any], at: float) -> None:
        text = json.dumps(body, sort_keys=True)
        updated = self._c.execute(
            model_stats.update()
            .where(model_stats.c.model == model)
            .values(body=text, updated_at=at)
        ).rowcount
        if not updated:
            self._c.execute(model_stats.insert().values(model=model, body=text, updated_at=at))

    # capability challenges ------------------------------------------------------------------

    def add_challenge(self, record: ChallengeRecord) -> None:
        self._c.execute(challenges.insert().values(**_challenge_values(record)))

    def save_challenge(self, record: ChallengeRecord) -> None:
        self._c.execute(
            challenges.update()
            .where(challenges.c.id == record.id)
            .values(**_challenge_values(record))
        )

    def challenge(self, challenge_id: str) -> ChallengeRecord | None:
        row = self._c.execute(challenges.select().where(challenges.c.id == challenge_id)).first()
        return _challenge(row) if row else None

    def challenges(
        self,
        *,
        worker_id: str | None = None,
        states: Sequence[str] = (),
        lease_id: str | None = None,
    ) -> list[ChallengeRecord]:
        query = challenges.select().order_by(challenges.c.issued_at)
        if worker_id is not None:
            query = query.where(challenges.c.worker_id == worker_id)
        if lease_id is not None:
            query = query.where(challenges.c.lease_id == lease_id)
        if states:
            query = query.where(challenges.c.state.in_(states))
        return [_challenge(r) for r in self._c.execute(query)]

    def passed_flops(self, model: str, limit: int = 50) -> list[float]:
        """Throughput of recent passed challenges on devices of one model (CPU references)."""
        rows = self._c.execute(
            sa.select(challenges.c.flops)
            .join(devices, devices.c.id == challenges.c.device_id)
            .where(
                devices.c.model == model,
                challenges.c.state == "passed",
                challenges.c.flops.is_not(None),
                challenges.c.lease_id.is_(None),  # spot checks are sized differently
            )
            .order_by(challenges.c.finished_at.desc())
            .limit(limit)
        )
        return [float(r.flops) for r in rows]


def _challenge_values(r: ChallengeRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "device_id": r.device_id,
        "worker_id": r.worker_id,
        "n": r.n,
        "seed_a": r.seed_a,
        "seed_b": r.seed_b,
        "state": r.state,
        "root": r.root,
        "rows": list(r.rows) if r.rows is not None else None,
        "compute_seconds": r.compute_seconds,
        "flops": r.flops,
        "reason": r.reason,
        "issued_at": r.issued_at,
        "answered_at": r.answered_at,
        "finished_at": r.finished_at,
        "steps": r.steps,
        "delivered_at": r.delivered_at,
        "lease_id": r.lease_id,
        "held": r.held,
        "memory_seed": r.memory_seed,
        "probed_at": r.probed_at,
        "sketch": [str(v) for v in r.sketch] if r.sketch is not None else None,
    }


def _challenge(row: Any) -> ChallengeRecord:
    return ChallengeRecord(
        id=row.id,
        device_id=row.device_id,
        worker_id=row.worker_id,
        n=row.n,
        seed_a=row.seed_a,
        seed_b=row.seed_b,
        state=row.state,
        root=row.root,
        rows=tuple(row.rows) if row.rows is not None else None,
        compute_seconds=row.compute_seconds,
        flops=row.flops,
        reason=row.reason,
        issued_at=row.issued_at,
        answered_at=row.answered_at,
        finished_at=row.finished_at,
        steps=row.steps,
        delivered_at=row.delivered_at,
        lease_id=row.lease_id,
        held=row.held,
        memory_seed=row.memory_seed,
        probed_at=row.probed_at,
        # JSON keeps them as strings: S reaches 2^43, past what some JSON readers keep exact
        sketch=tuple(int(v) for v in row.sketch) if row.sketch is not None else None,
    )
