"""The ledger repository: journal entries with their postings, running balances, the
chain head row every move locks, stakes and slashes."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from gpupool.coordinator.storage.ledger_tables import (
    ledger_balances,
    ledger_entries,
    ledger_head,
    ledger_postings,
    slashes,
    stakes,
)
from gpupool.coordinator.storage.tables import certificates, leases
from gpupool.crypto.canonical import canonical_json
from gpupool.crypto.ledger import GENESIS, Entry
from gpupool.domain.ledger import Move, MoveKind, Posting
from gpupool.services.ports import StakeRecord

_LOCK_HEAD = ledger_head.select().where(ledger_head.c.id == 1).with_for_update()


def _stake(row: Any) -> StakeRecord:
    return StakeRecord(row.device_id, row.supplier_id, row.worker_id, row.staked_at, row.unstake_at)


class SqlLedger:
    def __init__(self, conn: Connection) -> None:
        self._c = conn

    def lock_head(self) -> tuple[int, str]:
        row = self._c.execute(_LOCK_HEAD).first()
        if row is None:  # a schema built without the migration's seed row
            self._c.execute(ledger_head.insert().values(id=1, seq=0, hash=GENESIS))
            row = self._c.execute(_LOCK_HEAD).one()
        return int(row.seq), str(row.hash)

    def _entries(self, rows: list[Any]) -> list[Entry]:
        if not rows:
            return []
        seqs = [r.seq for r in rows]
        lines: dict[int, list[Posting]] = {s: [] for s in seqs}
        for p in self._c.execute(
            ledger_postings.select()
            .where(ledger_postings.c.seq.in_(seqs))
            .order_by(ledger_postings.c.seq, ledger_postings.c.account)
        ):
            lines[p.seq].append(Posting(p.account, int(p.amount)))
        return [
            Entry(
                int(r.seq),
                r.prev_hash,
                r.hash,
                int(r.at_ms),
                Move(MoveKind(r.kind), r.key, tuple(lines[r.seq]), json.loads(r.memo)),
            )
            for r in rows
        ]

    def entry(self, key: str) -> Entry | None:
        row = self._c.execute(ledger_entries.select().where(ledger_entries.c.key == key)).first()
        return self._entries([row])[0] if row else None

    def append(self, entry: Entry, balances: dict[str, int]) -> None:
        move = entry.move
        self._c.execute(
            ledger_entries.insert().values(
                seq=entry.seq,
                key=move.key,
                kind=move.kind.value,
                memo=canonical_json(dict(move.memo)).decode(),
                at_ms=entry.at_ms,
                prev_hash=entry.prev_hash,
                hash=entry.hash,
            )
        )
        if move.postings:
            self._c.execute(
                ledger_postings.insert(),
                [
                    {"seq": entry.seq, "account": p.account, "amount": p.amount}
                    for p in move.postings
                ],
            )
        for account, balance in balances.items():
            updated = self._c.execute(
                ledger_balances.update()
                .where(ledger_balances.c.account == account)
                .values(balance=balance)
            ).rowcount
            if not updated:  # the head lock is held: nobody else inserts it meanwhile
                self._c.execute(ledger_balances.insert().values(account=account, balance=balance))
        self._c.execute(
            ledger_head.update().where(ledger_head.c.id == 1).values(seq=entry.seq, hash=entry.hash)
        )

    def balances(self, accounts: Collection[str]) -> dict[str, int]:
        if not accounts:
            return {}
        rows = self._c.execute(
            ledger_balances.select().where(ledger_balances.c.account.in_(list(accounts)))
        )
        return {r.account: int(r.balance) for r in rows}

    def balances_like(self, prefix: str) -> dict[str, int]:
        rows = self._c.execute(
            ledger_balances.select()
            .where(ledger_balances.c.account.startswith(prefix, autoescape=True))
            .order_by(ledger_balances.c.account)
        )
        return {r.account: int(r.balance) for r in rows}

    def entries(
        self, *, after: int = 0, limit: int | None = None, accounts: Collection[str] = ()
    ) -> list[Entry]:
        query = ledger_entries.select().where(ledger_entries.c.seq > after)
        if accounts:
            query = query.where(
                ledger_entries.c.seq.in_(
                    sa.select(ledger_postings.c.seq).where(
                        ledger_postings.c.account.in_(list(accounts))
                    )
                )
            )
        query = query.order_by(ledger_entries.c.seq)
        if limit is not None:
            query = query.limit(limit)
        return self._entries(list(self._c.execute(query)))

    def unsettled_leases(self, states: Collection[str]) -> list[str]:
        settled = sa.select(ledger_entries.c.key).where(
            ledger_entries.c.key == sa.literal("settle:") + leases.c.id
        )
        rows = self._c.execute(
            sa.select(leases.c.id)
            .join(certificates, certificates.c.lease_id == leases.c.id)
            .where(leases.c.state.in_(list(states)), ~sa.exists(settled))
            .order_by(leases.c.id)
        )
        return [r.id for r in rows]

    def stake(self, device_id: str) -> StakeRecord | None:
        row = self._c.execute(stakes.select().where(stakes.c.device_id == device_id)).first()
        return _stake(row) if row else None

    def stakes(self, supplier_id: str | None = None) -> list[StakeRecord]:
        query = stakes.select().order_by(stakes.c.device_id)
        if supplier_id is not None:
            query = query.where(stakes.c.supplier_id == supplier_id)
        return [_stake(r) for r in self._c.execute(query)]

    def save_stake(self, record: StakeRecord) -> None:
        values = {
            "supplier_id": record.supplier_id,
            "worker_id": record.worker_id,
            "staked_at": record.staked_at,
            "unstake_at": record.unstake_at,
        }
        updated = self._c.execute(
            stakes.update().where(stakes.c.device_id == record.device_id).values(**values)
        ).rowcount
        if not updated:
            self._c.execute(stakes.insert().values(device_id=record.device_id, **values))

    def drop_stake(self, device_id: str) -> None:
        self._c.execute(stakes.delete().where(stakes.c.device_id == device_id))

    def add_slash(
        self,
        key: str,
        worker_id: str,
        device_id: str,
        reason: str,
        fraud: bool,
        amount: int,
        at: float,
    ) -> None:
        self._c.execute(
            slashes.insert().values(
                key=key,
                worker_id=worker_id,
                device_id=device_id,
                reason=reason,
                fraud=fraud,
                amount=amount,
                at=at,
            )
        )

    def fraud_count(self, worker_id: str) -> int:
        count = self._c.execute(
            sa.select(sa.func.count())
            .select_from(slashes)
            .where(slashes.c.worker_id == worker_id, slashes.c.fraud.is_(True))
        ).scalar()
        return int(count or 0)
