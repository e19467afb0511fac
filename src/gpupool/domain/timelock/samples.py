"""The time-lock sample: what an agent records about one leased device each sampling interval.

A sample travels and is hashed as a plain dict (the format in docs/timelock.md); `Sample` is
its typed, validated form. `Sample.from_dict(d).to_dict() == d` for every valid `d`, with the
same keys and only ints, strings, lists, dicts and nulls, so the sha256 of its canonical JSON
is the same whichever form the caller hashed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gpupool.domain.errors import InvalidRequest

ZERO_HASH = "0" * 64
"""The `prev` of the first sample (seq 0) of a chain."""

# Integers beyond 2**53 lose precision in JavaScript and in some JSON parsers; a value that
# two parties might read differently must not be hashed.
MAX_JSON_INT = 2**53 - 1
# Bounds on free text keep one sample small; a real command line longer than this is cut by
# the agent before it records it.
MAX_NAME_CHARS = 256
MAX_TEXT_CHARS = 4096
# Sensor range a reading may have at all; whether it is plausible for the device is
# telemetry.py's question.
MIN_TEMPERATURE_C = -50
MAX_TEMPERATURE_C = 200

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]+")

SAMPLE_KEYS = frozenset(
    {
        "lease",
        "device",
        "seq",
        "time_ms",
        "beacon",
        "beacon_value",
        "prev",
        "processes",
        "utilization_pct",
        "memory_mb",
        "power_mw",
        "temperature_c",
        "violations",
    }
)
_PROCESS_KEYS = frozenset({"pid", "name", "owner"})
_VIOLATION_KEYS = frozenset({"pid", "exe", "cmdline", "first_seen_ms", "killed_at_ms"})


class InvalidSample(InvalidRequest):
    """A sample dict that does not follow the format; the message names the field."""

    code = "invalid_sample"


class Owner(StrEnum):
    LEASE = "lease"
    SYSTEM = "system"
    FOREIGN = "foreign"


_OWNER_BY_VALUE = {o.value: o for o in Owner}


@dataclass(frozen=True, slots=True)
class ProcessSeen:
    pid: int
    name: str
    owner: Owner


@dataclass(frozen=True, slots=True)
class Violation:
    """A foreign process the guard found on the device and killed."""

    pid: int
    exe: str
    cmdline: str
    first_seen_ms: int
    killed_at_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "exe": self.exe,
            "cmdline": self.cmdline,
            "first_seen_ms": self.first_seen_ms,
            "killed_at_ms": self.killed_at_ms,
        }


Telemetry = tuple[int | None, int | None, int | None, int | None]
"""(utilization_pct, memory_mb, power_mw, temperature_c) of one sample."""


@dataclass(frozen=True, slots=True)
class Sample:
    lease: str
    device: str
    seq: int
    time_ms: int
    beacon: int
    beacon_value: str
    prev: str
    processes: tuple[ProcessSeen, ...]
    utilization_pct: int | None
    memory_mb: int | None
    power_mw: int | None
    temperature_c: int | None
    violations: tuple[Violation, ...]

    @property
    def telemetry(self) -> Telemetry:
        return (self.utilization_pct, self.memory_mb, self.power_mw, self.temperature_c)

    @property
    def has_lease_process(self) -> bool:
        return any(p.owner is Owner.LEASE for p in self.processes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lease": self.lease,
            "device": self.device,
            "seq": self.seq,
            "time_ms": self.time_ms,
            "beacon": self.beacon,
            "beacon_value": self.beacon_value,
            "prev": self.prev,
            "processes": [
                {"pid": p.pid, "name": p.name, "owner": p.owner.value} for p in self.processes
            ],
            "utilization_pct": self.utilization_pct,
            "memory_mb": self.memory_mb,
            "power_mw": self.power_mw,
            "temperature_c": self.temperature_c,
            "violations": [v.to_dict() for v in self.violations],
        }

    @classmethod
    def from_dict(cls, data: Any) -> Sample:
        """Parse and validate one sample dict; raise `InvalidSample` naming the bad field."""
        sample = _from_plain_dict(data)
        return sample if sample is not None else cls._from_dict_naming_faults(data)

    @classmethod
    def _from_dict_naming_faults(cls, data: Any) -> Sample:
        """Field by field, each check with its own message (and any `Mapping` accepted)."""
        d = _record(data, SAMPLE_KEYS, "sample")
        return cls(
            lease=_id(d, "lease"),
            device=_id(d, "device"),
            seq=_int(d, "seq"),
            time_ms=_int(d, "time_ms"),
            beacon=_int(d, "beacon"),
            beacon_value=_hex(d, "beacon_value"),
            prev=_sha256(d, "prev"),
            processes=tuple(_process(p, i) for i, p in enumerate(_list(d, "processes"))),
            utilization_pct=_optional_int(d, "utilization_pct", 0, 100),
            memory_mb=_optional_int(d, "memory_mb"),
            power_mw=_optional_int(d, "power_mw"),
            temperature_c=_optional_int(d, "temperature_c", MIN_TEMPERATURE_C, MAX_TEMPERATURE_C),
            violations=tuple(_violation(v, i) for i, v in enumerate(_list(d, "violations"))),
        )


def _from_plain_dict(d: Any) -> Sample | None:
    """The same checks as `Sample._from_dict_naming_faults`, in one pass over a plain dict
    (what a JSON parser gives), or None when any fails and the slower parse must name it.

    Offline verification parses thousands of samples per device-hour and the coordinator
    every sample it accepts, so the common case costs a few comparisons per field instead
    of a call each. Exact types only (`type(x) is int` also keeps out `bool`); anything
    unusual, such as an int subclass or a sample with violations, takes the slow path.
    """
    # As many keys as a sample has, and each of them there: exactly the sample's keys.
    if type(d) is not dict or len(d) != len(SAMPLE_KEYS):
        return None
    try:
        lease, device, beacon_value, prev = d["lease"], d["device"], d["beacon_value"], d["prev"]
        seq, time_ms, beacon = d["seq"], d["time_ms"], d["beacon"]
        utilization, memory, power, temperature = (
            d["utilization_pct"],
            d["memory_mb"],
            d["power_mw"],
            d["temperature_c"],
        )
        processes, violations = d["processes"], d["violations"]
    except KeyError:
        return None
    if not (
        type(lease) is str
        and 0 < len(lease) <= MAX_NAME_CHARS
        and type(device) is str
        and 0 < len(device) <= MAX_NAME_CHARS
        and type(seq) is int
        and 0 <= seq <= MAX_JSON_INT
        and type(time_ms) is int
        and 0 <= time_ms <= MAX_JSON_INT
        and type(beacon) is int
        and 0 <= beacon <= MAX_JSON_INT
        and type(beacon_value) is str
        and len(beacon_value) <= MAX_NAME_CHARS
        and _HEX.fullmatch(beacon_value)
        and type(prev) is str
        and _SHA256_HEX.fullmatch(prev)
        and (utilization is None or (type(utilization) is int and 0 <= utilization <= 100))
        and (memory is None or (type(memory) is int and 0 <= memory <= MAX_JSON_INT))
        and (power is None or (type(power) is int and 0 <= power <= MAX_JSON_INT))
        and (
            temperature is None
            or (type(temperature) is int and MIN_TEMPERATURE_C <= temperature <= MAX_TEMPERATURE_C)
        )
        and type(processes) is list
        and type(violations) is list
        and not violations
    ):
        return None
    seen = []
    for p in processes:
        if type(p) is not dict or len(p) != len(_PROCESS_KEYS):
            return None
        try:
            pid, name, owner = p["pid"], p["name"], p["owner"]
        except KeyError:
            return None
        if not (
            type(pid) is int
            and 0 <= pid <= MAX_JSON_INT
            and type(name) is str
            and len(name) <= MAX_NAME_CHARS
            and type(owner) is str
            and owner in _OWNER_BY_VALUE
        ):
            return None
        seen.append(ProcessSeen(pid, name, _OWNER_BY_VALUE[owner]))
    return Sample(
        lease,
        device,
        seq,
        time_ms,
        beacon,
        beacon_value,
        prev,
        tuple(seen),
        utilization,
        memory,
        power,
        temperature,
        (),
    )


def _process(data: Any, index: int) -> ProcessSeen:
    where = f"processes[{index}]"
    d = _record(data, _PROCESS_KEYS, where)
    owner = d["owner"]
    if not isinstance(owner, str) or owner not in _OWNER_BY_VALUE:
        raise InvalidSample(f"{where}.owner must be one of lease, system, foreign: {owner!r}")
    return ProcessSeen(
        pid=_int(d, "pid", where=where),
        name=_text(d, "name", MAX_NAME_CHARS, where=where),
        owner=_OWNER_BY_VALUE[owner],
    )


def _violation(data: Any, index: int) -> Violation:
    where = f"violations[{index}]"
    d = _record(data, _VIOLATION_KEYS, where)
    violation = Violation(
        pid=_int(d, "pid", where=where),
        exe=_text(d, "exe", MAX_TEXT_CHARS, where=where),
        cmdline=_text(d, "cmdline", MAX_TEXT_CHARS, where=where),
        first_seen_ms=_int(d, "first_seen_ms", where=where),
        killed_at_ms=_int(d, "killed_at_ms", where=where),
    )
    if violation.killed_at_ms < violation.first_seen_ms:
        raise InvalidSample(f"{where}: killed_at_ms is before first_seen_ms")
    return violation


def _record(data: Any, keys: frozenset[str], where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise InvalidSample(f"{where} must be an object, not {type(data).__name__}")
    if data.keys() == keys:  # the usual case, checked without building the differences
        return data
    missing = sorted(keys - data.keys())
    unknown = sorted(str(k) for k in data.keys() - keys)
    if missing:
        raise InvalidSample(f"{where} lacks {', '.join(missing)}")
    if unknown:
        raise InvalidSample(f"{where} has unknown fields {', '.join(unknown)}")
    return data


def _name(where: str, key: str) -> str:
    return key if where == "sample" else f"{where}.{key}"


def _int(
    d: Mapping[str, Any], key: str, lo: int = 0, hi: int = MAX_JSON_INT, where: str = "sample"
) -> int:
    value = d[key]
    # bool is an int in Python but `true` in JSON: it would hash differently.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidSample(f"{_name(where, key)} must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise InvalidSample(f"{_name(where, key)} must be within {lo}..{hi}, not {value}")
    return value


def _optional_int(
    d: Mapping[str, Any], key: str, lo: int = 0, hi: int = MAX_JSON_INT
) -> int | None:
    return None if d[key] is None else _int(d, key, lo, hi)


def _text(d: Mapping[str, Any], key: str, limit: int, where: str = "sample") -> str:
    value = d[key]
    if not isinstance(value, str):
        raise InvalidSample(f"{_name(where, key)} must be a string, not {value!r}")
    if len(value) > limit:
        raise InvalidSample(f"{_name(where, key)} is longer than {limit} characters")
    return value


def _id(d: Mapping[str, Any], key: str) -> str:
    value = _text(d, key, MAX_NAME_CHARS)
    if not value:
        raise InvalidSample(f"{key} must not be empty")
    return value


def _hex(d: Mapping[str, Any], key: str) -> str:
    value = _text(d, key, MAX_NAME_CHARS)
    if not _HEX.fullmatch(value):
        raise InvalidSample(f"{key} must be lowercase hex, not {value!r}")
    return value


def _sha256(d: Mapping[str, Any], key: str) -> str:
    value = _text(d, key, 64)
    if not _SHA256_HEX.fullmatch(value):
        raise InvalidSample(f"{key} must be 64 lowercase hex digits, not {value!r}")
    return value


def _list(d: Mapping[str, Any], key: str) -> list[Any]:
    value = d[key]
    if not isinstance(value, list):
        raise InvalidSample(f"{key} must be a list, not {type(value).__name__}")
    return value
