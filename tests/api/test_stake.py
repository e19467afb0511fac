"""Stake through the API: only staked devices are booked, staking takes the supplier's money,
unstaking waits out a cooldown and never happens under an open lease, and the slashing rules
of docs/ledger.md: violations pay the renter, wrong capability answers pay the treasury, and
repeated fraud blocks the worker."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from gpupool.agent.proof.challenge import run_challenge
from gpupool.crypto.merkle import MerkleTree, row_leaves
from gpupool.domain.money import to_micros
from gpupool.domain.stake import UNSTAKE_COOLDOWN_SECONDS
from tests.api.conftest import Api
from tests.api.test_ledger import _balance, _me
from tests.api.test_timelock import Seen, _end, _lease, _run, violation

REQUIRED = to_micros("5") + 24 * to_micros("0.10")  # a CPU device at 0.10 an hour


def _entries(api: Api, key: str) -> list[dict[str, Any]]:
    r = api.http.get("/v1/ledger/entries", headers=api.as_key(key))
    assert r.status_code == 200, r.text
    data: list[dict[str, Any]] = r.json()
    return data


def test_only_staked_devices_are_booked(api: Api) -> None:
    supplier = api.account("supplier", "s")
    sim = api.agent(supplier)
    sim.stake = False
    worker = sim.register(devices=2)
    renter = api.account("renter", "r")
    r = api.book(renter, devices=1)
    assert r.status_code == 409 and r.json()["excluded_by"]["stake"] == 2
    sim.stake_devices(worker.devices)
    stakes = api.http.get("/v1/stakes", headers=api.as_key(supplier)).json()
    assert [(s["held_micros"], s["in_pool"]) for s in stakes] == [(REQUIRED, True)] * 2
    assert api.book(renter, devices=1).status_code == 201


def test_staking_needs_the_suppliers_money_and_moves_it_once(api: Api) -> None:
    supplier = api.account("supplier", "s")
    sim = api.agent(supplier)
    sim.stake = False
    sim.register(devices=1)
    headers = api.as_key(supplier)
    r = api.http.post(f"/v1/stakes/{sim.device(0)}", json={}, headers=headers)
    assert r.status_code == 402 and r.json()["shortfall_micros"] == REQUIRED
    api.fund(_me(api, supplier)["id"], "10")
    for _ in range(2):  # a second stake finds the device staked and moves nothing
        r = api.http.post(f"/v1/stakes/{sim.device(0)}", json={"key": "k1"}, headers=headers)
        assert r.status_code == 201, r.text
    assert _balance(api, supplier)["available_micros"] == to_micros("10") - REQUIRED
    assert _balance(api, supplier)["held_micros"] == REQUIRED
    other = api.account("supplier", "thief")
    r = api.http.post(f"/v1/stakes/{sim.device(0)}", json={}, headers=api.as_key(other))
    assert r.status_code == 404


def test_unstaking_waits_out_the_cooldown_and_never_under_an_open_lease(
    api: Api, tmp_path: Path
) -> None:
    supplier = api.account("supplier", "s")
    sim = api.agent(supplier)
    sim.register(devices=1)
    headers = api.as_key(supplier)
    start = _balance(api, supplier)["available_micros"]
    renter = api.account("renter", "r")
    leased = _lease(api, renter, sim, tmp_path)
    r = api.http.delete(f"/v1/stakes/{sim.device(0)}", headers=headers)
    assert r.status_code == 409 and "open lease" in r.json()["message"]
    _end(api, renter, leased)

    r = api.http.delete(f"/v1/stakes/{sim.device(0)}", headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["in_pool"] is False and r.json()["unstake_at"] > api.clock.now()
    assert api.book(renter).status_code == 409  # out of the pool during the cooldown
    api.clock.advance(UNSTAKE_COOLDOWN_SECONDS - 60)
    r = api.http.delete(f"/v1/stakes/{sim.device(0)}", headers=headers)
    assert r.status_code == 409 and r.json()["seconds_left"] == 60
    api.clock.advance(60)
    r = api.http.delete(f"/v1/stakes/{sim.device(0)}", headers=headers)
    assert r.status_code == 200 and r.json()["held_micros"] == 0
    after = _balance(api, supplier)
    assert after["held_micros"] == 0
    assert after["available_micros"] > start  # the stake is back, with the lease's earnings


def test_a_violation_slashes_the_devices_stake_to_the_renter(api: Api, tmp_path: Path) -> None:
    supplier = api.account("supplier", "s")
    sim = api.agent(supplier)
    sim.register(devices=1)
    renter = api.account("renter", "r")
    leased = _lease(api, renter, sim, tmp_path)
    seen = Seen(leased.device_id, leased.lease_id, violations=[violation(api)])
    leased.recorder.record([seen])
    _run(api, leased, 30)
    cert = _end(api, renter, leased)
    assert cert["violations"] == 1
    slashes = [e for e in _entries(api, renter) if e["kind"] == "slash"]
    assert len(slashes) == 1
    to_renter = {p["account"]: p["amount_micros"] for p in slashes[0]["postings"]}
    assert to_renter[f"renter:{_me(api, renter)['id']}"] == REQUIRED * 5 // 100
    assert _balance(api, supplier)["held_micros"] == REQUIRED - REQUIRED * 5 // 100
    audit = api.http.get("/v1/ledger/audit", headers=api.admin_headers()).json()
    assert audit["balanced"] is True


def _answer_wrong(api: Api, sim: Any, challenge: Any) -> Any:
    work = run_challenge(challenge.n, int(challenge.seed_a, 16), int(challenge.seed_b, 16))
    wrong = work.product + np.int32(1)
    forged = replace(work, product=wrong, tree=MerkleTree(row_leaves(wrong)))
    return sim.submit(challenge.id, forged)


def test_wrong_capability_answers_slash_stake_and_repeated_fraud_blocks_the_worker(
    api: Api,
) -> None:
    supplier = api.account("supplier", "s")
    sim = api.agent(supplier)
    sim.register(devices=3)
    api.clock.advance(6 * 3600 + 1)  # idle devices are challenged again
    sim.link.heartbeat()
    api.tick()
    challenges = sorted(sim.link.heartbeat().challenges, key=lambda c: c.device_id)
    assert len(challenges) == 3
    assert _answer_wrong(api, sim, challenges[0]).state == "wrong"
    workers = api.http.get("/v1/workers", headers=api.as_key(supplier)).json()
    statuses = [d["status"] for d in workers[0]["devices"]]
    assert statuses.count("blocked") == 1  # one fraud: only the device that lied
    assert _answer_wrong(api, sim, challenges[1]).state == "wrong"
    workers = api.http.get("/v1/workers", headers=api.as_key(supplier)).json()
    assert [d["status"] for d in workers[0]["devices"]] == ["blocked"] * 3  # the worker
    slashes = [e for e in _entries(api, supplier) if e["kind"] == "slash"]
    assert len(slashes) == 2
    for e in slashes:
        assert {p["account"]: p["amount_micros"] for p in e["postings"]}["treasury"] == (
            REQUIRED // 2
        )
