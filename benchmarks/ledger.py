"""Ledger throughput: journal moves per second when every move locks the one head row.

    .venv/bin/python -m benchmarks.ledger --db sqlite --threads 4 --seconds 5
    .venv/bin/python -m benchmarks.ledger --db postgresql+psycopg://USER@HOST/DB --threads 8

Each thread funds accounts through `Ledger.fund` (one transaction, one entry, one posting
pair, idempotency lookup and hash) for `--seconds`; then the audit re-hashes the journal. On
PostgreSQL the given database's public schema is dropped and rebuilt first. Prints moves/s,
the audit time, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from gpupool.coordinator.storage.database import SqlDatabase
from gpupool.domain.models import Account, Role
from gpupool.services.ledger import Ledger
from gpupool.services.ports import SystemClock


def _database(url: str, folder: Path) -> SqlDatabase:
    if url == "sqlite":
        db = SqlDatabase(f"sqlite:///{folder / 'ledger.db'}")
    else:
        db = SqlDatabase(url)
        with db.engine.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA public CASCADE"))
            conn.execute(sa.text("CREATE SCHEMA public"))
    db.migrate()
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="sqlite")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = _database(args.db, Path(tmp))
        ledger = Ledger(db, SystemClock())
        accounts = [Account(f"a-bench{i}", Role.RENTER, "bench", 0.0) for i in range(64)]
        with db.transaction() as tx:
            for a in accounts:
                tx.accounts.add(a, a.id)
        counts = [0] * args.threads
        stop_at = time.monotonic() + args.seconds

        def work(i: int) -> None:
            while time.monotonic() < stop_at:
                ledger.fund(accounts[(i + counts[i]) % len(accounts)].id, 1)
                counts[i] += 1

        threads = [threading.Thread(target=work, args=(i,)) for i in range(args.threads)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        audit_started = time.monotonic()
        audit = ledger.audit()
        audit_seconds = time.monotonic() - audit_started
        db.close()
    moves = sum(counts)
    backend = "sqlite" if args.db == "sqlite" else "postgresql"
    print(
        f"{backend}, {args.threads} threads, {elapsed:.1f} s: {moves} moves, "
        f"{moves / elapsed:,.0f} moves/s; audit of {audit.entries} entries "
        f"{audit_seconds * 1000:.0f} ms ({'balanced' if audit.ok else 'NOT balanced'})"
    )
    print(
        json.dumps(
            {
                "backend": backend,
                "threads": args.threads,
                "moves": moves,
                "moves_per_second": round(moves / elapsed, 1),
                "audit_entries": audit.entries,
                "audit_ms": round(audit_seconds * 1000, 1),
                "balanced": audit.ok,
            }
        )
    )


if __name__ == "__main__":
    main()
