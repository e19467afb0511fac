"""Settling an ended lease: pay each supplier by its device's certificate payout fraction,
refund the rest to the renter, and slash the stake of devices the certificate caught, all in
one transaction with the lease locked. The settlement's journal entry (key `settle:<lease>`)
is the lease's settled state: a second or concurrent request finds it and pays nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from gpupool.domain import ledger as rules
from gpupool.domain.errors import Conflict, NotFound
from gpupool.domain.leases import TERMINAL_STATES, Lease
from gpupool.domain.stake import SlashReason
from gpupool.services.ledger import Posted, post
from gpupool.services.ports import Clock, Database, Transaction
from gpupool.services.stake import slash

Hook = Callable[[str], None]


class Settlement:
    def __init__(
        self, db: Database, clock: Clock, hour_seconds: float = 3600.0, hook: Hook | None = None
    ) -> None:
        self._db = db
        self._clock = clock
        self.hour_ms = round(hour_seconds * 1000)
        # Called at named points inside a settlement's transaction; crash tests pause there.
        self._hook = hook or (lambda _point: None)

    def settle(self, lease_id: str) -> Posted:
        """Settle an ended, certified lease; a second call (or a concurrent one) returns the
        first settlement."""
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
            posted = self._pay(tx, lease, cert)
            self._hook("settle:paid")
            self._penalise(tx, lease, cert)
            self._hook("settle:slashed")
            return posted

    def _pay(self, tx: Transaction, lease: Lease, cert: dict[str, Any]) -> Posted:
        escrowed = tx.ledger.balances_like(rules.escrow_prefix(lease.id))
        parts = []
        for device in cert["devices"]:
            worker = tx.workers.get(device["worker"])
            held = escrowed.get(rules.escrow(lease.id, device["device"]), 0)
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
        result = rules.settlement(lease.id, lease.renter_id, parts, ran_ms, self.hour_ms)
        return post(tx, result.move, self._clock.now())

    def _penalise(self, tx: Transaction, lease: Lease, cert: dict[str, Any]) -> None:
        """Violations slash the device's stake to the renter; a failed verdict slashes
        every device that had a violation once more, as fraud."""
        devices = {d.id: d for d in tx.workers.devices()}
        now = self._clock.now()
        for entry in cert["devices"]:
            device = devices.get(entry["device"])
            count = len(entry.get("violations", []))
            if device is None or count == 0:
                continue
            key = f"slash:{lease.id}:{device.id}"
            renter = lease.renter_id
            slash(tx, device, SlashReason.VIOLATION, key, now, renter_id=renter, times=count)
            if cert.get("verdict") == "fail":
                slash(tx, device, SlashReason.FAILED_LEASE, key + ":fail", now, renter_id=renter)

    def settle_due(self) -> list[str]:
        """Settle every certified lease that has not been settled (ticker)."""
        with self._db.transaction() as tx:
            due = tx.ledger.unsettled_leases([s.value for s in TERMINAL_STATES])
        for lease_id in due:
            self.settle(lease_id)
        return due
