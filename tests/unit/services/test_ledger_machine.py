"""A Hypothesis state machine drives the money side of a coordinator on SQLite with random
fundings, bookings, extensions, terminations, certificates, settlements (some repeated),
slashes and stake top-ups. After every step: the sum over all accounts but the mint equals
what was minted, no account is below zero, the stored balances equal the journal's
postings, and the journal's hash chain verifies."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from gpupool.coordinator.storage.database import SqlDatabase
from gpupool.crypto.ledger import verify_journal
from gpupool.domain import ledger as money
from gpupool.domain.errors import Conflict, InsufficientCapacity, InsufficientFunds
from gpupool.domain.leases import LeaseState
from gpupool.domain.models import Account, Role
from gpupool.domain.stake import SlashReason
from gpupool.services.stake import slash
from tests.conftest import POSTGRES_URL, _fresh_postgres
from tests.ledger_world import HOUR, UNIT, World, make_world

PRICES = [100_000, 250_000, 400_000]


class LedgerMachine(RuleBasedStateMachine):
    leases = Bundle("leases")

    postgres = False

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="ledger-machine-"))
        if self.postgres:
            db = _fresh_postgres()
        else:
            db = SqlDatabase(f"sqlite:///{self.folder / 'l.db'}")
            db.migrate()
        self.world: World = make_world(db)
        self.minted = 0
        self.renters: list[Account] = []
        self.devices: list[str] = []
        self.settled: dict[str, int] = {}  # lease -> settlement entry seq

    @initialize()
    def people(self) -> None:
        for i in range(2):
            supplier = self.world.account(Role.SUPPLIER, f"s{i}")
            self.devices += self.world.worker(supplier, PRICES)
            self.minted += 1000 * UNIT
        self.renters = [self.world.account(Role.RENTER, f"r{i}") for i in range(2)]

    def _balance(self, account: str) -> int:
        with self.world.db.transaction() as tx:
            return tx.ledger.balances([account]).get(account, 0)

    @rule(who=st.integers(0, 1), amount=st.integers(1, 5 * UNIT))
    def fund(self, who: int, amount: int) -> None:
        self.world.ledger.fund(self.renters[who].id, amount)
        self.minted += amount

    @rule(target=leases, who=st.integers(0, 1), n=st.integers(1, 3), hours=st.integers(1, 4))
    def book(self, who: int, n: int, hours: int) -> str:
        renter = self.renters[who]
        before = self._balance(money.renter(renter.id))
        try:
            view = self.world.book(renter, n, hours)
        except InsufficientFunds as exc:
            assert self._balance(money.renter(renter.id)) == before
            assert exc.details["shortfall_micros"] > 0
            return ""
        except InsufficientCapacity:
            return ""
        cost = view.lease.price_micros_per_hour * hours
        assert self._balance(money.renter(renter.id)) == before - cost
        return view.lease.id

    def _lease(self, lease_id: str):  # type: ignore[no-untyped-def]
        with self.world.db.transaction() as tx:
            return tx.leases.lease(lease_id)

    def _renter_of(self, lease_id: str) -> Account:
        lease = self._lease(lease_id)
        return next(r for r in self.renters if r.id == lease.renter_id)

    @rule(lease_id=leases, hours=st.integers(1, 3))
    def extend(self, lease_id: str, hours: int) -> None:
        if not lease_id:
            return
        renter = self._renter_of(lease_id)
        lease = self._lease(lease_id)
        before = self._balance(money.renter(renter.id))
        try:
            self.world.market.extend(renter, lease.cluster_id, hours)
        except (InsufficientFunds, Conflict):
            assert self._balance(money.renter(renter.id)) == before
            return
        assert self._balance(money.renter(renter.id)) == (
            before - lease.price_micros_per_hour * hours
        )

    @rule(lease_id=leases)
    def terminate(self, lease_id: str) -> None:
        if not lease_id:
            return
        lease = self._lease(lease_id)
        try:
            self.world.market.terminate(self._renter_of(lease_id), lease.cluster_id)
        except Conflict:
            return
        assert self._lease(lease_id).state is LeaseState.ENDED

    @rule(
        lease_id=leases,
        data=st.data(),
    )
    def certify(self, lease_id: str, data: st.DataObject) -> None:
        if not lease_id:
            return
        lease = self._lease(lease_id)
        with self.world.db.transaction() as tx:
            if lease.state is not LeaseState.ENDED or tx.proofs.certificate(lease_id):
                return
        members = self.world.members(lease_id)
        ppm = {m.device_id: data.draw(st.integers(0, 1_000_000)) for m in members}
        violations = {m.device_id: data.draw(st.integers(0, 3)) for m in members}
        ran_ms = data.draw(st.integers(0, round(lease.hours * HOUR * 1000)))
        verdict = data.draw(st.sampled_from(["pass", "degraded", "fail"]))
        self.world.certify(lease_id, ppm, ran_ms, violations, verdict)

    @rule(lease_id=leases, twice=st.booleans())
    def settle(self, lease_id: str, twice: bool) -> None:
        if not lease_id:
            return
        try:
            posted = self.world.settlement.settle(lease_id)
        except Conflict:
            return
        if lease_id in self.settled:
            assert not posted.fresh and posted.entry.seq == self.settled[lease_id]
        self.settled[lease_id] = posted.entry.seq
        with self.world.db.transaction() as tx:
            assert not any(tx.ledger.balances_like(money.escrow_prefix(lease_id)).values())
        if twice:
            again = self.world.settlement.settle(lease_id)
            assert not again.fresh and again.entry.seq == posted.entry.seq

    @rule(
        device=st.integers(0, 5),
        reason=st.sampled_from(list(SlashReason)),
        who=st.integers(0, 1),
    )
    def slash(self, device: int, reason: SlashReason, who: int) -> None:
        device_id = self.devices[device]
        with self.world.db.transaction() as tx:
            found = next(d for d in tx.workers.devices() if d.id == device_id)
            key = f"slash:test:{uuid.uuid4().hex}"
            slash(tx, found, reason, key, self.world.clock.now(), renter_id=self.renters[who].id)

    @rule(device=st.integers(0, 5))
    def top_up_stake(self, device: int) -> None:
        device_id = self.devices[device]
        with self.world.db.transaction() as tx:
            supplier_id = next(d for d in tx.workers.devices() if d.id == device_id).supplier_id
            supplier = tx.accounts.get(supplier_id)
        assert supplier is not None
        try:
            self.world.stakes.stake(supplier, device_id)
        except InsufficientFunds:
            pass

    @rule(seconds=st.floats(0, 3 * HOUR))
    def wait(self, seconds: float) -> None:
        self.world.clock.advance(seconds)

    @invariant()
    def money_is_conserved_and_the_chain_holds(self) -> None:
        if not hasattr(self, "world"):
            return
        audit = self.world.ledger.audit()
        assert audit.chain_error is None
        assert audit.balances_match
        assert audit.negative == []
        assert audit.minted == self.minted
        assert audit.total == self.minted
        with self.world.db.transaction() as tx:
            assert verify_journal(tx.ledger.entries()) is None

    def teardown(self) -> None:
        self.world.db.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class PostgresLedgerMachine(LedgerMachine):
    postgres = True


_SETTINGS = {
    "stateful_step_count": 30,
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much],
}
LedgerMachine.TestCase.settings = settings(max_examples=25, **_SETTINGS)  # type: ignore[arg-type]
PostgresLedgerMachine.TestCase.settings = settings(max_examples=10, **_SETTINGS)  # type: ignore[arg-type]
test_ledger_machine_on_sqlite = LedgerMachine.TestCase


@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES_URL, reason="GPUPOOL_TEST_POSTGRES_URL is not set")
class TestLedgerMachineOnPostgres(PostgresLedgerMachine.TestCase):  # type: ignore[name-defined,misc]
    pass
