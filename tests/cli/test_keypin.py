"""The pinned coordinator key, through the `gpupool` command against a real coordinator on a
loopback socket: a proof re-signed with another key fails `proof verify`, a changed key is
refused at the next contact until it is re-pinned on purpose, and the pin file is 0600.

The coordinator is the API tier's app (real database, manual clock); the lease and its
samples come from the agent's real recorder through the signed link (tests/api)."""

from __future__ import annotations

import dataclasses
import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from gpupool.coordinator.api.app import create_app
from gpupool.crypto.canonical import canonical_json
from gpupool.crypto.identity import Identity, b64, load_or_create
from gpupool.crypto.timelock import certificate_message
from gpupool.services.proof_files import verify_folder
from tests.api.conftest import Api, api, live_server  # noqa: F401  (api: the fixture)
from tests.api.test_timelock import _end, _lease, _run
from tests.cli_run import gpupool


class Switch:
    """One address whose coordinator can be replaced (a reinstall, or an impostor), and a
    record of every path it was asked for."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)


@dataclass
class World:
    api: Api
    switch: Switch
    url: str
    renter: str
    lease_id: str
    pins: Path

    def cli(self, *args: str, pins: Path | None = None) -> Any:
        env = {
            "GPUPOOL_COORDINATOR": self.url,
            "GPUPOOL_KEY": self.renter,
            "GPUPOOL_KNOWN_COORDINATORS": str(pins or self.pins),
        }
        result = gpupool(*args, env=env)
        assert "Traceback" not in result.stdout + result.stderr
        return result

    @property
    def key(self) -> str:
        return self.api.services.timelock.public_key

    def pinned(self) -> str:
        [line] = [x for x in self.pins.read_text().splitlines() if not x.startswith("#")]
        return line.split()[1]


@pytest.fixture
def world(api: Api, tmp_path: Path) -> Iterator[World]:  # noqa: F811
    renter = api.account("renter", "renter")
    sim = api.agent(api.account("supplier", "s"))
    sim.register(devices=1)
    leased = _lease(api, renter, sim, tmp_path)
    _run(api, leased, 12)
    _end(api, renter, leased)
    switch = Switch(api.http.app)
    with live_server(switch, lifespan="off") as url:
        yield World(api, switch, url, renter, leased.lease_id, tmp_path / "cfg" / "pins")


def _resign(folder: Path, attacker: Identity) -> None:
    """What the attacker showed: the same consistent body, signed with their own key."""
    path = folder / "certificate.json"
    cert = json.loads(path.read_bytes())
    cert["coordinator_key"] = attacker.public_key_b64
    cert["signature"] = b64(attacker.sign(certificate_message(cert["body"])))
    path.write_bytes(canonical_json(cert) + b"\n")


def test_a_proof_resigned_with_another_key_fails_verify_naming_the_pinned_key(
    world: World, tmp_path: Path
) -> None:
    folder = tmp_path / "proof"
    exported = world.cli("proof", "export", world.lease_id, str(folder))
    assert exported.returncode == 0, exported.stderr
    assert world.pinned() == world.key  # the export was the first contact, and says so
    assert f"pinned the coordinator key {world.key}" in exported.stderr
    assert stat.S_IMODE(world.pins.stat().st_mode) == 0o600

    verified = world.cli("proof", "verify", str(folder), "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert report["verified"] is True and report["coordinator_key"] == world.key
    assert report["key_source"].startswith("pinned for ")

    attacker = Identity.generate()
    _resign(folder, attacker)
    assert verify_folder(folder) == []  # consistent: only the key gives it away

    refused = world.cli("proof", "verify", str(folder))
    assert refused.returncode == 1
    assert "verified" not in refused.stdout
    assert f"signed by the coordinator key {attacker.public_key_b64}" in refused.stderr
    assert f"not the expected {world.key}" in refused.stderr

    given = world.cli("proof", "verify", str(folder), "--coordinator-key", world.key, "--json")
    assert given.returncode == 1 and json.loads(given.stdout)["verified"] is False


def test_every_resigned_proof_is_caught_against_the_pin_and_none_without_it(
    world: World, tmp_path: Path
) -> None:
    """The detection rate, measured: 50 attackers' keys, each re-signing the same proof."""
    folder = tmp_path / "proof"
    assert world.cli("proof", "export", world.lease_id, str(folder)).returncode == 0
    caught = unnoticed_without_pin = 0
    for _ in range(50):
        _resign(folder, Identity.generate())
        caught += bool(verify_folder(folder, world.key))
        unnoticed_without_pin += verify_folder(folder) == []
    assert (caught, unnoticed_without_pin) == (50, 50)


def test_with_no_key_given_and_none_pinned_verify_refuses_and_says_how(
    world: World, tmp_path: Path
) -> None:
    folder = tmp_path / "proof"
    assert world.cli("proof", "export", world.lease_id, str(folder)).returncode == 0
    refused = world.cli("proof", "verify", str(folder), pins=tmp_path / "never-pinned")
    assert refused.returncode == 2
    assert "no coordinator key to verify against" in refused.stderr
    assert "gpupool coordinator pin" in refused.stderr and "--coordinator-key" in refused.stderr
    assert "verified" not in refused.stdout


def test_a_changed_coordinator_key_is_refused_at_the_next_contact_until_repinned(
    world: World,
) -> None:
    first = world.cli("cluster", "list", "--json")
    assert first.returncode == 0, first.stderr
    assert world.switch.paths == ["/v1/clusters"]  # pinning asked for nothing more
    assert world.pinned() == world.key

    new = Identity.generate()
    settings = dataclasses.replace(world.api.services.settings, signing_key=new.private_bytes())
    world.switch.app = create_app(settings, world.api.db, clock=world.api.clock, run_ticker=False)
    before = world.pins.read_bytes()

    refused = world.cli("cluster", "list")
    assert refused.returncode == 1
    [line] = refused.stderr.strip().splitlines()
    assert world.key in line and new.public_key_b64 in line
    assert "gpupool coordinator pin --replace" in line
    assert world.pins.read_bytes() == before

    shown = world.cli("coordinator", "key", "--json")
    assert json.loads(shown.stdout) | {"coordinator": None} == {
        "coordinator": None,
        "public_key": new.public_key_b64,
        "source": "api",
        "pinned": world.key,
    }
    assert world.cli("coordinator", "pin").returncode == 1  # a change needs --replace
    wrong = world.cli("coordinator", "pin", "--replace", "--expect", world.key)
    assert wrong.returncode == 1 and "nothing was pinned" in wrong.stderr
    assert world.pins.read_bytes() == before

    repinned = world.cli("coordinator", "pin", "--replace", "--json")
    assert repinned.returncode == 0, repinned.stderr
    assert json.loads(repinned.stdout)["replaced"] == world.key
    assert world.pinned() == new.public_key_b64
    assert stat.S_IMODE(world.pins.stat().st_mode) == 0o600
    after = world.cli("cluster", "list")
    assert after.returncode == 0 and "pinned" not in after.stderr


def test_coordinator_key_reads_the_state_folder_on_the_coordinator_host(tmp_path: Path) -> None:
    identity, _ = load_or_create(tmp_path / "state" / "coordinator.key")
    env = {"GPUPOOL_KNOWN_COORDINATORS": str(tmp_path / "pins")}
    shown = gpupool("coordinator", "key", "--state-dir", str(tmp_path / "state"), env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == identity.public_key_b64 + "\n"
    assert "not pinned" in shown.stderr

    missing = gpupool("coordinator", "key", "--state-dir", str(tmp_path / "nowhere"), env=env)
    assert missing.returncode == 2 and "no coordinator key in" in missing.stderr
    assert "Traceback" not in missing.stderr
