"""Run the `gpupool` command as a user would: a fresh interpreter, captured output."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile

# Coordinator keys are pinned per test, never in the user's own config folder: test
# coordinators come and go with fresh keys, and a later one may get an earlier one's port.
_PINS = tempfile.TemporaryDirectory(prefix="gpupool-test-pins-")


def this_tests_pin_file() -> str:
    """The pin file of the running test (one per test id, shared by its CLI calls)."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    return os.path.join(_PINS.name, hashlib.sha256(test.encode()).hexdigest()[:16])


def gpupool(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpupool", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={
            **os.environ,
            "GPUPOOL_KEY": "",
            "COLUMNS": "120",
            "GPUPOOL_KNOWN_COORDINATORS": this_tests_pin_file(),
            **(env or {}),
        },
    )
