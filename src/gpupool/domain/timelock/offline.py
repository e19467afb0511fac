"""Re-verify a time-lock certificate from its samples, with no access to the coordinator.

Given the certificate body, each device's samples (dicts, in chain order) and their hashes
(sha256 of canonical JSON, computed by the caller), and callables that check signatures,
`verify_certificate` re-checks every chain link and rule that does not depend on when a
batch arrived, recomputes each device's result and the lease's assessment, rebuilds the
certificate body and compares it with the one given, field by field.

What it takes on trust: the anomaly bands each device was scored against (they come from the
model learned from other leases, which the certificate does not carry; anyone can compare
them with the board's published priors), the spot checks the coordinator records as missed
(its own observation, under its signature), and, unless `verify_head` is given, that the
chains are the workers' own. The anomaly score and its reason are recomputed from the bands
and the samples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpupool.domain.errors import InvalidRequest
from gpupool.domain.models import DeviceKind
from gpupool.domain.timelock.anomaly import BAND_SCALE, SCORED, STD_FLOOR, score_against
from gpupool.domain.timelock.certificate import (
    VERSION,
    DeviceResult,
    MissedSpotCheck,
    beacons_used,
    certificate_body,
    measure_device,
)
from gpupool.domain.timelock.chain import HashedSample, check_chain
from gpupool.domain.timelock.samples import Sample
from gpupool.domain.timelock.telemetry import DeviceProfile, check_telemetry

CertificateSignatureCheck = Callable[[Mapping[str, Any]], bool]
"""Whether the coordinator's signature over this certificate body holds."""
HeadSignatureCheck = Callable[[str, str, str], bool]
"""(worker id, chain head hash, signature): whether the worker signed that head."""

_MAX_SHOWN = 120


def verify_certificate(
    body: Mapping[str, Any],
    samples: Mapping[str, Sequence[Mapping[str, Any]]],
    hashes: Mapping[str, Sequence[str]],
    verify_sig: CertificateSignatureCheck,
    verify_head: HeadSignatureCheck | None = None,
) -> list[str]:
    """Every problem found, one line each; an empty list means the certificate verifies.

    `samples` and `hashes` are keyed by device id, both in chain order.
    """
    problems: list[str] = []
    if not verify_sig(body):
        problems.append("the coordinator's signature over the certificate does not hold")
    try:
        meta = _Meta.read(body)
    except (InvalidRequest, KeyError, TypeError, ValueError) as exc:
        return [*problems, f"the certificate is malformed: {exc}"]

    results: list[DeviceResult] = []
    all_samples: list[Sample] = []
    for index, entry in enumerate(meta.devices):
        device = str(entry.get("device"))
        chain = _parse_chain(device, samples.get(device, ()), hashes.get(device, ()), problems)
        all_samples += [item.sample for item in chain]
        try:
            results.append(_recompute(entry, chain, meta, problems))
            _check_head_signature(entry, verify_head, problems)
        except (InvalidRequest, KeyError, TypeError, ValueError) as exc:
            problems.append(f"devices[{index}] is malformed: {exc}")
    listed = {str(entry.get("device")) for entry in meta.devices}
    problems += [
        f"{device}: samples given for a device the certificate omits"
        for device in samples
        if device not in listed
    ]

    expected = certificate_body(
        lease_id=meta.lease,
        cluster_id=meta.cluster,
        devices=results,
        t1_ms=meta.t1_ms,
        t_end_ms=meta.t_end_ms,
        beacons=beacons_used(all_samples),
        interval_ms=meta.interval_ms,
        epoch_ms=meta.epoch_ms,
        max_skew_ms=meta.max_skew_ms,
        issued_at_ms=meta.issued_at_ms,
        head_signatures={
            str(e["device"]): str(e["head_signature"])
            for e in meta.devices
            if "head_signature" in e
        },
    )
    _diff("", body, expected, problems)
    return problems


@dataclass(frozen=True, slots=True)
class _Meta:
    """The certificate's own parameters, read and type-checked."""

    lease: str
    cluster: str
    t1_ms: int
    t_end_ms: int
    interval_ms: int
    epoch_ms: int
    max_skew_ms: int
    issued_at_ms: int
    beacons: dict[int, str]
    devices: list[Mapping[str, Any]]

    @classmethod
    def read(cls, body: Mapping[str, Any]) -> _Meta:
        if body.get("version") != VERSION:
            raise InvalidRequest(
                f"certificate version {body.get('version')!r}; this verifier checks the rules"
                f" of version {VERSION}"
            )
        devices = body["devices"]
        if not isinstance(devices, list) or not all(isinstance(e, Mapping) for e in devices):
            raise InvalidRequest("devices must be a list of objects")
        return cls(
            lease=_str(body, "lease"),
            cluster=_str(body, "cluster"),
            t1_ms=_int(body, "t1_ms"),
            t_end_ms=_int(body, "t_end_ms"),
            interval_ms=_int(body, "interval_ms"),
            epoch_ms=_int(body, "epoch_ms"),
            max_skew_ms=_int(body, "max_skew_ms"),
            issued_at_ms=_int(body, "issued_at_ms"),
            beacons={int(k): str(v) for k, v in body["beacons"].items()},
            devices=devices,
        )


def _parse_chain(
    device: str, dicts: Sequence[Mapping[str, Any]], hashes: Sequence[str], problems: list[str]
) -> list[HashedSample]:
    if len(dicts) != len(hashes):
        problems.append(f"{device}: {len(dicts)} samples but {len(hashes)} hashes")
        return []
    chain: list[HashedSample] = []
    for index, (d, h) in enumerate(zip(dicts, hashes, strict=True)):
        try:
            chain.append(HashedSample(Sample.from_dict(d), h))
        except InvalidRequest as exc:
            problems.append(f"{device}: sample {index}: {exc.message}")
            return []
    return chain


def _recompute(
    entry: Mapping[str, Any], chain: list[HashedSample], meta: _Meta, problems: list[str]
) -> DeviceResult:
    device, worker = str(entry["device"]), str(entry["worker"])
    if not device.startswith(f"{worker}:"):
        problems.append(f"{device}: the device id is not one of worker {worker}'s")
    refusal = check_chain(
        None,
        lease_id=meta.lease,
        device_id=device,
        t1_ms=meta.t1_ms,
        t_end_ms=meta.t_end_ms,
        samples=chain,
        beacons=meta.beacons,
        epoch_ms=meta.epoch_ms,
        max_skew_ms=meta.max_skew_ms,
    )
    if refusal is not None and chain:
        problems.append(f"{device}: {refusal.code.value}: {refusal.message}")
    profile = DeviceProfile(
        DeviceKind(entry["kind"]), str(entry["model"]), _int(entry, "memory_mb")
    )
    samples = [item.sample for item in chain]
    flags = check_telemetry(samples, profile)
    anomaly = score_against(_bands(entry), samples)
    return measure_device(
        device,
        worker,
        profile,
        chain,
        t1_ms=meta.t1_ms,
        t_end_ms=meta.t_end_ms,
        interval_ms=meta.interval_ms,
        flags=flags,
        anomaly_ppm=anomaly.ppm,
        anomaly_reason=anomaly.reason,
        anomaly_bands=anomaly.bands,
        # the coordinator's testimony: the samples cannot show a check the device missed
        spot_misses=[
            MissedSpotCheck.from_dict(v) for v in entry["violations"] if "spot_check" in v
        ],
    )


def _bands(entry: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    given = entry["anomaly_bands"]
    if not isinstance(given, Mapping):
        raise InvalidRequest("anomaly_bands must be an object")
    bands = {}
    for name, band in given.items():
        if name not in SCORED or not isinstance(band, Mapping):
            raise InvalidRequest(f"anomaly_bands has no feature {name!r}")
        mean, std = _int(band, "mean_e6"), _int(band, "std_e6")
        if std < round(STD_FLOOR[name] * BAND_SCALE):
            # the rules floor every deviation; a narrower band would cut pay unearned
            raise InvalidRequest(f"anomaly_bands.{name}.std_e6 is below the feature's floor")
        bands[str(name)] = (mean, std)
    return bands


def _check_head_signature(
    entry: Mapping[str, Any], verify_head: HeadSignatureCheck | None, problems: list[str]
) -> None:
    head, signature = entry.get("head"), entry.get("head_signature")
    if verify_head is None or signature is None or not isinstance(head, Mapping):
        return
    if not verify_head(str(entry["worker"]), str(head["hash"]), str(signature)):
        problems.append(f"{entry['device']}: the worker's signature over the head does not hold")


def _diff(path: str, given: Any, expected: Any, problems: list[str]) -> None:
    if isinstance(given, Mapping) and isinstance(expected, Mapping):
        for key in sorted(set(given) | set(expected), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in expected:
                problems.append(f"{where}: in the certificate, but the samples do not give it")
            elif key not in given:
                problems.append(f"{where}: missing; the samples give {_show(expected[key])}")
            else:
                _diff(where, given[key], expected[key], problems)
    elif isinstance(given, list) and isinstance(expected, list) and len(given) == len(expected):
        for index, (g, e) in enumerate(zip(given, expected, strict=True)):
            _diff(f"{path}[{index}]", g, e, problems)
    elif given != expected or type(given) is not type(expected):
        problems.append(
            f"{path}: the certificate says {_show(given)}, the samples give {_show(expected)}"
        )


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _str(d: Mapping[str, Any], key: str) -> str:
    value = d[key]
    if not isinstance(value, str):
        raise InvalidRequest(f"{key} must be a string")
    return value


def _int(d: Mapping[str, Any], key: str) -> int:
    value = d[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"{key} must be an integer")
    return value
