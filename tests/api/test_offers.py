"""Offers and the booking dry run through the API and the database: what `GET /v1/offers`
lists is what can be booked, and what `POST /v1/clusters/quote` picks is what a booking made
next gets, at the same price, while the quote itself books and pays nothing."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from gpupool.services.challenges import Sizing
from tests.api.conftest import AgentSim, Api


@pytest.fixture
def renter(api: Api) -> str:
    return api.account("renter", "offers-renter")


@pytest.fixture
def pool(api: Api) -> dict[str, AgentSim]:
    """Two CPU workers at different prices and regions and one GPU worker, all staked and
    verified, and one CPU worker whose supplier never staked (not in the pool)."""
    # GPU chains small enough for this CPU to pass as the claimed 1 MB GPU (the test's clock
    # stands still while it computes): a verified GPU device to offer.
    api.services.challenges.sizing = Sizing(gpu_size=64, target_seconds=1e-9, max_steps=64)
    sims = {name: api.agent(api.account("supplier", name)) for name in ("dear", "cheap", "gpu")}
    sims["dear"].register(devices=2, price="0.10", region="eu-west")
    sims["cheap"].register(devices=3, price="0.05", region="us-east")
    sims["gpu"].register_gpus(devices=1, price="2.00", memory_mb=1)
    unstaked = api.agent(api.account("supplier", "unstaked"))
    unstaked.stake = False
    unstaked.register(devices=4, price="0.01", region="eu-west")
    return sims


def _offers(api: Api, key: str, **params: Any) -> list[dict[str, Any]]:
    r = api.http.get("/v1/offers", params=params, headers=api.as_key(key))
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()
    return rows


def _quote(api: Api, key: str, **fields: Any) -> Any:
    body = {"devices": 1, "kind": "cpu", "hours": 1, "max_price_per_hour": "1", **fields}
    return api.http.post("/v1/clusters/quote", json=body, headers=api.as_key(key))


def _balance(api: Api, key: str) -> str:
    r = api.http.get("/v1/ledger/balance", headers=api.as_key(key))
    assert r.status_code == 200, r.text
    return str(r.json()["available"])


def test_offers_group_the_bookable_devices_cheapest_first(
    api: Api, renter: str, pool: dict[str, AgentSim]
) -> None:
    rows = _offers(api, renter)
    seen = [(o["kind"], o["price_per_hour"], o["region"], o["count"], o["workers"]) for o in rows]
    # the unstaked supplier's four 0.01 devices are not offered: a booking cannot get them
    assert seen == [
        ("cpu", "0.05", "us-east", 3, 1),
        ("cpu", "0.10", "eu-west", 2, 1),
        ("gpu", "2.00", "eu-west", 1, 1),
    ]
    assert rows[2]["model"] == "NVIDIA H100 80GB HBM3" and rows[2]["memory_mb"] == 1


def test_offers_filter_like_a_booking(api: Api, renter: str, pool: dict[str, AgentSim]) -> None:
    assert [o["kind"] for o in _offers(api, renter, kind="gpu")] == ["gpu"]
    cheap = _offers(api, renter, max_price_per_hour="0.08")
    assert [o["price_per_hour"] for o in cheap] == ["0.05"]
    eu = _offers(api, renter, kind="cpu", regions=["eu-west"])
    assert [(o["region"], o["count"]) for o in eu] == [("eu-west", 2)]
    assert _offers(api, renter, kind="gpu", gpu_models=["A100"]) == []
    assert _offers(api, renter, egress=True) == []  # no worker here offers egress


def test_a_booked_device_leaves_the_offers(
    api: Api, renter: str, pool: dict[str, AgentSim]
) -> None:
    r = api.book(renter, devices=2, max_price_per_hour="0.05")
    assert r.status_code == 201, r.text
    rows = _offers(api, renter, kind="cpu")
    assert [(o["price_per_hour"], o["count"]) for o in rows] == [("0.05", 1), ("0.10", 2)]


def test_a_quote_is_what_the_booking_then_gets_and_costs_and_books_nothing(
    api: Api, renter: str, pool: dict[str, AgentSim]
) -> None:
    before = _balance(api, renter)
    q = _quote(api, renter, devices=4, hours=3)
    assert q.status_code == 200, q.text
    quote = q.json()
    # placement: the three 0.05 devices, then one 0.10 (cheapest first among equals)
    prices = sorted(Decimal(d["price_per_hour"]) for d in quote["devices"])
    assert prices == [Decimal("0.05")] * 3 + [Decimal("0.10")]
    assert Decimal(quote["price_per_hour"]) == Decimal("0.25")
    assert Decimal(quote["total_price"]) == Decimal("0.75") and quote["hours"] == 3
    assert quote["affordable"] is True and Decimal(quote["balance"]) == Decimal(before)
    # nothing booked, nothing paid, the devices still offered
    assert _balance(api, renter) == before
    listed = api.http.get("/v1/clusters", headers=api.as_key(renter))
    assert listed.json() == []
    assert sum(o["count"] for o in _offers(api, renter, kind="cpu")) == 5

    booked = api.book(renter, devices=4, hours=3)
    assert booked.status_code == 201, booked.text
    cluster = booked.json()
    assert {m["device_id"] for m in cluster["members"]} == {
        d["device_id"] for d in quote["devices"]
    }
    assert cluster["head_device_id"] == quote["head_device_id"]
    assert cluster["price_per_hour"] == quote["price_per_hour"]
    assert cluster["total_price"] == quote["total_price"]
    assert cluster["predicted_diameter_ms"] == quote["predicted_diameter_ms"]
    assert Decimal(_balance(api, renter)) == Decimal(before) - Decimal(quote["total_price"])


def test_a_quote_refuses_as_the_booking_would(
    api: Api, renter: str, pool: dict[str, AgentSim]
) -> None:
    quoted = _quote(api, renter, devices=9)
    booked = api.book(renter, devices=9)
    assert quoted.status_code == booked.status_code == 409
    assert quoted.json() == booked.json()
    assert "requested 9 devices, 5 match" in quoted.json()["message"]


def test_a_quote_says_when_the_renter_cannot_pay(api: Api, pool: dict[str, AgentSim]) -> None:
    poor = api.account("renter", "poor", funds="0.04")
    quote = _quote(api, poor, devices=1).json()
    assert quote["affordable"] is False and quote["total_price"] == "0.05"
    assert api.book(poor, devices=1).status_code == 402  # as the quote said


def test_offers_and_quotes_need_a_renter_and_refuse_bad_input(
    api: Api, renter: str, pool: dict[str, AgentSim]
) -> None:
    supplier = pool["cheap"].supplier_key
    assert api.http.get("/v1/offers").status_code == 401
    assert api.http.get("/v1/offers", headers=api.as_key(supplier)).status_code == 403
    assert _quote(api, supplier).status_code == 403
    for params in ({"kind": "tpu"}, {"max_price_per_hour": "cheap"}, {"colour": "red"}):
        r = api.http.get("/v1/offers", params=params, headers=api.as_key(renter))
        assert r.status_code == 422, (params, r.text)
        assert r.json()["error"], r.text
    bad = _quote(api, renter, devices=0)
    assert bad.status_code == 422 and bad.json()["error"]
