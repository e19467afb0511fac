"""Concurrent duplicates on SQLite and PostgreSQL: many threads asking to settle one lease,
to fund with one key, or to book with money for one booking only. Each pays once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from gpupool.coordinator.storage.database import SqlDatabase
from gpupool.domain import ledger as money
from gpupool.domain.errors import InsufficientFunds
from gpupool.domain.models import BookingRequest, DeviceKind, Role
from tests.ledger_world import HOUR, UNIT, World, make_world

T = TypeVar("T")
THREADS = 8


def _together(work: Callable[[], T], threads: int = THREADS) -> list[T | BaseException]:
    """Run `work` on `threads` threads released at once; each result or exception."""
    start = threading.Barrier(threads)
    results: list[T | BaseException] = [RuntimeError("did not run")] * threads

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = work()
        except BaseException as exc:
            results[i] = exc

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=120)
    return results


def _balance(world: World, account: str) -> int:
    with world.db.transaction() as tx:
        return tx.ledger.balances([account]).get(account, 0)


def test_concurrent_settlement_requests_pay_once(database: SqlDatabase) -> None:
    world = make_world(database)
    supplier = world.account(Role.SUPPLIER, "s")
    world.worker(supplier, [UNIT // 10, UNIT // 10])
    renter = world.account(Role.RENTER, "r")
    world.ledger.fund(renter.id, 10 * UNIT)
    view = world.book(renter, 2, 2)
    world.market.terminate(renter, view.cluster.id)
    half = {m.device_id: 500_000 for m in view.members}
    world.certify(view.lease.id, half, ran_ms=round(2 * HOUR * 1000))
    earned_before = _balance(world, money.supplier(supplier.id))

    results = _together(lambda: world.settlement.settle(view.lease.id))

    posted = [r for r in results if not isinstance(r, BaseException)]
    assert len(posted) == THREADS, [r for r in results if isinstance(r, BaseException)]
    assert sum(p.fresh for p in posted) == 1
    assert len({p.entry.seq for p in posted}) == 1
    # 2 devices x 0.10 x 2 h, half of it earned: paid exactly once
    assert _balance(world, money.supplier(supplier.id)) - earned_before == 2 * UNIT // 10
    assert _balance(world, money.renter(renter.id)) == 10 * UNIT - 2 * UNIT // 10
    assert world.ledger.audit().ok


def test_concurrent_fundings_with_one_key_mint_once(database: SqlDatabase) -> None:
    world = make_world(database)
    renter = world.account(Role.RENTER, "r")

    results = _together(lambda: world.ledger.fund(renter.id, 3 * UNIT, key="one"))

    assert not [r for r in results if isinstance(r, BaseException)]
    assert _balance(world, money.renter(renter.id)) == 3 * UNIT
    audit = world.ledger.audit()
    assert audit.ok and audit.entries == 1


def test_concurrent_bookings_never_overdraw_the_renter(database: SqlDatabase) -> None:
    world = make_world(database)
    supplier = world.account(Role.SUPPLIER, "s")
    world.worker(supplier, [UNIT // 10] * 4)
    renter = world.account(Role.RENTER, "r")
    world.ledger.fund(renter.id, UNIT // 10)  # one device-hour, no more

    results = _together(lambda: world.book(renter, 1, 1), threads=4)

    booked = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, InsufficientFunds)]
    assert len(booked) == 1 and len(refused) == 3, results
    assert _balance(world, money.renter(renter.id)) == 0
    assert world.ledger.audit().ok


def test_concurrent_bookings_with_one_idempotency_key_book_once(database: SqlDatabase) -> None:
    world = make_world(database)
    supplier = world.account(Role.SUPPLIER, "s")
    world.worker(supplier, [UNIT // 10] * 8)
    renter = world.account(Role.RENTER, "r")
    world.ledger.fund(renter.id, 10 * UNIT)
    request = BookingRequest(1, DeviceKind.CPU, 1, UNIT)

    results = _together(lambda: world.market.book(renter, request, "same-request"), threads=4)

    views = [r for r in results if not isinstance(r, BaseException)]
    assert len(views) == 4, results
    assert len({v.cluster.id for v in views}) == 1
    with world.db.transaction() as tx:
        assert len(tx.leases.clusters(renter.id)) == 1
    assert _balance(world, money.renter(renter.id)) == 10 * UNIT - UNIT // 10
    assert world.ledger.audit().ok
