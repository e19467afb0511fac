"""`gpupool launch`'s task files: what is accepted, what is refused before anything is
booked, and how the working directory is laid out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpupool.cli.common import CliError
from gpupool.cli.taskfile import load_task, stage
from gpupool.localnet.network import free_port
from tests.cli_run import gpupool

GOOD = """\
name: demo
resources: {devices: 2, kind: cpu, max_price: 0.10, hours: 2, regions: [eu-central]}
workdir: ./src
file_mounts:
  data/sites.csv: ./sites.csv
  conf: ./conf
envs: {EPOCHS: 3, MODE: fast}
setup: echo setup
run: python train.py
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "task.yaml"
    path.write_text(text)
    return path


def test_a_task_file_becomes_the_booking_cluster_create_would_make(tmp_path: Path) -> None:
    task = load_task(_write(tmp_path, GOOD))
    booking = task.resources.booking()
    assert booking["devices"] == 2 and booking["kind"] == "cpu" and booking["hours"] == 2
    assert booking["max_price_per_hour"] == "0.1"  # YAML's float, as the decimal it reads
    assert booking["regions"] == ["eu-central"]
    assert booking["image"] is None and booking["egress"] is None  # unset, not False
    assert task.envs == {"EPOCHS": "3", "MODE": "fast"}
    quoted = load_task(_write(tmp_path, GOOD.replace("max_price: 0.10", "max_price: '0.10'")))
    assert quoted.resources.max_price == "0.10"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (("setup:", "setpu:"), "setpu: Extra inputs are not permitted"),
        (("run: python train.py", ""), "run: Field required"),
        (("max_price: 0.10", "max_price: free"), "'free' is not a decimal amount"),
        (("max_price: 0.10", "max_price: -1"), "must be a positive amount"),
        (("devices: 2", "devices: 0"), "resources.devices"),
        (("kind: cpu", "kind: tpu"), "resources.kind"),
        (("data/sites.csv:", "/etc/sites.csv:"), "not absolute or with '..'"),
        (("data/sites.csv:", "../sites.csv:"), "not absolute or with '..'"),
        (("MODE: fast", "MODE-X: fast"), "'MODE-X' is not an environment variable name"),
    ],
)
def test_a_wrong_task_file_is_refused_naming_the_key(
    tmp_path: Path, change: tuple[str, str], reason: str
) -> None:
    with pytest.raises(CliError, match=r"task\.yaml") as refused:
        load_task(_write(tmp_path, GOOD.replace(*change)))
    assert reason in str(refused.value)
    assert refused.value.exit_code == 2


def test_not_yaml_or_not_a_mapping_or_missing_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="is not YAML"):
        load_task(_write(tmp_path, "run: [unclosed\n"))
    with pytest.raises(CliError, match="a task file is a mapping"):
        load_task(_write(tmp_path, "- run\n"))
    with pytest.raises(CliError, match="cannot read"):
        load_task(tmp_path / "absent.yaml")


def test_the_working_directory_holds_the_workdir_and_each_mount(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text("print(1)\n")
    (tmp_path / "sites.csv").write_text("a,b\n")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "x.toml").write_text("x = 1\n")
    task = load_task(_write(tmp_path, GOOD))
    into = tmp_path / "staged"
    into.mkdir()
    stage(task, tmp_path, into)
    files = sorted(str(p.relative_to(into)) for p in into.rglob("*") if p.is_file())
    assert files == ["conf/x.toml", "data/sites.csv", "train.py"]
    (tmp_path / "sites.csv").unlink()
    with pytest.raises(CliError, match="does not exist"):
        stage(task, tmp_path, tmp_path / "again")


def test_launch_refuses_a_bad_task_file_before_reaching_any_coordinator(tmp_path: Path) -> None:
    env = {"GPUPOOL_KEY": "gpr_x", "GPUPOOL_COORDINATOR": f"http://127.0.0.1:{free_port()}"}
    path = _write(tmp_path, GOOD.replace("run: python train.py", "run: ''"))
    refused = gpupool("launch", str(path), "--json", env=env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    body = json.loads(refused.stdout)
    assert body["error"] == "usage" and "run:" in body["message"]
    # a good file, but nothing to reach: the coordinator's absence, not a traceback
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text("print(1)\n")
    (tmp_path / "sites.csv").write_text("a,b\n")
    (tmp_path / "conf").mkdir()
    unreachable = gpupool("launch", str(_write(tmp_path, GOOD)), env=env)
    assert unreachable.returncode == 1 and "cannot reach the coordinator" in unreachable.stderr
