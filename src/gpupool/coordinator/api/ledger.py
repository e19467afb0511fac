"""The ledger: funding (admin faucet), balances, the journal, audits and settlement."""

from __future__ import annotations

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from gpupool.coordinator.api.deps import AccountDep, AdminDep, ServicesDep, ViewerDep
from gpupool.crypto.ledger import Entry
from gpupool.domain.money import format_micros, to_micros
from gpupool.services.ledger import Audit, Balance, Posted
from gpupool.wire import ledger as w

router = APIRouter(prefix="/v1/ledger", tags=["ledger"])


def entry_out(entry: Entry, fresh: bool | None = None) -> w.EntryOut:
    return w.EntryOut(
        seq=entry.seq,
        key=entry.key,
        kind=entry.move.kind.value,
        at_ms=entry.at_ms,
        memo=dict(entry.move.memo),
        postings=[
            w.PostingOut(account=p.account, amount_micros=p.amount, amount=_signed(p.amount))
            for p in entry.move.postings
        ],
        prev_hash=entry.prev_hash,
        hash=entry.hash,
        fresh=fresh,
    )


def posted_out(posted: Posted) -> w.EntryOut:
    return entry_out(posted.entry, posted.fresh)


def _signed(micros: int) -> str:
    return ("-" if micros < 0 else "") + format_micros(abs(micros))


def balance_out(b: Balance) -> w.BalanceOut:
    held = sum(b.held.values())
    return w.BalanceOut(
        account_id=b.account_id,
        role=b.role,
        available_micros=b.available,
        available=_signed(b.available),
        held_micros=held,
        held=_signed(held),
        held_by_account=b.held,
    )


def audit_out(a: Audit) -> w.AuditOut:
    return w.AuditOut(
        entries=a.entries,
        chain_ok=a.chain_error is None,
        chain_error=a.chain_error,
        balances_match=a.balances_match,
        negative=a.negative,
        minted_micros=a.minted,
        total_micros=a.total,
        balanced=a.ok,
    )


@router.post("/fund", status_code=201, dependencies=[AdminDep])
async def fund(body: w.FundIn, svc: ServicesDep) -> w.EntryOut:
    """The faucet: mint money into a renter's (or supplier's) account. No payment rail."""
    posted = await run_in_threadpool(
        svc.ledger.fund, body.account_id, to_micros(body.amount), body.key
    )
    return posted_out(posted)


@router.get("/balance")
async def balance(account: AccountDep, svc: ServicesDep) -> w.BalanceOut:
    return balance_out(await run_in_threadpool(svc.ledger.balance, account))


@router.get("/entries")
async def entries(
    viewer: ViewerDep,
    svc: ServicesDep,
    after: int = Query(0, ge=0),
    limit: int = Query(100, ge=1, le=1000),
) -> list[w.EntryOut]:
    """Journal entries in order: an account sees those touching its own accounts, the
    admin all of them."""
    found = await run_in_threadpool(svc.ledger.journal, viewer, after=after, limit=limit)
    return [entry_out(e) for e in found]


@router.get("/audit", dependencies=[AdminDep])
async def audit(svc: ServicesDep) -> w.AuditOut:
    return audit_out(await run_in_threadpool(svc.ledger.audit))


@router.post("/settle/{lease_id}", dependencies=[AdminDep])
async def settle(lease_id: str, svc: ServicesDep) -> w.EntryOut:
    """Settle an ended, certified lease now (the ticker does it too); idempotent."""
    return posted_out(await run_in_threadpool(svc.settlement.settle, lease_id))
