"""Stake on the coordinator: suppliers stake per device, unstake after a cooldown, and lose
stake by the rules of `domain.stake`; repeated fraud blocks the worker.

A device is in the pool only while its stake account holds its required stake and no
unstake is pending (`in_pool`); the market books nothing else.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from gpupool.domain import ledger as money
from gpupool.domain import stake as rules
from gpupool.domain.errors import Conflict, NotFound
from gpupool.domain.ledger import MoveKind
from gpupool.domain.models import Account, Device, DeviceStatus, Role
from gpupool.services.ledger import Posted, post, require_role
from gpupool.services.ports import Clock, Database, StakeRecord, Transaction


@dataclass(frozen=True, slots=True)
class StakeView:
    device_id: str
    worker_id: str
    required: int
    held: int
    unstake_at: float | None
    in_pool: bool


def in_pool(tx: Transaction, devices: Sequence[Device]) -> list[Device]:
    """The devices whose stake is complete and not being withdrawn."""
    states = stake_states(tx, devices)
    return [d for d in devices if states[d.id] is rules.StakeState.STAKED]


def stake_states(tx: Transaction, devices: Sequence[Device]) -> dict[str, rules.StakeState]:
    """Each device's stake state, by device id (two queries, however many suppliers)."""
    suppliers = {d.supplier_id for d in devices}
    if len(suppliers) == 1:
        (only,) = suppliers
        records = {r.device_id: r for r in tx.ledger.stakes(only)}
        held = tx.ledger.balances_like(money.stake_prefix(only))
    else:
        records = {r.device_id: r for r in tx.ledger.stakes()}
        held = tx.ledger.balances_like(money.stake_prefix())
    return {
        d.id: rules.stake_state(
            (r := records.get(d.id)) is not None,
            r.unstake_at if r is not None else None,
            held.get(money.stake(d.supplier_id, d.id), 0),
            rules.required_stake(d.spec),
        )
        for d in devices
    }


def slash(
    tx: Transaction,
    device: Device,
    reason: rules.SlashReason,
    key: str,
    now: float,
    *,
    renter_id: str | None = None,
    times: int = 1,
) -> int:
    """Take stake from a device by `reason`'s rule, in `tx`; returns the amount. A worker at
    its fraud limit is blocked. Idempotent by `key`."""
    if tx.ledger.entry(key) is not None:
        return 0
    rule = rules.RULES[reason]
    account = money.stake(device.supplier_id, device.id)
    held = tx.ledger.balances([account]).get(account, 0)
    amount = rules.slash_amount(held, rules.required_stake(device.spec), rule.rate_ppm, times)
    dest = money.renter(renter_id) if rule.to_renter and renter_id else money.TREASURY
    memo: dict[str, str | int] = {"device": device.id, "reason": reason.value}
    post(tx, money.transfer(MoveKind.SLASH, key, account, dest, amount, memo), now)
    tx.ledger.add_slash(key, device.worker_id, device.id, reason.value, rule.fraud, amount, now)
    if rule.fraud and tx.ledger.fraud_count(device.worker_id) >= rules.FRAUD_LIMIT:
        for d in tx.workers.devices(device.worker_id):
            tx.workers.set_verification(d.id, verified=False, at=now, status=DeviceStatus.BLOCKED)
    return amount


class Stakes:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        cooldown_seconds: float = rules.UNSTAKE_COOLDOWN_SECONDS,
    ) -> None:
        self._db = db
        self._clock = clock
        self.cooldown_seconds = cooldown_seconds

    def _own_device(self, tx: Transaction, supplier: Account, device_id: str) -> Device:
        require_role(supplier, Role.SUPPLIER)
        device = next((d for d in tx.workers.devices() if d.id == device_id), None)
        if device is None or device.supplier_id != supplier.id:
            raise NotFound(f"no device {device_id} of yours")
        return device

    def list(self, supplier: Account) -> list[StakeView]:
        require_role(supplier, Role.SUPPLIER)
        with self._db.transaction() as tx:
            devices = [d for d in tx.workers.devices() if d.supplier_id == supplier.id]
            records = {r.device_id: r for r in tx.ledger.stakes(supplier.id)}
            held = tx.ledger.balances_like(money.stake_prefix(supplier.id))
            pooled = {d.id for d in in_pool(tx, devices)}
            return [
                StakeView(
                    d.id,
                    d.worker_id,
                    rules.required_stake(d.spec),
                    held.get(money.stake(supplier.id, d.id), 0),
                    r.unstake_at if (r := records.get(d.id)) else None,
                    d.id in pooled,
                )
                for d in devices
            ]

    def stake(self, supplier: Account, device_id: str, key: str | None = None) -> Posted:
        """Top the device's stake up to its required amount from the supplier's balance
        (402 when short); a pending unstake is called off. Staking a fully staked device
        moves nothing."""
        now = self._clock.now()
        with self._db.transaction() as tx:
            device = self._own_device(tx, supplier, device_id)
            account = money.stake(supplier.id, device_id)
            held = tx.ledger.balances([account]).get(account, 0)
            top_up = max(0, rules.required_stake(device.spec) - held)
            move = money.transfer(
                MoveKind.STAKE,
                f"stake:{key or uuid.uuid4().hex}",
                money.supplier(supplier.id),
                account,
                top_up,
                {"device": device_id},
            )
            posted = post(tx, move, now)
            record = tx.ledger.stake(device_id)
            tx.ledger.save_stake(
                StakeRecord(
                    device_id,
                    supplier.id,
                    device.worker_id,
                    record.staked_at if record else now,
                    None,
                )
            )
            return posted

    def unstake(self, supplier: Account, device_id: str) -> StakeView:
        """First call: the device leaves the pool and the cooldown starts (refused while a
        lease holds the device). A call after the cooldown pays the stake back."""
        now = self._clock.now()
        with self._db.transaction() as tx:
            device = self._own_device(tx, supplier, device_id)
            record = tx.ledger.stake(device_id)
            if record is None:
                raise Conflict(f"device {device_id} has no stake")
            if device.status is DeviceStatus.LEASED:
                raise Conflict(f"device {device_id} is in an open lease; unstake after it ends")
            account = money.stake(supplier.id, device_id)
            held = tx.ledger.balances([account]).get(account, 0)
            left = rules.cooldown_left(record.unstake_at, now)
            if left is None:
                record = StakeRecord(
                    device_id,
                    supplier.id,
                    device.worker_id,
                    record.staked_at,
                    now + self.cooldown_seconds,
                )
                tx.ledger.save_stake(record)
            elif left > 0:
                raise Conflict(
                    f"the unstake cooldown of {device_id} ends in {left:.0f} s",
                    seconds_left=round(left, 3),
                )
            else:
                key = f"unstake:{device_id}:{record.staked_at}"
                move = money.transfer(
                    MoveKind.UNSTAKE,
                    key,
                    account,
                    money.supplier(supplier.id),
                    held,
                    {"device": device_id},
                )
                post(tx, move, now)
                tx.ledger.drop_stake(device_id)
                held = 0
            return StakeView(
                device_id,
                device.worker_id,
                rules.required_stake(device.spec),
                held,
                record.unstake_at if left is None else None,
                False,
            )
