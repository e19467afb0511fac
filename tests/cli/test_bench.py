"""`gpupool bench placement` on the shipped WonderNetwork matrix and on hand-made files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gpupool.services.netsim import MatrixError, load_matrix
from tests.cli_run import gpupool

DATA = Path(__file__).resolve().parents[2] / "data" / "wondernetwork"


def test_bench_placement_reports_a_cluster_with_json_last() -> None:
    result = gpupool(
        "bench", "placement", "--matrix", str(DATA / "rtt-ms.txt"), "--size", "4",
        "--probes", "16", "--seed", "3", "--json", timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report) >= {
        "members", "predicted_diameter_ms", "true_diameter_ms", "elapsed_ms", "probes",
    }  # fmt: skip
    assert len(set(report["members"])) == 4
    matrix = load_matrix(DATA / "rtt-ms.txt")
    members = report["members"]
    true = max(matrix[i, j] for i in members for j in members)
    assert report["true_diameter_ms"] == pytest.approx(true, abs=1e-3)
    assert report["probes"] >= 246 * 16


def test_a_broken_matrix_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "m.txt"
    bad.write_text("0 1\n1 0 3\n")
    result = gpupool("bench", "placement", "--matrix", str(bad), "--size", "2")
    assert result.returncode == 2
    assert "not a square matrix" in result.stderr and "Traceback" not in result.stderr


def test_matrices_read_commas_and_treat_zero_negative_and_nan_as_unmeasured(
    tmp_path: Path,
) -> None:
    f = tmp_path / "m.csv"
    f.write_text("# a comment\n0, 10, 0\n12, 0, nan\n-1, 7, 0\n")
    m = load_matrix(f)
    assert m[0, 1] == m[1, 0] == 11.0  # the mean of both directions
    assert m[1, 2] == m[2, 1] == 7.0  # the one measured direction
    assert np.isnan(m[0, 2]) and np.isnan(m[2, 0])
    f.write_text("0 x\n1 0\n")
    with pytest.raises(MatrixError, match="not a number"):
        load_matrix(f)
