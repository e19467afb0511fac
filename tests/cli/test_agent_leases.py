"""`gpupool agent leases`: what a supplier's agent runs, read from its state folder."""

from __future__ import annotations

import json
from pathlib import Path

from gpupool.agent.state import AgentState, LeaseRecord
from gpupool.crypto.identity import load_or_create
from tests.cli_run import gpupool


def test_it_lists_each_lease_with_its_sandbox_devices_and_disk(tmp_path: Path) -> None:
    identity, _ = load_or_create(tmp_path / "identity.key")
    AgentState(tmp_path / "leases.json", {"l-one": LeaseRecord("/cg/l-one", ["w:cpu0"])}).save()
    (tmp_path / "leases" / "l-one" / "disk.cipher").mkdir(parents=True)
    done = gpupool("agent", "leases", "--state-dir", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    [lease] = json.loads(done.stdout)
    assert lease["lease_id"] == "l-one" and lease["worker_id"] == identity.worker_id
    assert lease["sandbox"] == "/cg/l-one" and lease["devices"] == ["w:cpu0"]
    assert lease["disk"]["encrypted"] is True and lease["disk"]["mounted"] is False
    assert lease["disk"]["ciphertext"] == str(tmp_path / "leases" / "l-one" / "disk.cipher")
    text = gpupool("agent", "leases", "--state-dir", str(tmp_path))
    assert "l-one: sandbox /cg/l-one, devices w:cpu0; disk encrypted, not mounted" in text.stdout


def test_a_missing_state_folder_is_a_clear_error(tmp_path: Path) -> None:
    done = gpupool("agent", "leases", "--state-dir", str(tmp_path / "nope"))
    assert done.returncode == 2
    assert "no agent state folder" in done.stderr and "Traceback" not in done.stderr
