"""A coordinator's money side at the service level, on a real database: the market, the
ledger, settlement and stake services over one `SqlDatabase`, with accounts, workers and
certificates written straight through the repositories (what agents and the time-lock
verifier would have stored)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from gpupool.coordinator.storage.database import SqlDatabase
from gpupool.crypto.canonical import canonical_json
from gpupool.domain.leases import LeaseMember
from gpupool.domain.models import (
    Account,
    BookingRequest,
    DeviceKind,
    DeviceSpec,
    Location,
    Role,
    SupplierAttributes,
    Worker,
    WorkerStatus,
)
from gpupool.domain.placement import FirstFit
from gpupool.services.ledger import Ledger
from gpupool.services.market import ClusterView, Market
from gpupool.services.ports import StoredCertificate
from gpupool.services.settlement import Hook, Settlement
from gpupool.services.stake import Stakes
from gpupool.testing import ManualClock

HOUR = 100.0
UNIT = 1_000_000


@dataclass
class World:
    db: SqlDatabase
    clock: ManualClock
    market: Market
    ledger: Ledger
    settlement: Settlement
    stakes: Stakes
    accounts: dict[str, Account] = field(default_factory=dict)

    def account(self, role: Role, name: str) -> Account:
        account = Account(f"a-{secrets.token_hex(6)}", role, name, self.clock.now())
        with self.db.transaction() as tx:
            tx.accounts.add(account, secrets.token_hex(32))
        self.accounts[account.id] = account
        return account

    def worker(self, supplier: Account, prices: list[int], stake: bool = True) -> list[str]:
        """A worker of `supplier` with one verified CPU device per price; staked from a
        faucet grant when `stake`. Returns the device ids."""
        worker_id = f"w-{secrets.token_hex(6)}"
        now = self.clock.now()
        specs = [
            DeviceSpec(f"cpu{i}", DeviceKind.CPU, "Test CPU", 1024, price, cores=(i,))
            for i, price in enumerate(prices)
        ]
        with self.db.transaction() as tx:
            tx.workers.save(
                Worker(
                    worker_id,
                    supplier.id,
                    secrets.token_hex(16),
                    "host",
                    Location(50.0, 8.0, "eu"),
                    SupplierAttributes(),
                    WorkerStatus.UP,
                    now,
                    now,
                    "test",
                )
            )
            tx.workers.set_devices(worker_id, specs)
            ids = [f"{worker_id}:{s.local_name}" for s in specs]
            for device_id in ids:
                tx.workers.set_verification(device_id, verified=True, at=now)
        if stake:
            self.ledger.fund(supplier.id, 1000 * UNIT)
            for device_id in ids:
                self.stakes.stake(supplier, device_id)
        return ids

    def book(self, renter: Account, devices: int, hours: int) -> ClusterView:
        request = BookingRequest(devices, DeviceKind.CPU, hours, UNIT)
        return self.market.book(renter, request)

    def members(self, lease_id: str) -> list[LeaseMember]:
        with self.db.transaction() as tx:
            return tx.leases.members(lease_id)

    def certify(
        self,
        lease_id: str,
        payout_ppm: dict[str, int],
        ran_ms: int,
        violations: dict[str, int] | None = None,
        verdict: str = "pass",
    ) -> dict[str, Any]:
        """Store the certificate the time-lock verifier would sign at lease end."""
        violations = violations or {}
        with self.db.transaction() as tx:
            lease = tx.leases.lease(lease_id)
            assert lease is not None
            t1 = round(lease.t1 * 1000)
            body = {
                "lease": lease_id,
                "t1_ms": t1,
                "t_end_ms": t1 + ran_ms,
                "verdict": verdict,
                "devices": [
                    {
                        "device": m.device_id,
                        "worker": m.worker_id,
                        "payout_ppm": payout_ppm.get(m.device_id, 0),
                        "violations": [{"pid": k} for k in range(violations.get(m.device_id, 0))],
                    }
                    for m in tx.leases.members(lease_id)
                ],
            }
            tx.proofs.add_certificate(
                lease_id, StoredCertificate(canonical_json(body).decode(), "sig", self.clock.now())
            )
        return body


def make_world(db: SqlDatabase, hook: Hook | None = None) -> World:
    """The services over a migrated database."""
    clock = ManualClock()
    return World(
        db,
        clock,
        Market(db, clock, FirstFit(), hour_seconds=HOUR),
        Ledger(db, clock),
        Settlement(db, clock, HOUR, hook=hook),
        Stakes(db, clock, cooldown_seconds=HOUR),
    )
