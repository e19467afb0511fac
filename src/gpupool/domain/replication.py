"""Protocol mode's replicated validation: which finished jobs a validator re-runs, when two
outputs agree, and who is wrong when they do not (docs/ledger.md, "Validators").

- Sampling: each finished, unchecked job is re-run with probability p, drawn independently,
  so a supplier that cheats on m jobs escapes with probability (1 - p)^m; with colluders
  holding share s of the re-run pool, who recognise a re-run by its content and copy the
  wrong output, (1 - p (1 - s))^m.
- Who runs it: `eligible` narrows the devices to those that may take a run; the coordinator
  then draws one uniformly with its own randomness. Nothing a supplier chooses (its key, and
  so its worker and device ids) orders the choice.
- Agreement: equal sha256 hashes; or, for jobs submitted with a tolerance, outputs that
  parse as the same number of whitespace-separated numbers, each pair within
  `tolerance x max(1, |a|, |b|)` (absolute near zero, relative for large values).
- Verdict: two agreeing runs confirm the job. A mismatch asks for a third run on a third
  supplier's device; the runs that disagree with the majority of the three are wrong (their
  devices are slashed). Three different outputs have no majority: nobody is slashed.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum


def escape_probability(p: float, jobs: int, colluding_share: float = 0.0) -> float:
    """The chance that none of `jobs` cheated jobs meets an honest re-run, when each is
    re-run with chance p on a device drawn from a pool whose share `colluding_share` copies
    the cheater's output."""
    if not 0.0 <= p <= 1.0 or jobs < 0 or not 0.0 <= colluding_share <= 1.0:
        raise ValueError("p and the share must lie in [0, 1] and jobs be >= 0")
    return (1.0 - p * (1.0 - colluding_share)) ** jobs


def network_of(address: str | None) -> str | None:
    """The network an address belongs to: its IPv4 /24 or IPv6 /48. Loopback, private and
    other non-global addresses name none: behind a proxy or on one test machine they say
    nothing about who operates the worker."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return None
    if not ip.is_global:
        return None
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


@dataclass(frozen=True, slots=True)
class Seat:
    """Who a device (or an earlier run's device) belongs to, as far as the coordinator
    knows it: the supplier account and the network it was seen from (None: unknown)."""

    device_id: str
    supplier_id: str
    network: str | None


# A first run goes to a device holding fewer unanswered runs than this where there is one.
QUEUE = 2


def eligible(devices: Sequence[Seat], earlier: Sequence[Seat]) -> list[Seat]:
    """The devices that may take the next run of a job whose runs so far were on `earlier`
    (empty for a first run), sorted by id so that a seeded draw repeats: another supplier
    than every earlier run, and another network where both are known.

    Nothing self-declared narrows the pool. A rule on regions (another region, or a
    preference for one) would let a cartel steer re-runs to itself: a partner that claims a
    region nobody else claims would be the only device "elsewhere" and draw every check."""
    suppliers = {e.supplier_id for e in earlier}
    networks = {e.network for e in earlier if e.network is not None}
    allowed = [
        d
        for d in devices
        if d.supplier_id not in suppliers and (d.network is None or d.network not in networks)
    ]
    return sorted(allowed, key=lambda d: d.device_id)


def unqueued(devices: Sequence[Seat], load: dict[str, int], queue: int = QUEUE) -> list[Seat]:
    """A first run's devices: those holding fewer than `queue` unanswered runs, else the
    least loaded. Load limits who may be drawn but never orders the draw, and re-runs
    ignore it: a cartel that answers at once (it copies instead of computing) would
    otherwise always be the least loaded and draw the re-runs."""
    free = [d for d in devices if load.get(d.device_id, 0) < queue]
    if free or not devices:
        return free
    least = min(load.get(d.device_id, 0) for d in devices)
    return [d for d in devices if load.get(d.device_id, 0) == least]


def pick(
    job_ids: Sequence[str],
    p: float,
    uniform: Callable[[], float],
    drawn: Mapping[str, float] | None = None,
) -> list[str]:
    """The jobs to re-run: each independently with probability p (`uniform` draws in [0, 1)).

    A job an earlier validation passed over at q < p (`drawn`) is drawn with (p - q) / (1 - q),
    so that, over every validation so far, a job is re-run with the largest p any validator
    asked for: a validator that passes everything over with p = 0 takes no job out of the
    next one's reach."""
    drawn = drawn or {}
    chosen = []
    for job in job_ids:
        q = drawn.get(job, 0.0)
        if q < p and uniform() < (p - q) / (1.0 - q):
            chosen.append(job)
    return chosen


def _numbers(data: bytes) -> list[float] | None:
    try:
        values = [float(x) for x in data.split()]
    except ValueError:
        return None
    return values if all(math.isfinite(v) for v in values) else None


def agree(a_hash: str, b_hash: str, a: bytes, b: bytes, tolerance: float | None) -> bool:
    if a_hash == b_hash:
        return True
    if tolerance is None:
        return False
    xs, ys = _numbers(a), _numbers(b)
    if xs is None or ys is None or len(xs) != len(ys):
        return False
    return all(
        abs(x - y) <= tolerance * max(1.0, abs(x), abs(y)) for x, y in zip(xs, ys, strict=True)
    )


def _same(a: Run, b: Run, tolerance: float | None) -> bool:
    return agree(a.output_hash, b.output_hash, a.output, b.output, tolerance)


class Outcome(StrEnum):
    CONFIRMED = "confirmed"  # the runs agree
    THIRD_RUN = "third-run"  # two runs disagree: ask a third supplier
    CAUGHT = "caught"  # a majority found; the minority is slashed
    NO_MAJORITY = "no-majority"  # three different outputs: nobody is slashed


@dataclass(frozen=True, slots=True)
class Run:
    run_id: str
    output_hash: str
    output: bytes


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    wrong: tuple[str, ...] = ()  # run ids that disagree with the majority


def judge(runs: Sequence[Run], tolerance: float | None) -> Verdict:
    """The verdict on a job from its finished runs (the original first)."""
    if len(runs) < 2:
        raise ValueError("a verdict needs at least two runs")
    if len(runs) == 2:
        a, b = runs
        if _same(a, b, tolerance):
            return Verdict(Outcome.CONFIRMED)
        return Verdict(Outcome.THIRD_RUN)
    for run in runs:
        backers = [
            r
            for r in runs
            if agree(r.output_hash, run.output_hash, r.output, run.output, tolerance)
        ]
        if 2 * len(backers) > len(runs):
            majority = {r.run_id for r in backers}
            wrong = tuple(r.run_id for r in runs if r.run_id not in majority)
            return Verdict(Outcome.CAUGHT if wrong else Outcome.CONFIRMED, wrong)
    return Verdict(Outcome.NO_MAJORITY)
