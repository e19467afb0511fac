"""The coordinator's public key: served without an account, and named on every response
(whatever its status) so that a pinned client checks it without a request of its own."""

from __future__ import annotations

from gpupool.wire.models import COORDINATOR_KEY_HEADER
from tests.api.conftest import Api


def test_the_key_is_served_without_an_account(api: Api) -> None:
    r = api.http.get("/v1/coordinator/key")
    assert r.status_code == 200, r.text
    assert r.json() == {"public_key": api.services.timelock.public_key}


def test_every_response_names_the_key_whatever_its_status(api: Api) -> None:
    renter = api.account("renter", "r")
    responses = {
        "ok": api.http.get("/v1/accounts/me", headers=api.as_key(renter)),
        "unauthenticated": api.http.get("/v1/clusters"),
        "unsigned agent call": api.http.get("/v1/agent/leases"),
        "unknown path": api.http.get("/v1/no-such-thing"),
        "invalid body": api.book(renter, devices=0),
        "body too large": api.http.post("/v1/clusters", content=b"x" * (64 * 1024 + 1)),
    }
    statuses = {name: r.status_code for name, r in responses.items()}
    assert statuses == {
        "ok": 200,
        "unauthenticated": 401,
        "unsigned agent call": 401,
        "unknown path": 404,
        "invalid body": 422,
        "body too large": 413,
    }
    key = api.services.timelock.public_key
    assert {name: r.headers.get(COORDINATOR_KEY_HEADER) for name, r in responses.items()} == {
        name: key for name in responses
    }
