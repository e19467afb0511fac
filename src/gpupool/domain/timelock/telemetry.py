"""Plausibility rules: could this device model really have shown this telemetry?

Each rule looks at one device's chain (in seq order) and returns `Flag`s, one per sample and
rule. A flag is a doubt, not proof: each flagged sample costs its rule's weight of that
sample's pay (payout.py), and only a chain mostly flagged fails. Only the rules that apply
run: power rules need a GPU model in `BOARD_POWER`; the memory rule is for GPUs (a CPU's
memory is shared with the host); the constant and replay rules need a power reading, since
without a fine-grained sensor a steady CPU job legitimately repeats (100 %, same memory)
for minutes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from gpupool.domain.models import DeviceKind
from gpupool.domain.timelock.samples import Sample, Telemetry

# Boards draw above their limit for milliseconds, and NVML's reading is an average over about
# a second that can land up to a few percent over it; a tenth more is not a measurement.
POWER_OVER_LIMIT_TOLERANCE_PCT = 110
# GPUs slow down near 90 C and shut down near 100 C; CPUs near 105 C.
MAX_TEMPERATURE_C = 110
# At or above this utilization the board must draw clearly above idle...
BUSY_UTILIZATION_PCT = 50
# ...at least this share of the idle-to-max interpolation at that utilization. Low, because
# NVML's utilization is the share of time any kernel ran: a small memory-bound kernel shows
# 100 % at a third of the board's power. A floor of a tenth still catches a board reporting
# work while it draws idle power.
BUSY_POWER_FLOOR_SHARE_PCT = 10
# An idle board (0 %) does not draw near its maximum.
IDLE_POWER_CEILING_PCT = 90
# The driver and a CUDA context of a desktop session keep a few hundred MB; above 1 GiB,
# some process holds the memory, and on a leased GPU it should be the lease's.
MEMORY_FLOOR_MB = 1024
# A power reading in milliwatts moves every second on a working board; a minute of the same
# tuple while it reports work means the numbers are made up.
CONSTANT_RUN_SAMPLES = 60
# Twenty seconds of identical (utilization, memory, power, temperature) tuples cannot repeat
# by chance; they were copied from earlier in the chain.
REPLAY_WINDOW_SAMPLES = 20


class Rule(StrEnum):
    BOUNDS = "bounds"
    POWER_VS_UTILIZATION = "power-vs-utilization"
    MEMORY_WITHOUT_PROCESS = "memory-without-process"
    CONSTANT_VALUES = "constant-values"
    REPLAYED_VALUES = "replayed-values"


@dataclass(frozen=True, slots=True)
class Flag:
    seq: int
    rule: Rule
    detail: str


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """What the rules need to know of a device: its kind, model name and memory."""

    kind: DeviceKind
    model: str
    memory_mb: int


@dataclass(frozen=True, slots=True)
class BoardPower:
    idle_w: int
    max_w: int


# Board power by model, from the vendors' data sheets (max) and typical idle readings. A row
# matches when all its tokens are in the NVML name ("NVIDIA A100-SXM4-80GB"); the more
# specific rows of a model come first.
BOARD_POWER: tuple[tuple[tuple[str, ...], BoardPower], ...] = (
    (("H200",), BoardPower(75, 700)),
    (("H100", "PCIE"), BoardPower(50, 350)),
    (("H100", "NVL"), BoardPower(60, 400)),
    (("H100",), BoardPower(70, 700)),  # SXM5
    (("A100", "PCIE"), BoardPower(35, 300)),
    (("A100",), BoardPower(50, 400)),  # SXM4
    (("L40S",), BoardPower(35, 350)),
    (("L4",), BoardPower(16, 72)),
    (("A10",), BoardPower(20, 150)),
    (("A10G",), BoardPower(20, 150)),
    (("RTX", "4090"), BoardPower(20, 450)),
    (("RTX", "3090", "TI"), BoardPower(25, 450)),
    (("RTX", "3090"), BoardPower(25, 350)),
    (("V100", "PCIE"), BoardPower(25, 250)),
    (("V100",), BoardPower(30, 300)),  # SXM2
    (("T4",), BoardPower(10, 70)),
)


def board_power(model: str) -> BoardPower | None:
    """The power profile of a GPU model name, or None for a model the table lacks."""
    tokens = set(re.split(r"[^0-9A-Z]+", model.upper()))
    for needed, power in BOARD_POWER:
        if tokens.issuperset(needed):
            return power
    return None


def check_telemetry(samples: Sequence[Sample], device: DeviceProfile) -> list[Flag]:
    """Every flag the rules raise on one device's chain, ordered by seq and rule."""
    power = board_power(device.model) if device.kind is DeviceKind.GPU else None
    limit_mw = None if power is None else power.max_w * 10 * POWER_OVER_LIMIT_TOLERANCE_PCT
    # A GPU's memory is a hard limit; a CPU group's is its share of the host's, which a
    # lease may exceed (the sandbox sets no memory.max), so only GPUs are held to it.
    limit_mb = device.memory_mb if device.kind is DeviceKind.GPU else None
    flags: list[Flag] = []
    for s in samples:
        # The bounds in one test first: nearly every sample is within them.
        if not (
            (s.utilization_pct is None or 0 <= s.utilization_pct <= 100)
            and (s.memory_mb is None or limit_mb is None or s.memory_mb <= limit_mb)
            and (s.power_mw is None or limit_mw is None or s.power_mw <= limit_mw)
            and (s.temperature_c is None or s.temperature_c <= MAX_TEMPERATURE_C)
        ):
            flags += _bounds(s, device, power)
        if power is not None:
            flags += _power_vs_utilization(s, power)
        if device.kind is DeviceKind.GPU:
            flags += _memory_without_process(s)
    values = [s.telemetry for s in samples]
    flags += _constant_values(samples, values)
    flags += _replayed_values(samples, values)
    return sorted(flags, key=lambda f: (f.seq, f.rule.value))


def _bounds(s: Sample, device: DeviceProfile, power: BoardPower | None) -> list[Flag]:
    found: list[str] = []
    if s.utilization_pct is not None and not 0 <= s.utilization_pct <= 100:
        found.append(f"utilization {s.utilization_pct} % outside 0..100")
    if device.kind is DeviceKind.GPU and s.memory_mb is not None and s.memory_mb > device.memory_mb:
        found.append(f"memory {s.memory_mb} MB above the device's {device.memory_mb} MB")
    if power is not None and s.power_mw is not None:
        limit_mw = power.max_w * 10 * POWER_OVER_LIMIT_TOLERANCE_PCT  # W -> mW, and the %
        if s.power_mw > limit_mw:
            found.append(f"power {s.power_mw} mW above the board's {power.max_w} W")
    if s.temperature_c is not None and s.temperature_c > MAX_TEMPERATURE_C:
        found.append(f"temperature {s.temperature_c} C above {MAX_TEMPERATURE_C} C")
    return [Flag(s.seq, Rule.BOUNDS, detail) for detail in found]


def _power_vs_utilization(s: Sample, power: BoardPower) -> list[Flag]:
    util, mw = s.utilization_pct, s.power_mw
    if util is None or mw is None:
        return []
    if util >= BUSY_UTILIZATION_PCT:
        span_mw = (power.max_w - power.idle_w) * 1000
        floor_mw = power.idle_w * 1000 + span_mw * util * BUSY_POWER_FLOOR_SHARE_PCT // 10_000
        if mw < floor_mw:
            why = f"{util} % utilization at {mw} mW, below the {floor_mw} mW such work draws"
            return [Flag(s.seq, Rule.POWER_VS_UTILIZATION, why)]
    if util == 0 and mw * 100 >= power.max_w * 1000 * IDLE_POWER_CEILING_PCT:
        why = f"0 % utilization at {mw} mW, near the board's {power.max_w} W maximum"
        return [Flag(s.seq, Rule.POWER_VS_UTILIZATION, why)]
    return []


def _memory_without_process(s: Sample) -> list[Flag]:
    if s.memory_mb is None or s.memory_mb <= MEMORY_FLOOR_MB or s.has_lease_process:
        return []
    why = f"{s.memory_mb} MB in use and no lease process listed"
    return [Flag(s.seq, Rule.MEMORY_WITHOUT_PROCESS, why)]


def _constant_values(samples: Sequence[Sample], values: Sequence[Telemetry]) -> list[Flag]:
    flags: list[Flag] = []
    start = 0
    for i in range(1, len(values) + 1):
        if i < len(values) and values[i] == values[start]:
            continue
        util, _, power, _ = values[start]
        if power is not None and (util or 0) > 0 and i - start >= CONSTANT_RUN_SAMPLES:
            head = samples[start]
            why = (
                f"telemetry {head.telemetry} unchanged for {i - start} samples from seq {head.seq}"
            )
            flags += [Flag(s.seq, Rule.CONSTANT_VALUES, why) for s in samples[start:i]]
        start = i
    return flags


def _replayed_values(samples: Sequence[Sample], values: Sequence[Telemetry]) -> list[Flag]:
    """Windows of `REPLAY_WINDOW_SAMPLES` that equal an earlier window of the chain.

    Windows that real devices repeat are not evidence and are skipped: any without a power
    reading, idle ones (nothing ran), and one value throughout (the constant rule's case).
    Each window is tested in constant time from running counts, and compared as a tuple of
    small integers (one per distinct reading), so a device-hour costs a few milliseconds.
    """
    width = REPLAY_WINDOW_SAMPLES
    if all(power is None for _, _, power, _ in values):
        return []  # a CPU without a power sensor, say
    ids: dict[Telemetry, int] = {}
    keys = [ids.setdefault(v, len(ids)) for v in values]
    # unpowered[i], busy[i], changes[i]: how many of values[:i] lack power, show utilization,
    # or differ from the value before them.
    unpowered, busy, changes = [0], [0], [0]
    for i, (util, _, power, _) in enumerate(values):
        unpowered.append(unpowered[-1] + (power is None))
        busy.append(busy[-1] + ((util or 0) != 0))
        changes.append(changes[-1] + (i > 0 and keys[i] != keys[i - 1]))
    first_at: dict[tuple[int, ...], int] = {}
    replayed_from: dict[int, int] = {}  # index of a replayed sample -> seq it copies
    for i in range(len(values) - width + 1):
        end = i + width
        if (
            unpowered[end] != unpowered[i]  # a sample without power
            or busy[end] == busy[i]  # all idle
            or changes[end] == changes[i + 1]  # one value throughout
        ):
            continue
        earlier = first_at.setdefault(tuple(keys[i:end]), i)
        if earlier != i:
            for k in range(width):
                replayed_from.setdefault(i + k, samples[earlier + k].seq)
    return [
        Flag(
            samples[i].seq,
            Rule.REPLAYED_VALUES,
            f"telemetry repeats seq {source} within a repeated {width}-sample window",
        )
        for i, source in sorted(replayed_from.items())
    ]
