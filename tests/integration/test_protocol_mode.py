"""Protocol mode end to end: real agents run a renter's job in a sandbox and return its
output and sha256; an image is refused where no worker has Docker; a validator's re-run on
another supplier's device confirms the result. All through the `gpupool` command."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpupool.localnet import LocalNetwork
from tests.cli_run import gpupool

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    with LocalNetwork(tmp_path_factory.mktemp("protocol"), agents=2, heartbeat_seconds=1.0) as n:
        yield n


def test_a_job_runs_on_a_worker_and_a_validator_confirms_it(
    net: LocalNetwork, tmp_path: Path
) -> None:
    renter = {"GPUPOOL_COORDINATOR": net.url, "GPUPOOL_KEY": net.create_renter("proto")}
    data = tmp_path / "input.bin"
    data.write_bytes(b"protocol mode input\n" * 100)
    submitted = gpupool(
        "task",
        "submit",
        "--command",
        "sha256sum",
        "--input",
        str(data),
        "--wait",
        "--json",
        env=renter,
        timeout=120,
    )
    assert submitted.returncode == 0, submitted.stderr
    task = json.loads(submitted.stdout)
    assert task["state"] == "done", task
    output = base64.b64decode(task["output_b64"])
    assert output.split()[0].decode() == hashlib.sha256(data.read_bytes()).hexdigest()
    assert task["output_hash"] == hashlib.sha256(output).hexdigest()

    image = gpupool("task", "submit", "--command", "cat", "--image", "alpine:3", env=renter)
    assert image.returncode == 1 and "Docker" in image.stderr and "Traceback" not in image.stderr

    with net.admin() as admin:
        validator_key = admin.create_account("validator", "v").api_key
    validator = {"GPUPOOL_COORDINATOR": net.url, "GPUPOOL_KEY": validator_key}
    checked = gpupool(
        "validator", "run", "--p", "1", "--timeout", "90", "--json", env=validator, timeout=120
    )
    assert checked.returncode == 0, checked.stderr
    result = json.loads(checked.stdout)
    assert result["sampled"] == [task["id"]] and result["confirmed"] == 1
    runs = result["tasks"][0]["runs"]
    assert len({r["worker_id"] for r in runs}) == 2  # the check ran on the other worker
