"""`gpupool launch` end to end in the demo's local network: a task file books three devices
(two agents of two devices each: two Ray nodes, one per worker), its setup runs on both, its
run finds setup's work, the file mounts and the envs, the logs stream to the renter, and
`--down` ends the cluster."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpupool.client import Client
from gpupool.localnet import LocalNetwork
from tests.cli_run import gpupool

pytestmark = pytest.mark.integration

TASK = """\
name: launch-test
resources: {devices: 3, kind: cpu, max_price: 1, hours: 1}
workdir: ./project
file_mounts:
  data/input.txt: ./input.txt
envs: {GREETING: hello}
setup: echo "set up by $(id -u)" > setup-done.txt && echo SETUP-RAN
run: |
  cat setup-done.txt
  python count.py data/input.txt
  echo "GREETING=$GREETING SPEED=$SPEED"
"""


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    with LocalNetwork(tmp_path_factory.mktemp("launch"), agents=2, heartbeat_seconds=1.0) as n:
        yield n


def _task(tmp_path: Path) -> Path:
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "count.py").write_text(
        "import sys\nprint('WORDS', len(open(sys.argv[1]).read().split()))\n"
    )
    (tmp_path / "input.txt").write_text("one two three four five\n")
    path = tmp_path / "task.yaml"
    path.write_text(TASK)
    return path


def test_a_task_file_runs_end_to_end_and_down_ends_its_cluster(
    network: LocalNetwork, tmp_path: Path
) -> None:
    key = network.create_renter("launcher")
    env = {"GPUPOOL_COORDINATOR": network.url, "GPUPOOL_KEY": key}
    task = _task(tmp_path)

    shown = gpupool("launch", str(task), "--env", "SPEED=9", "--down", env=env, timeout=280)
    assert shown.returncode == 0, shown.stderr + shown.stdout
    # setup ran once on each of the two Ray nodes (not once per device), each exiting 0
    summary = json.loads(re.search(r"^EVERY_NODE (.*)$", shown.stdout, re.M).group(1))  # type: ignore[union-attr]
    assert len(summary) == 2 and set(summary.values()) == {0}
    # (whole lines: Ray also echoes the entrypoint, which names SETUP-RAN)
    assert len(re.findall(r"^SETUP-RAN$", shown.stdout, re.M)) == 2
    # run found setup's file, the mount and the envs (the task file's and --env's)
    assert re.search(r"^set up by \d+$", shown.stdout, re.M)
    assert "WORDS 5" in shown.stdout
    assert "GREETING=hello SPEED=9" in shown.stdout
    booked = re.search(r"booked (c-\S+) for launch-test", shown.stderr)
    assert booked and "terminated" in shown.stderr
    with Client(network.url, key) as gp:
        cluster = gp.cluster(booked.group(1))
    assert cluster.state == "ended"


def test_a_failing_run_exits_non_zero_reports_json_and_still_ends_the_cluster(
    network: LocalNetwork, tmp_path: Path
) -> None:
    key = network.create_renter("failer")
    env = {"GPUPOOL_COORDINATOR": network.url, "GPUPOOL_KEY": key}
    task = tmp_path / "task.yaml"
    task.write_text("resources: {devices: 1, kind: cpu, max_price: 1}\nrun: echo DOOMED; exit 3\n")
    failed = gpupool("launch", str(task), "--down", "--json", env=env, timeout=200)
    assert failed.returncode == 1, failed.stderr
    result = json.loads(failed.stdout)  # one object: the logs went nowhere near stdout
    assert result["run"]["status"] == "FAILED" and result["setup"] is None
    assert result["terminated"] is True
    assert len(result["cluster"]["members"]) == 1 and result["cluster"]["ray"]["nodes"]
    with Client(network.url, key) as gp:
        assert gp.cluster(result["cluster"]["id"]).state == "ended"
