"""Detection rates of protocol-mode validation against a ground key and a cartel, measured
with modified agents on the real signed link against a real coordinator (in-process app,
SQLite), the same scenarios the tests in tests/api/test_validation_cartel.py assert on.

    .venv/bin/python -m benchmarks.validation --seeds 5 --jobs 300 --p 0.5

- grind: a supplier whose key sorts first among `--honest` + 1 one-device suppliers; its
  share of `--jobs` first runs against the fair 1 / (honest + 1).
- collude: a cheater's `--jobs` jobs, its partner with `--partner` devices copying the
  cheater's output, `--honest` one-device honest suppliers, sampling with `--p`: the rate at
  which a cheated job meets an honest re-run against p (1 - s), the cheater's slash rate
  against p (1 - s)(1 - s'), and the rate at which an honest checker is slashed instead.

Prints one line per scenario with the measured and predicted rates, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from tests.api.conftest import running_api
from tests.api.test_validation_cartel import Cartel, collude, grind

from gpupool.coordinator.storage.database import SqlDatabase


def _database(folder: Path, seed: int) -> SqlDatabase:
    db = SqlDatabase(f"sqlite:///{folder / f'seed{seed}.db'}")
    db.migrate()
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--p", type=float, default=0.5)
    parser.add_argument("--partner", type=int, default=3)
    parser.add_argument("--honest", type=int, default=3)
    args = parser.parse_args()
    grinder_runs, cartels = 0, []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            db = _database(Path(tmp), seed)
            with running_api(db) as api:
                got, grinder = grind(api, 100 + seed, args.jobs, args.honest + args.partner - 1)
            grinder_runs += got[grinder]
            db.close()
            db = _database(Path(tmp), 1000 + seed)
            with running_api(db) as api:
                cartels.append(collude(api, seed, args.jobs, args.p, args.partner, args.honest))
            db.close()
    devices = args.honest + args.partner
    fair = 1 / devices
    share = args.partner / devices
    third_share = args.partner / (devices - 1)
    total = Cartel(*(sum(getattr(c, f) for c in cartels) for f in Cartel.__dataclass_fields__))
    figures = {
        "seeds": args.seeds,
        "jobs_per_seed": args.jobs,
        "p": args.p,
        "grinder_share": grinder_runs / (args.seeds * args.jobs),
        "fair_share": fair,
        "share": share,
        "mismatch_rate": total.mismatched / total.jobs,
        "mismatch_predicted": args.p * (1 - share),
        "caught_rate": total.caught / total.jobs,
        "caught_predicted": args.p * (1 - share) * (1 - third_share),
        "framed_rate": total.framed / total.jobs,
        "framed_predicted": args.p * (1 - share) * third_share,
    }
    print(
        f"grind: {figures['grinder_share']:.4f} of first runs to the ground key "
        f"(fair {fair:.4f}) over {args.seeds} x {args.jobs} jobs"
    )
    print(
        f"collude (s = {share:.3f}, p = {args.p}): a cheated job met an honest re-run "
        f"{figures['mismatch_rate']:.4f} (predicted {figures['mismatch_predicted']:.4f}); "
        f"cheater slashed {figures['caught_rate']:.4f} "
        f"(predicted {figures['caught_predicted']:.4f}); honest checker slashed "
        f"{figures['framed_rate']:.4f} (predicted {figures['framed_predicted']:.4f})"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
