"""Proof of Time-Lock through the API: the agent's real recorder posts signed, chained
sample batches; the coordinator accepts or refuses each with a reason; a certificate comes
at lease end, and its export verifies offline until a byte changes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gpupool.agent.proof.recorder import ChainStore, Head, Recorder, seal
from gpupool.crypto.identity import Identity, b64
from gpupool.crypto.timelock import batch_message
from gpupool.services.proof_files import verify_folder, write_folder
from gpupool.wire import models as w
from tests.api.conftest import HOUR, AgentSim, Api


@dataclass
class Seen:
    """One interval's observation of one device, as the guard would report it."""

    device_id: str
    lease_id: str
    utilization: int = 40
    violations: list[dict[str, Any]] = field(default_factory=list)

    def sample_fields(self) -> dict[str, Any]:
        return {
            "processes": [{"pid": 4242, "name": "python", "owner": "lease"}],
            "utilization_pct": self.utilization,
            "memory_mb": 300,
            "power_mw": None,
            "temperature_c": None,
            "violations": self.violations,
        }


def violation(api: Api) -> dict[str, Any]:
    """A foreign process the guard killed 3 ms after it appeared, now."""
    now = round(api.clock.now() * 1000)
    return {
        "pid": 999,
        "exe": "/usr/bin/sleep",
        "cmdline": "sleep 600",
        "first_seen_ms": now,
        "killed_at_ms": now + 3,
    }


@dataclass
class Leased:
    sim: AgentSim
    lease_id: str
    cluster_id: str
    device_id: str
    recorder: Recorder


@pytest.fixture
def renter(api: Api) -> str:
    return api.account("renter", "renter")


def agent_recorder(api: Api, sim: AgentSim, chains: Path) -> Recorder:
    """The agent's own recorder on `sim`'s link and key, on the test's clock, with a beacon."""
    recorder = Recorder(
        sim.link, sim.identity, ChainStore(chains), now_ms=lambda: round(api.clock.now() * 1000)
    )
    recorder.refresh_beacon()
    return recorder


def _lease(api: Api, renter: str, sim: AgentSim, tmp_path: Path, devices: int = 1) -> Leased:
    r = api.book(renter, devices=devices)
    assert r.status_code == 201, r.text
    cluster = r.json()
    for lease in sim.link.heartbeat().leases:
        for device in lease.local_devices:
            for state in ("provisioning", "ready"):
                sim.link.report(lease.lease_id, device, state)
    recorder = agent_recorder(api, sim, tmp_path / f"chains-{cluster['id']}.json")
    return Leased(
        sim, cluster["lease_id"], cluster["id"], cluster["members"][0]["device_id"], recorder
    )


def _run(api: Api, leased: Leased, seconds: int, **seen: Any) -> None:
    for second in range(seconds):
        leased.recorder.record([Seen(leased.device_id, leased.lease_id, **seen)])
        api.clock.advance(1)
        if second % 10 == 9:
            leased.recorder.flush()
    leased.recorder.flush()


def _end(api: Api, renter: str, leased: Leased) -> dict[str, Any]:
    r = api.http.post(f"/v1/clusters/{leased.cluster_id}/terminate", headers=api.as_key(renter))
    assert r.status_code == 200, r.text
    leased.sim.link.report(leased.lease_id, leased.device_id, "released")
    api.tick()
    proof = api.http.get(f"/v1/clusters/{leased.cluster_id}/proof", headers=api.as_key(renter))
    assert proof.status_code == 200, proof.text
    body: dict[str, Any] = proof.json()["body"]
    return body


@pytest.fixture
def sim(api: Api) -> AgentSim:
    agent = api.agent(api.account("supplier", "s"))
    agent.register(devices=2)
    return agent


def test_a_clean_lease_passes_with_full_coverage(
    api: Api, renter: str, sim: AgentSim, tmp_path: Path
) -> None:
    leased = _lease(api, renter, sim, tmp_path)
    _run(api, leased, int(HOUR) - 1)
    body = _end(api, renter, leased)
    assert body["verdict"] == "pass", body["reasons"]
    assert body["coverage_ppm"] >= 990_000
    assert body["violations"] == 0


def test_a_violation_shows_in_the_certificate(
    api: Api, renter: str, sim: AgentSim, tmp_path: Path
) -> None:
    leased = _lease(api, renter, sim, tmp_path)
    seen = Seen(leased.device_id, leased.lease_id, violations=[violation(api)])
    leased.recorder.record([seen])
    _run(api, leased, 30)
    body = _end(api, renter, leased)
    assert body["violations"] == 1
    assert body["verdict"] != "pass"


def test_the_certificate_is_refused_before_the_lease_ends(
    api: Api, renter: str, sim: AgentSim, tmp_path: Path
) -> None:
    leased = _lease(api, renter, sim, tmp_path)
    r = api.http.get(f"/v1/clusters/{leased.cluster_id}/proof", headers=api.as_key(renter))
    assert r.status_code == 409
    other = api.account("renter", "other")
    r = api.http.get(f"/v1/clusters/{leased.cluster_id}/proof", headers=api.as_key(other))
    assert r.status_code == 404


def _post(
    leased: Leased,
    samples: list[dict[str, Any]],
    signer: Identity | None = None,
    lease_id: str | None = None,
) -> w.BatchResultOut:
    last = samples[-1]
    from gpupool.crypto.timelock import sample_hash

    lease_id = lease_id or leased.lease_id
    signature = (signer or leased.sim.identity).sign(
        batch_message(lease_id, leased.device_id, last["seq"], sample_hash(last))
    )
    batch = w.SampleBatchIn(
        lease_id=lease_id, device_id=leased.device_id, samples=samples, signature=b64(signature)
    )
    return leased.sim.link.send_samples(w.SamplesIn(batches=[batch])).results[0]


def _unsealed(
    api: Api, leased: Leased, count: int = 3, beacon_shift: int = 0
) -> list[dict[str, Any]]:
    timelock = api.services.timelock
    number = round(api.clock.now() * 1000) // timelock.epoch_ms + beacon_shift
    rows = []
    for _ in range(count):
        api.clock.advance(1)
        rows.append(
            {
                "lease": leased.lease_id,
                "device": leased.device_id,
                "time_ms": round(api.clock.now() * 1000),
                "beacon": number,
                "beacon_value": timelock.beacon_value(number),
                **Seen(leased.device_id, leased.lease_id).sample_fields(),
            }
        )
    return rows


def test_forged_broken_stale_future_and_replayed_batches_are_refused_with_a_reason(
    api: Api, renter: str, sim: AgentSim, tmp_path: Path
) -> None:
    leased = _lease(api, renter, sim, tmp_path)
    good, head = seal(_unsealed(api, leased), None)
    assert _post(leased, good).refused is None

    forged, _ = seal(_unsealed(api, leased), head)
    assert _post(leased, forged, signer=Identity.generate()).refused == "bad-signature"

    broken, _ = seal(_unsealed(api, leased), Head(head.seq + 5, head.hash))
    assert _post(leased, broken).refused == "chain-broken"

    api.clock.advance(30)  # three epochs later
    stale, _ = seal(_unsealed(api, leased, beacon_shift=-3), head)
    assert _post(leased, stale).refused == "beacon-stale"
    future, _ = seal(_unsealed(api, leased, beacon_shift=+1), head)
    assert _post(leased, future).refused == "beacon-future"

    # samples of this lease replayed as another lease's, on the same worker
    other = api.book(renter, devices=1).json()
    replay = _post(leased, good, lease_id=other["lease_id"])
    assert replay.refused in ("wrong-lease", "not-a-member")
    fresh, _ = seal(_unsealed(api, leased), head)
    assert _post(leased, fresh).refused is None  # the chain itself is intact


def _signed_samples_request(
    leased: Leased, samples: list[dict[str, Any]]
) -> tuple[bytes, dict[str, str]]:
    from gpupool.crypto.requests import sign_request
    from gpupool.crypto.timelock import sample_hash

    last = samples[-1]
    signature = leased.sim.identity.sign(
        batch_message(leased.lease_id, leased.device_id, last["seq"], sample_hash(last))
    )
    body = json.dumps(
        {
            "batches": [
                {
                    "lease_id": leased.lease_id,
                    "device_id": leased.device_id,
                    "samples": samples,
                    "signature": b64(signature),
                }
            ]
        }
    ).encode()
    now = leased.sim.api.clock.now()
    headers = sign_request(leased.sim.identity, "POST", "/v1/agent/samples", body, now).as_dict()
    return body, {**headers, "Content-Type": "application/json"}


def _stored_samples(api: Api, leased: Leased) -> int:
    with api.db.transaction() as tx:
        return len(tx.proofs.samples(leased.lease_id))


def test_a_replayed_sample_request_is_refused_and_stores_nothing_twice(
    api: Api, renter: str, sim: AgentSim, tmp_path: Path
) -> None:
    leased = _lease(api, renter, sim, tmp_path)
    samples, _ = seal(_unsealed(api, leased), None)
    body, headers = _signed_samples_request(leased, samples)
    first = api.http.post("/v1/agent/samples", content=body, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["results"][0]["accepted"] == 3
    again = api.http.post("/v1/agent/samples", content=body, headers=headers)
    assert again.status_code == 401
    assert "replayed" in again.json()["message"]
    assert _stored_samples(api, leased) == 3


def test_a_malformed_sample_request_is_refused_after_its_signature_is_checked(
    api: Api, renter: str, sim: AgentSim, tmp_path: Path
) -> None:
    from gpupool.crypto.requests import sign_request

    leased = _lease(api, renter, sim, tmp_path)
    _, headers = _signed_samples_request(leased, seal(_unsealed(api, leased), None)[0])
    wrong = json.dumps({"batches": "none"}).encode()
    r = api.http.post("/v1/agent/samples", content=wrong, headers=headers)
    assert r.status_code == 401  # signed over other bytes: the signature comes first

    headers = sign_request(sim.identity, "POST", "/v1/agent/samples", wrong, api.clock.now())
    r = api.http.post(
        "/v1/agent/samples",
        content=wrong,
        headers={**headers.as_dict(), "Content-Type": "application/json"},
    )
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_request"
    assert r.json()["problems"][0]["loc"][:2] == ["body", "batches"]
    assert _stored_samples(api, leased) == 0


def _export(api: Api, renter: str, leased: Leased, folder: Path) -> Path:
    return export_folder(api, renter, leased.cluster_id, folder)


def export_folder(api: Api, renter: str, cluster_id: str, folder: Path) -> Path:
    """Fetch the cluster's proof as its renter and write it as `gpupool proof export` does."""
    r = api.http.get(f"/v1/clusters/{cluster_id}/proof/export", headers=api.as_key(renter))
    assert r.status_code == 200, r.text
    bundle = w.ProofExportOut.model_validate(r.json())
    write_folder(
        folder,
        bundle.certificate.model_dump(mode="json"),
        bundle.samples,
        [b.model_dump(mode="json") for b in bundle.batches],
        bundle.worker_keys,
    )
    return folder


def test_the_export_verifies_offline_and_any_tampering_fails(
    api: Api, renter: str, sim: AgentSim, tmp_path: Path
) -> None:
    leased = _lease(api, renter, sim, tmp_path)
    _run(api, leased, 25)
    _end(api, renter, leased)
    folder = _export(api, renter, leased, tmp_path / "proof")
    assert verify_folder(folder) == []

    samples = folder / "samples.jsonl"
    original = samples.read_text()
    samples.write_text(original.replace('"utilization_pct":40', '"utilization_pct":41', 1))
    assert verify_folder(folder) != []
    samples.write_text(original)

    cert_file = folder / "certificate.json"
    cert = json.loads(cert_file.read_text())
    cert["body"]["coverage_ppm"] = 1_000_000 if cert["body"]["coverage_ppm"] != 1_000_000 else 1
    cert_file.write_text(json.dumps(cert))
    assert verify_folder(folder) != []


def test_flipping_any_byte_of_an_export_makes_verification_fail(
    api: Api, renter: str, sim: AgentSim, tmp_path: Path
) -> None:
    import random

    from gpupool.services.proof_files import ProofFolderError

    leased = _lease(api, renter, sim, tmp_path)
    _run(api, leased, 12)
    _end(api, renter, leased)
    folder = _export(api, renter, leased, tmp_path / "proof")
    assert verify_folder(folder) == []
    rng = random.Random(7)
    for name in ("certificate.json", "samples.jsonl", "batches.json", "keys.json"):
        path = folder / name
        original = path.read_bytes()
        for position in rng.sample(range(len(original)), 40):
            tampered = bytearray(original)
            tampered[position] = (tampered[position] + rng.randrange(1, 256)) % 256
            path.write_bytes(bytes(tampered))
            try:
                problems = verify_folder(folder)
            except ProofFolderError:
                continue  # unreadable counts as failing
            assert problems, f"{name} byte {position} changed and the proof still verified"
        path.write_bytes(original)
    assert verify_folder(folder) == []
