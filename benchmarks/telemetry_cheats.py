"""What cheating on telemetry earns: payout of honest and forged H100 streams at default
settings (one device-hour, 1 Hz), judged by the coordinator's own rules.

    .venv/bin/python -m benchmarks.telemetry_cheats --leases 20

For each stream kind, `--leases` leases with different seeds are judged twice: against the
board's priors alone (a model no lease has taught yet) and after the model learned
`--learned` honest leases that passed. Detection is the share of leases paid under half
the honest median. The honest traces are a workload model (levels, pauses, model loading,
first-order thermals), not recordings of a real H100: they show the false-positive side
only as far as that model is right. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from gpupool.domain.models import DeviceKind
from gpupool.domain.timelock import certificate
from gpupool.domain.timelock.anomaly import ModelStats
from gpupool.domain.timelock.chain import HashedSample
from gpupool.domain.timelock.samples import Owner, ProcessSeen, Sample
from gpupool.domain.timelock.telemetry import DeviceProfile, board_power

H100 = DeviceProfile(DeviceKind.GPU, "NVIDIA H100 80GB HBM3", 81_559)
POWER = board_power(H100.model)
assert POWER is not None
SPAN_W = POWER.max_w - POWER.idle_w
SECONDS = 3_600
T1 = 1_800_000_000_000
LEASE = (ProcessSeen(4242, "python", Owner.LEASE),)
MINER = (*LEASE, ProcessSeen(31337, "xmrig", Owner.FOREIGN))

Reading = tuple[int, int, int, int]
Trace = list[tuple[tuple[ProcessSeen, ...], Reading]]


def _clamp(x: float, lo: int = 0, hi: int = 100) -> int:
    return max(lo, min(hi, round(x)))


def honest(rng: random.Random) -> Trace:
    """A training job: a utilization level, a power share of the board's span that depends
    on how compute-bound it is, memory loaded in ten seconds and then held, pauses for
    evaluation every few minutes, and a die temperature following power with a lag."""
    level, share = rng.uniform(40, 100), rng.uniform(0.3, 0.95)
    target_mb = rng.randrange(4_000, 78_000)
    temperature, memory = 35.0, 500
    out: Trace = []
    for t in range(SECONDS):
        paused = t % 300 >= 285
        util = _clamp(rng.gauss(3 if paused else level, 2 if paused else 5))
        watts = POWER.idle_w + share * SPAN_W * util / 100 * rng.uniform(0.9, 1.1)
        temperature += (30 + 50 * watts / POWER.max_w - temperature) / 25 + rng.gauss(0, 0.2)
        memory = min(target_mb, memory + target_mb // 10) + rng.randrange(0, 64)
        out.append((LEASE, (util, memory, round(watts * 1000), round(temperature))))
    return out


def constant(rng: random.Random) -> Trace:
    return [(LEASE, (90, 30_000, 500_000, 60))] * SECONDS


def listed_miner(rng: random.Random) -> Trace:
    return [(MINER, reading) for _, reading in honest(rng)]


def made_up(rng: random.Random) -> Trace:
    """Each reading drawn anew every second from a plausible range."""
    return [
        (
            LEASE,
            (
                rng.randint(90, 99),
                rng.randint(30_000, 40_000),
                rng.randint(400_000, 600_000),
                rng.randint(60, 70),
            ),
        )
        for _ in range(SECONDS)
    ]


def steady_memory(rng: random.Random) -> Trace:
    """Made up as above, but with memory held steady: only temperature still jumps."""
    return [(LEASE, (u, 30_000, p, t)) for _, (u, _, p, t) in made_up(rng)]


def low_power(rng: random.Random) -> Trace:
    """Busy at 140-200 W (an H100 that is not working draws about that), over the rules'
    floor, with smooth temperature and steady memory."""
    temperature, out = 45.0, []
    for _ in range(SECONDS):
        temperature += rng.gauss(0, 0.3)
        reading = (rng.randint(90, 99), 30_000, rng.randint(140_000, 200_000), round(temperature))
        out.append((LEASE, reading))
    return out


def careful(rng: random.Random) -> Trace:
    """A forger who models the physics (or replays real traces): the honest generator, on
    seeds of its own."""
    return honest(rng)


KINDS: dict[str, Callable[[random.Random], Trace]] = {
    "honest": honest,
    "constant-values": constant,
    "listed-miner": listed_miner,
    "made-up": made_up,
    "made-up, steady memory": steady_memory,
    "low-power": low_power,
    "careful-forger": careful,
}


def _chain(trace: Trace) -> list[HashedSample]:
    chain = []
    for seq, (processes, (util, memory, power, temperature)) in enumerate(trace):
        t = T1 + 500 + seq * 1_000
        sample = Sample(
            "l-bench", "w-bench:gpu0", seq, t, t // 10_000, "ab", "0" * 64, processes,
            util, memory, power, temperature, (),
        )  # fmt: skip
        chain.append(HashedSample(sample, "0" * 64))  # hashes do not enter the payout
    return chain


def judge(trace: Trace, model: ModelStats) -> certificate.Assessment:
    result = certificate.evaluate_device(
        "w-bench:gpu0", "w-bench", H100, _chain(trace), model,
        t1_ms=T1, t_end_ms=T1 + SECONDS * 1_000, interval_ms=1_000,
    )  # fmt: skip
    return certificate.assess([result], T1, T1 + SECONDS * 1_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=20)
    parser.add_argument("--learned", type=int, default=5)
    args = parser.parse_args()

    learned = ModelStats(H100.model)
    for seed in range(args.learned):
        trace = honest(random.Random(10_000 + seed))
        if judge(trace, learned).verdict is certificate.Verdict.PASS:
            learned = learned.learn([h.sample for h in _chain(trace)])
    models = {"prior": ModelStats(H100.model), "learned": learned}

    figures: dict[str, Any] = {}
    timings: list[float] = []
    for kind, make in KINDS.items():
        for name, model in models.items():
            results = []
            for seed in range(args.leases):
                trace = make(random.Random(f"{kind}:{seed}"))
                started = time.perf_counter()
                results.append(judge(trace, model))
                timings.append(time.perf_counter() - started)
            figures[f"{kind}/{name}"] = (
                [r.payout_ppm for r in results],
                [r.verdict.value for r in results],
            )
    print(f"{args.leases} one-hour H100 leases per kind; model learned from {learned.leases}")
    print(f"{'stream / model':34} {'median':>8} {'min':>8} {'max':>8} {'fail':>5} {'detected':>9}")
    summary = {}
    for key, (payouts, verdicts) in figures.items():
        honest_median = statistics.median(figures[f"honest/{key.split('/')[1]}"][0])
        detected = sum(p < honest_median / 2 for p in payouts) / len(payouts)
        row = {
            "median": statistics.median(payouts) / 1e6,
            "min": min(payouts) / 1e6,
            "max": max(payouts) / 1e6,
            "fail": verdicts.count("fail"),
            "detected": detected,
        }
        summary[key] = row
        print(
            f"{key:34} {row['median']:8.4f} {row['min']:8.4f} {row['max']:8.4f}"
            f" {row['fail']:5d} {detected:9.0%}"
        )
    judge_ms = statistics.median(timings) * 1000
    print(f"judging one device-hour (rules, anomaly score, verdict): median {judge_ms:.1f} ms")
    print(
        json.dumps(
            {
                "leases": args.leases,
                "learned": learned.leases,
                "judge_median_ms": round(judge_ms, 1),
                "figures": summary,
            }
        )
    )


if __name__ == "__main__":
    main()
