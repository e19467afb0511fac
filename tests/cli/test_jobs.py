"""`gpupool job`: clear refusals without a coordinator, and working directories packed the
way Ray unpacks them."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest

from gpupool.cli.common import CliError
from gpupool.cli.jobs import MAX_PACKAGE_BYTES, package_directory
from gpupool.localnet.network import free_port
from tests.cli_run import gpupool


def test_a_working_directory_is_zipped_without_its_folder_and_named_by_content(
    tmp_path: Path,
) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "train.py").write_text("print('hi')\n")
    (tmp_path / "pkg" / "data.txt").write_text("1 2 3\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.pyc").write_bytes(b"\0")
    name, data = package_directory(tmp_path)
    assert name.startswith("_ray_pkg_") and name.endswith(".zip")
    assert sorted(zipfile.ZipFile(io.BytesIO(data)).namelist()) == ["pkg/data.txt", "train.py"]
    assert package_directory(tmp_path) == (name, data)  # same content, same package
    (tmp_path / "train.py").write_text("print('changed')\n")
    assert package_directory(tmp_path)[0] != name


def test_too_large_or_missing_working_directories_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="not a directory"):
        package_directory(tmp_path / "absent")
    (tmp_path / "big.bin").write_bytes(os.urandom(MAX_PACKAGE_BYTES + 1))
    with pytest.raises(CliError, match="limit is 1 MiB"):
        package_directory(tmp_path)


def test_job_commands_fail_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    env = {"GPUPOOL_KEY": "gpr_x", "GPUPOOL_COORDINATOR": f"http://127.0.0.1:{free_port()}"}
    bad_env = gpupool("job", "submit", "c-x", "--env", "NOVALUE", "--", "echo", env=env)
    assert bad_env.returncode == 2 and "NAME=VALUE" in bad_env.stderr
    unreachable = gpupool("job", "list", "c-x", env=env)
    assert unreachable.returncode == 1 and "cannot reach the coordinator" in unreachable.stderr
    for result in (bad_env, unreachable):
        assert "Traceback" not in result.stderr
