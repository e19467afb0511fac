"""Small file helpers of the agent's state folder."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Any, indent: int | None = None) -> None:
    """Replace `path` with `data` as JSON atomically: a reader (or a restart after a crash)
    sees the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent))
    os.replace(tmp, path)


def shred(path: Path) -> None:
    """Overwrite a small secret file with zeros, then delete it; a no-op if it is gone. On
    copy-on-write or flash storage the old blocks may survive, so a secret's safety must not
    rest on this alone."""
    with contextlib.suppress(FileNotFoundError):
        path.chmod(0o600)
        size = path.stat().st_size
        with path.open("r+b") as f:
            f.write(b"\0" * size)
            f.flush()
            os.fsync(f.fileno())
        path.unlink()
