"""The ledger on the coordinator: posting moves, funding, balances, the journal, and
auditing the whole (settlement is `services.settlement`).

`post` appends one move inside the caller's transaction, so an entry commits together with
the state change it pays for (a booking, an extension, a settlement, a slash) or not at all.
It locks the journal's head first: entries are appended one at a time, and a move whose
idempotency key is already in the journal is not applied again; the first entry is returned.
Locks are always taken lease first, head second, so no two use cases wait in a circle.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from gpupool.crypto.ledger import Entry, seal, verify_journal
from gpupool.domain import ledger as rules
from gpupool.domain.errors import Conflict, Forbidden, InvalidRequest, NotFound
from gpupool.domain.ledger import Move, MoveKind
from gpupool.domain.models import Account, Role
from gpupool.services.ports import Clock, Database, Transaction


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
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

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
                staked = tx.ledger.balances_like(rules.stake_prefix(account.id))
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
                accounts += list(tx.ledger.balances_like(rules.stake_prefix(viewer.id)))
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


def require_role(account: Account, *roles: Role) -> None:
    if account.role not in roles:
        raise Forbidden(f"a {account.role} account cannot do this")
