"""Refusals name the real cause, in the order the constraints are checked, and money in
messages is in decimal units (never micro-units); the pool's devices carry their stake
state."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import Api


def _devices(api: Api, key: str) -> list[dict[str, Any]]:
    r = api.http.get("/v1/workers", headers=api.as_key(key))
    assert r.status_code == 200, r.text
    return [d for w in r.json() for d in w["devices"]]


def test_a_gpu_booking_on_an_unstaked_cpu_pool_is_refused_for_kind_not_stake(api: Api) -> None:
    sim = api.agent(api.account("supplier", "s"))
    sim.stake = False
    sim.register(devices=2)
    renter = api.account("renter", "r")
    r = api.book(renter, kind="gpu")
    assert r.status_code == 409
    body = r.json()
    assert body["excluded_by"] == {"kind": 2}
    assert "2 of the other kind" in body["message"]
    assert "stake" not in body["message"]


def test_unstaked_devices_that_would_match_are_refused_for_stake(api: Api) -> None:
    sim = api.agent(api.account("supplier", "s"))
    sim.stake = False
    sim.register(devices=3, region="us-east")
    renter = api.account("renter", "r")
    body = api.book(renter, devices=2, regions=["us-east", "eu-west"]).json()
    assert body["excluded_by"] == {"stake": 3}
    assert "3 without their full stake" in body["message"]
    # a constraint they fail anyway is named before the stake they lack
    body = api.book(renter, devices=2, regions=["eu-west"]).json()
    assert body["excluded_by"] == {"region": 3}


def test_staked_and_unstaked_causes_add_up_in_constraint_order(api: Api) -> None:
    staked = api.agent(api.account("supplier", "a"))
    staked.register(devices=2, price="0.50")
    unstaked = api.agent(api.account("supplier", "b"))
    unstaked.stake = False
    unstaked.register(devices=1, price="0.50")
    renter = api.account("renter", "r")
    body = api.book(renter, devices=2, max_price_per_hour="0.20").json()
    assert body["excluded_by"] == {"price": 3}
    body = api.book(renter, devices=3, max_price_per_hour="1").json()
    assert body["excluded_by"] == {"stake": 1}
    assert body["matching"] == 2


def test_a_booking_short_of_money_names_the_amounts_in_decimal_units(api: Api) -> None:
    api.agent(api.account("supplier", "s")).register(devices=1, price="6.20")
    broke = api.account("renter", "broke", funds="1.5")
    r = api.book(broke, max_price_per_hour="10", hours=1)
    assert r.status_code == 402, r.text
    body = r.json()
    assert "holds 1.50; this needs 6.20 (short by 4.70)" in body["message"]
    assert "micro" not in body["message"]
    assert body["shortfall_micros"] == 4_700_000  # the figures for scripts stay exact


def test_workers_list_shows_each_devices_stake_state(api: Api) -> None:
    supplier = api.account("supplier", "s")
    sim = api.agent(supplier)
    sim.stake = False
    worker = sim.register(devices=2)
    renter = api.account("renter", "r")
    assert [d["stake"] for d in _devices(api, renter)] == ["none", "none"]
    sim.stake_devices(worker.devices)
    assert [d["stake"] for d in _devices(api, renter)] == ["staked", "staked"]
    first = worker.devices[0].id
    r = api.http.delete(f"/v1/stakes/{first}", headers=api.as_key(supplier))
    assert r.status_code == 200, r.text
    states = {d["id"]: d["stake"] for d in _devices(api, supplier)}
    assert states[first] == "unstaking"
    assert sorted(states.values()) == ["staked", "unstaking"]
