"""The ledger on the coordinator: posting moves, funding, balances, the journal, settling
ended leases by their certificates, and auditing the whole.

`post` appends one move inside the caller's transaction, so an entry commits together with
the state change it pays for (a booking, an extension, a settlement, a slash) or not at all.
It locks the journal's head first: entries are appended one at a time, and a move whose
idempotency key is already in the journal is not applied again; the first entry is returned.
Locks are always taken lease first, head second, so no two use cases wait in a circle.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from gpupool.crypto.ledger import Entry, seal, verify_journal
from gpupool.domain import ledger as rules
from gpupool.domain.errors import Conflict, Forbidden, InvalidRequest, NotFound
from gpupool.domain.leases import TERMINAL_STATES
from gpupool.domain.ledger import Move, MoveKind
from gpupool.domain.models import Account, Role
from gpupool.services.ports import Clock, Database, Transaction

Hook = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Posted:
    entry: Entry
    fresh: bool  # False: the key was already in the journal and nothing moved now


def post(tx: Transaction, move: Move, now: float) -> Posted:
    """Append `move` to the journal in `tx` (see the module doc); raises InsufficientFunds
    when an account would go below zero, and Conflict when the key names a different move."""
    seq, head = tx.ledger.lock_head()
    existing = tx.ledger.entry(move.key)
    if existing is not None:
        if existing.move.postings != move.postings and move.kind is MoveKind.FUND:
            raise Conflict(f"idempotency key {move.key!r} was used for a different amount")
        return Posted(existing, False)
    after = rules.apply(tx.ledger.balances([p.account for p in move.postings]), move)
    entry = seal(seq + 1, head, move, round(now * 1000))
    tx.ledger.append(entry, after)
    return Posted(entry, True)


def main_account(account: Account) -> str:
    if account.role is Role.RENTER:
        return rules.renter(account.id)
    if account.role is Role.SUPPLIER:
        return rules.supplier(account.id)
    if account.role is Role.VALIDATOR:
        return rules.validator(account.id)
    raise InvalidRequest(f"a {account.role} account holds no balance")


@dataclass(frozen=True, slots=True)
class Balance:
    account_id: str
    role: str
    available: int  # the main account
    held: dict[str, int]  # escrow (renters) or stake (suppliers), by ledger account


@dataclass(frozen=True, slots=True)
class Audit:
    entries: int
    chain_error: str | None
    balances_match: bool
    negative: list[str]
    minted: int
    total: int  # over every account but the mint: equals `minted` when balanced

    @property
    def ok(self) -> bool:
        return (
            self.chain_error is None
            and self.balances_match
            and not self.negative
            and self.total == self.minted
        )


class Ledger:
    def __init__(
        self, db: Database, clock: Clock, hour_seconds: float = 3600.0, hook: Hook | None = None
    ) -> None:
        self._db = db
        self._clock = clock
        self.hour_ms = round(hour_seconds * 1000)
        # Called at named points inside a settlement's transaction; crash tests pause there.
        self._hook = hook or (lambda _point: None)

    # funding and reading -----------------------------------------------------------------

    def fund(self, account_id: str, amount: int, key: str | None = None) -> Posted:
        """Mint `amount` into an account (the faucet; admins only, checked by the caller)."""
        if amount <= 0:
            raise InvalidRequest("fund a positive amount")
        with self._db.transaction() as tx:
            account = tx.accounts.get(account_id)
            if account is None:
                raise NotFound(f"no account {account_id}")
            move = rules.transfer(
                MoveKind.FUND,
                f"fund:{key or uuid.uuid4().hex}",
                rules.MINT,
                main_account(account),
                amount,
                {"account": account_id},
            )
            return post(tx, move, self._clock.now())

    def balance(self, account: Account) -> Balance:
        with self._db.transaction() as tx:
            main = main_account(account)
            available = tx.ledger.balances([main]).get(main, 0)
            held: dict[str, int] = {}
            if account.role is Role.RENTER:
                for cluster in tx.leases.clusters(account.id):
                    lease = tx.leases.lease_of_cluster(cluster.id)
                    escrowed = tx.ledger.balances_like(rules.escrow_prefix(lease.id))
                    held.update({a: v for a, v in escrowed.items() if v})
            elif account.role is Role.SUPPLIER:
                staked = tx.ledger.balances_like(f"stake:{account.id}/")
                held.update({a: v for a, v in staked.items() if v})
            return Balance(account.id, account.role.value, available, held)

    def journal(self, viewer: Account | None, *, after: int = 0, limit: int = 100) -> list[Entry]:
        """Entries in order: all of them for the admin (None), else those that touch the
        viewer's own accounts."""
        with self._db.transaction() as tx:
            if viewer is None:
                return tx.ledger.entries(after=after, limit=limit)
            accounts = [main_account(viewer)]
            if viewer.role is Role.SUPPLIER:
                accounts += list(tx.ledger.balances_like(f"stake:{viewer.id}/"))
            return tx.ledger.entries(after=after, limit=limit, accounts=accounts)

    def audit(self) -> Audit:
        """Check the whole journal: the chain, the stored balances against the postings,
        no account but the mint below zero, and the total equal to what was minted."""
        with self._db.transaction() as tx:
            entries = tx.ledger.entries()
            stored = tx.ledger.balances_like("")
        computed: dict[str, int] = {}
        for entry in entries:
            for p in entry.move.postings:
                computed[p.account] = computed.get(p.account, 0) + p.amount
        minted = -computed.get(rules.MINT, 0)
        return Audit(
            entries=len(entries),
            chain_error=verify_journal(entries),
            balances_match={a: v for a, v in stored.items() if v}
            == {a: v for a, v in computed.items() if v},
            negative=sorted(a for a, v in computed.items() if v < 0 and a != rules.MINT),
            minted=minted,
            total=sum(v for a, v in computed.items() if a != rules.MINT),
        )

    # settlement ----------------------------------------------------------------------------

    def settle(self, lease_id: str) -> Posted:
        """Pay the suppliers of an ended lease by its certificate and refund the rest; a
        second call (or a concurrent one) returns the first settlement."""
        with self._db.transaction() as tx:
            lease = tx.leases.lease_for_update(lease_id)
            if lease is None:
                raise NotFound(f"no lease {lease_id}")
            done = tx.ledger.entry(rules.settle_key(lease_id))
            if done is not None:
                return Posted(done, False)
            if lease.state not in TERMINAL_STATES:
                raise Conflict(f"lease {lease_id} is {lease.state}; it settles when it ends")
            stored = tx.proofs.certificate(lease_id)
            if stored is None:
                raise Conflict(f"lease {lease_id} has no certificate yet")
            cert = json.loads(stored.body)
            escrowed = tx.ledger.balances_like(rules.escrow_prefix(lease_id))
            parts = []
            for device in cert["devices"]:
                worker = tx.workers.get(device["worker"])
                held = escrowed.get(rules.escrow(lease_id, device["device"]), 0)
                parts.append(
                    rules.DevicePart(
                        device_id=device["device"],
                        supplier_id=worker.supplier_id if worker else "",
                        escrowed=held,
                        price_micros_per_hour=held // max(1, lease.hours),
                        payout_ppm=int(device["payout_ppm"]),
                    )
                )
            ran_ms = int(cert["t_end_ms"]) - int(cert["t1_ms"])
            result = rules.settlement(lease_id, lease.renter_id, parts, ran_ms, self.hour_ms)
            posted = post(tx, result.move, self._clock.now())
            self._hook("settle:posted")
            return posted

    def settle_due(self) -> list[str]:
        """Settle every certified lease that has not been settled (ticker)."""
        with self._db.transaction() as tx:
            due = tx.ledger.unsettled_leases([s.value for s in TERMINAL_STATES])
        for lease_id in due:
            self.settle(lease_id)
        return due


def require_role(account: Account, *roles: Role) -> None:
    if account.role not in roles:
        raise Forbidden(f"a {account.role} account cannot do this")
