"""A coordinator process that settles one lease and, at the named hook point inside the
settlement's transaction, says so in a marker file and stops there (for its parent to
kill with SIGKILL). Used by test_ledger_crash.py.

    python -m tests.integration.ledger_crash_child DB_URL LEASE_ID MARKER POINT|-
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from gpupool.coordinator.storage.database import SqlDatabase
from gpupool.services.ports import SystemClock
from gpupool.services.settlement import Settlement


def main(url: str, lease_id: str, marker: str, point: str) -> None:
    def hook(at: str) -> None:
        if at == point:
            Path(marker).write_text(at)
            time.sleep(120)  # the parent kills us here, mid-transaction

    db = SqlDatabase(url)
    posted = Settlement(db, SystemClock(), 100.0, hook=hook).settle(lease_id)
    print(posted.entry.seq, posted.fresh)


if __name__ == "__main__":
    main(*sys.argv[1:5])
