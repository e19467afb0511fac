"""Signed agent requests: unsigned, wrongly signed, tampered, stale and replayed requests are
refused with 401; registration binds a worker to its supplier."""

from __future__ import annotations

import json

import pytest

from gpupool.agent.link import LinkError
from gpupool.crypto.identity import Identity
from gpupool.crypto.requests import sign_request
from tests.api.conftest import AgentSim, Api


@pytest.fixture
def agent(api: Api) -> AgentSim:
    sim = api.agent(api.account("supplier"))
    sim.register()
    return sim


def _post_signed(
    api: Api,
    identity: Identity,
    path: str,
    body: bytes,
    at: float,
    nonce: str | None = None,
    signer: Identity | None = None,
    sent_body: bytes | None = None,
) -> tuple[int, dict[str, str]]:
    headers = sign_request(signer or identity, "POST", path, body, at, nonce).as_dict()
    headers["X-Gpupool-Worker"] = identity.worker_id
    r = api.http.post(
        path,
        content=sent_body if sent_body is not None else body,
        headers={**headers, "Content-Type": "application/json"},
    )
    return r.status_code, r.json()


def test_signed_heartbeat_is_accepted(api: Api, agent: AgentSim) -> None:
    code, body = _post_signed(api, agent.identity, "/v1/agent/heartbeat", b"", api.clock.now())
    assert code == 200
    assert body["leases"] == []


def test_unsigned_request_is_refused(api: Api, agent: AgentSim) -> None:
    r = api.http.post("/v1/agent/heartbeat", headers={"X-Gpupool-Worker": agent.worker_id})
    assert r.status_code == 401
    assert "unsigned" in r.json()["message"]


def test_request_signed_by_another_key_is_refused(api: Api, agent: AgentSim) -> None:
    code, body = _post_signed(
        api, agent.identity, "/v1/agent/heartbeat", b"", api.clock.now(), signer=Identity.generate()
    )
    assert code == 401
    assert body["message"] == "bad signature"


def test_tampered_body_is_refused(api: Api, agent: AgentSim) -> None:
    lease_path = "/v1/agent/leases/l-x/members"
    signed = json.dumps({"device_id": agent.device(0), "state": "ready"}).encode()
    sent = json.dumps({"device_id": agent.device(1), "state": "ready"}).encode()
    code, body = _post_signed(
        api, agent.identity, lease_path, signed, api.clock.now(), sent_body=sent
    )
    assert code == 401
    assert body["message"] == "bad signature"


@pytest.mark.parametrize("skew", [-31.0, 31.0, 3600.0])
def test_timestamp_off_by_more_than_30_seconds_is_refused(
    api: Api, agent: AgentSim, skew: float
) -> None:
    code, body = _post_signed(
        api, agent.identity, "/v1/agent/heartbeat", b"", api.clock.now() + skew
    )
    assert code == 401
    assert "clock" in body["message"]


def test_timestamp_within_30_seconds_is_accepted(api: Api, agent: AgentSim) -> None:
    code, _ = _post_signed(api, agent.identity, "/v1/agent/heartbeat", b"", api.clock.now() - 29)
    assert code == 200


def test_replayed_request_is_refused(api: Api, agent: AgentSim) -> None:
    nonce = "f" * 32
    first, _ = _post_signed(
        api, agent.identity, "/v1/agent/heartbeat", b"", api.clock.now(), nonce=nonce
    )
    again, body = _post_signed(
        api, agent.identity, "/v1/agent/heartbeat", b"", api.clock.now(), nonce=nonce
    )
    assert (first, again) == (200, 401)
    assert "replayed" in body["message"]


def test_nonce_is_remembered_for_the_whole_skew_window(api: Api, agent: AgentSim) -> None:
    nonce = "e" * 32
    sent_at = api.clock.now()
    assert (
        _post_signed(api, agent.identity, "/v1/agent/heartbeat", b"", sent_at, nonce=nonce)[0]
        == 200
    )
    api.clock.advance(25)
    api.tick()  # the ticker forgets nonces, but only those older than the window
    assert (
        _post_signed(api, agent.identity, "/v1/agent/heartbeat", b"", sent_at, nonce=nonce)[0]
        == 401
    )


def test_unknown_worker_is_refused(api: Api) -> None:
    stranger = Identity.generate()
    code, body = _post_signed(api, stranger, "/v1/agent/heartbeat", b"", api.clock.now())
    assert code == 401
    assert "unknown worker" in body["message"]


def test_registration_needs_a_supplier_key(api: Api) -> None:
    with pytest.raises(LinkError) as no_key:
        api.agent("").register()
    assert no_key.value.status == 401
    with pytest.raises(LinkError) as renter:
        api.agent(api.account("renter")).register()
    assert renter.value.status == 403


def test_worker_id_is_derived_from_the_public_key(api: Api) -> None:
    sim = api.agent(api.account("supplier"))
    other = Identity.generate()
    with pytest.raises(LinkError) as exc:
        sim.register(public_key=other.public_key_b64)  # signed by sim, claims other's key
    assert exc.value.status == 401


def test_a_worker_cannot_move_to_another_supplier(api: Api, agent: AgentSim) -> None:
    thief = api.agent(api.account("supplier"), identity=agent.identity)
    with pytest.raises(LinkError) as exc:
        thief.register()
    assert exc.value.status == 403


def test_reregistering_keeps_the_worker_id(api: Api, agent: AgentSim) -> None:
    again = agent.register(devices=3)
    assert again.id == agent.worker_id
    assert len(again.devices) == 3
