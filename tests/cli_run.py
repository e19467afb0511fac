"""Run the `gpupool` command as a user would: a fresh interpreter, captured output."""

from __future__ import annotations

import os
import subprocess
import sys


def gpupool(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpupool", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "GPUPOOL_KEY": "", "COLUMNS": "120", **(env or {})},
    )
