"""The ledger through the API: escrow at booking (402 with the shortfall when short), more
escrow on extension, settlement by the certificate's payout fraction with the rest refunded,
idempotent funding and settlement, and a renter seeing only its own journal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpupool.domain.money import to_micros
from tests.api.conftest import HOUR, AgentSim, Api
from tests.api.test_timelock import _end, _lease, _run


def _me(api: Api, key: str) -> dict[str, Any]:
    r = api.http.get("/v1/accounts/me", headers=api.as_key(key))
    assert r.status_code == 200
    data: dict[str, Any] = r.json()
    return data


def _balance(api: Api, key: str) -> dict[str, Any]:
    r = api.http.get("/v1/ledger/balance", headers=api.as_key(key))
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def _audit(api: Api) -> dict[str, Any]:
    r = api.http.get("/v1/ledger/audit", headers=api.admin_headers())
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def _supplier(api: Api, devices: int = 2) -> tuple[str, AgentSim]:
    key = api.account("supplier", "s")
    sim = api.agent(key)
    sim.register(devices=devices)
    return key, sim


def test_a_short_balance_refuses_the_booking_with_402_and_changes_nothing(api: Api) -> None:
    _supplier(api)
    renter = api.account("renter", "poor", funds="0.15")
    r = api.book(renter, devices=2, hours=1)  # 2 x 0.10 x 1 h = 0.20
    assert r.status_code == 402, r.text
    body = r.json()
    assert body["error"] == "insufficient_funds"
    assert body["shortfall_micros"] == to_micros("0.05")
    assert body["balance_micros"] == to_micros("0.15")
    assert api.http.get("/v1/clusters", headers=api.as_key(renter)).json() == []
    workers = api.http.get("/v1/workers", headers=api.as_key(renter)).json()
    assert all(d["status"] == "idle" for wk in workers for d in wk["devices"])
    assert _balance(api, renter)["available_micros"] == to_micros("0.15")


def test_booking_and_extension_move_the_price_into_escrow(api: Api) -> None:
    _supplier(api)
    renter = api.account("renter", "r", funds="10")
    r = api.book(renter, devices=2, hours=3)
    assert r.status_code == 201, r.text
    b = _balance(api, renter)
    assert b["held_micros"] == to_micros("0.60")
    assert b["available_micros"] == to_micros("9.40")
    cluster = r.json()["id"]
    r = api.http.post(
        f"/v1/clusters/{cluster}/extend", json={"hours": 2}, headers=api.as_key(renter)
    )
    assert r.status_code == 200, r.text
    b = _balance(api, renter)
    assert b["held_micros"] == to_micros("1.00")
    assert b["available_micros"] == to_micros("9.00")
    assert _audit(api)["balanced"] is True


def test_an_extension_the_renter_cannot_pay_is_refused(api: Api) -> None:
    _supplier(api)
    renter = api.account("renter", "r", funds="0.25")
    cluster = api.book(renter, devices=2, hours=1).json()["id"]
    r = api.http.post(
        f"/v1/clusters/{cluster}/extend", json={"hours": 1}, headers=api.as_key(renter)
    )
    assert r.status_code == 402
    shown = api.http.get(f"/v1/clusters/{cluster}", headers=api.as_key(renter)).json()
    assert shown["hours"] == 1


def test_lease_end_pays_the_supplier_by_the_certificate_and_refunds_the_rest(
    api: Api, tmp_path: Path
) -> None:
    supplier, sim = _supplier(api)
    renter = api.account("renter", "r", funds="10")
    before = _balance(api, supplier)["available_micros"]
    leased = _lease(api, renter, sim, tmp_path)  # 1 device, 1 h at 0.10
    _run(api, leased, int(HOUR) // 2)  # terminated after half the hour
    cert = _end(api, renter, leased)
    entries = api.http.get("/v1/ledger/entries", headers=api.as_key(renter)).json()
    settle = next(e for e in entries if e["kind"] == "settle")
    paid = {p["account"]: p["amount_micros"] for p in settle["postings"]}
    supplier_id = _me(api, supplier)["id"]
    ran_ms = cert["t_end_ms"] - cert["t1_ms"]
    expected = 100_000 * ran_ms // round(HOUR * 1000) * cert["devices"][0]["payout_ppm"]
    expected //= 1_000_000
    assert expected > 0
    assert paid[f"supplier:{supplier_id}"] == expected
    assert _balance(api, supplier)["available_micros"] == before + expected
    b = _balance(api, renter)
    assert b["held_micros"] == 0
    assert b["available_micros"] == to_micros("10") - expected
    assert _audit(api)["balanced"] is True


def test_settlement_requests_are_idempotent(api: Api, tmp_path: Path) -> None:
    supplier, sim = _supplier(api)
    renter = api.account("renter", "r", funds="10")
    leased = _lease(api, renter, sim, tmp_path)
    _run(api, leased, 20)
    _end(api, renter, leased)  # the ticker settles
    first = api.http.post(f"/v1/ledger/settle/{leased.lease_id}", headers=api.admin_headers())
    again = api.http.post(f"/v1/ledger/settle/{leased.lease_id}", headers=api.admin_headers())
    assert first.status_code == again.status_code == 200
    assert first.json()["fresh"] is False and again.json()["fresh"] is False
    assert first.json()["seq"] == again.json()["seq"]
    kinds = [
        e["kind"] for e in api.http.get("/v1/ledger/entries", headers=api.as_key(supplier)).json()
    ]
    assert kinds.count("settle") == 1


def test_funding_with_one_key_mints_once(api: Api) -> None:
    renter = api.account("renter", "r", funds=None)
    account_id = _me(api, renter)["id"]
    body = {"account_id": account_id, "amount": "5", "key": "topup-1"}
    first = api.http.post("/v1/ledger/fund", json=body, headers=api.admin_headers())
    again = api.http.post("/v1/ledger/fund", json=body, headers=api.admin_headers())
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json()["fresh"] is False and again.json()["seq"] == first.json()["seq"]
    assert _balance(api, renter)["available_micros"] == to_micros("5")
    other = {**body, "amount": "6"}
    r = api.http.post("/v1/ledger/fund", json=other, headers=api.admin_headers())
    assert r.status_code == 409
    r = api.http.post("/v1/ledger/fund", json=body, headers=api.as_key(renter))
    assert r.status_code in (401, 403)


def test_a_renter_sees_only_its_own_journal(api: Api) -> None:
    _supplier(api)
    alice = api.account("renter", "alice")
    bob = api.account("renter", "bob")
    assert api.book(alice, devices=1).status_code == 201
    bob_id = _me(api, bob)["id"]
    entries = api.http.get("/v1/ledger/entries", headers=api.as_key(bob)).json()
    assert [e["kind"] for e in entries] == ["fund"]
    assert all(
        p["account"] == f"renter:{bob_id}" or p["account"] == "mint"
        for e in entries
        for p in e["postings"]
    )
    everything = api.http.get("/v1/ledger/entries", headers=api.admin_headers()).json()
    kinds = [e["kind"] for e in everything]
    assert kinds.count("escrow") == 1 and kinds.count("fund") == 3  # the supplier's too


def test_a_retried_booking_or_extension_with_one_key_pays_once(api: Api) -> None:
    _supplier(api, devices=4)
    renter = api.account("renter", "r", funds="10")
    headers = {**api.as_key(renter), "Idempotency-Key": "book-1"}
    body = {"devices": 2, "kind": "cpu", "hours": 1, "max_price_per_hour": "1"}
    first = api.http.post("/v1/clusters", json=body, headers=headers)
    again = api.http.post("/v1/clusters", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    assert len(api.http.get("/v1/clusters", headers=api.as_key(renter)).json()) == 1
    assert _balance(api, renter)["available_micros"] == to_micros("9.80")

    cluster = first.json()["id"]
    extend = {**api.as_key(renter), "Idempotency-Key": "ext-1"}
    for _ in range(2):
        r = api.http.post(f"/v1/clusters/{cluster}/extend", json={"hours": 1}, headers=extend)
        assert r.status_code == 200 and r.json()["hours"] == 2
    assert _balance(api, renter)["available_micros"] == to_micros("9.60")
    assert _audit(api)["balanced"] is True
