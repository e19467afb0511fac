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
- frame: an honest supplier's `--jobs` jobs, a cartel of two accounts with `--partner`
  devices each answering every re-run wrong: the rate at which the honest supplier is
  slashed against p s s' (s the cartel's share of the re-run pool, s' the other account's
  share of the third run's).

Prints one line per scenario with the measured and predicted rates, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

from tests.api.conftest import Api, running_api
from tests.api.test_validation_cartel import Votes, collude, grind

from gpupool.coordinator.storage.database import SqlDatabase


@contextmanager
def _api(folder: Path, seed: int) -> Iterator[Api]:
    db = SqlDatabase(f"sqlite:///{folder / f'seed{seed}.db'}")
    db.migrate()
    try:
        with running_api(db) as api:
            yield api
    finally:
        db.close()


def _total(runs: list[Votes]) -> Votes:
    return Votes(*(sum(getattr(r, f.name) for r in runs) for f in fields(Votes)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--p", type=float, default=0.5)
    parser.add_argument("--partner", type=int, default=3)
    parser.add_argument("--honest", type=int, default=3)
    args = parser.parse_args()
    grinder_runs, cheats, frames = 0, [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            with _api(Path(tmp), seed) as api:
                got, grinder = grind(api, 100 + seed, args.jobs, args.honest + args.partner - 1)
                grinder_runs += got[grinder]
            with _api(Path(tmp), 1000 + seed) as api:
                cartel = (args.partner,)
                cheats.append(collude(api, seed, args.jobs, args.p, cartel, args.honest))
            with _api(Path(tmp), 2000 + seed) as api:
                cartel = (args.partner, args.partner)
                frames.append(
                    collude(api, seed, args.jobs, args.p, cartel, args.honest, first_lies=False)
                )
    devices = args.honest + args.partner
    fair = 1 / devices
    share = args.partner / devices
    third_share = args.partner / (devices - 1)
    cheat, frame = _total(cheats), _total(frames)
    frame_share = 2 * args.partner / (2 * args.partner + args.honest)
    frame_third = args.partner / (args.partner + args.honest)
    figures = {
        "seeds": args.seeds,
        "jobs_per_seed": args.jobs,
        "p": args.p,
        "grinder_share": grinder_runs / (args.seeds * args.jobs),
        "fair_share": fair,
        "share": share,
        "mismatch_rate": cheat.mismatched / cheat.jobs,
        "mismatch_predicted": args.p * (1 - share),
        "caught_rate": cheat.first_slashed / cheat.jobs,
        "caught_predicted": args.p * (1 - share) * (1 - third_share),
        "framed_checker_rate": cheat.rerun_slashed / cheat.jobs,
        "framed_checker_predicted": args.p * (1 - share) * third_share,
        "framed_supplier_rate": frame.first_slashed / frame.jobs,
        "framed_supplier_predicted": args.p * frame_share * frame_third,
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
        f"{figures['framed_checker_rate']:.4f} "
        f"(predicted {figures['framed_checker_predicted']:.4f})"
    )
    print(
        f"frame (two accounts, s = {frame_share:.3f}, s' = {frame_third:.3f}): an honest "
        f"supplier slashed {figures['framed_supplier_rate']:.4f} of its jobs "
        f"(predicted {figures['framed_supplier_predicted']:.4f})"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
