"""A Proof of Time-Lock export on disk, and its offline verification.

The folder holds `certificate.json` (the signed body, its signature and the coordinator's
public key), `samples.jsonl` (every sample, one per line, in chain order per device),
`batches.json` (each chain's last signed batch: the agent's signature over its head, which
commits to every sample before it) and `keys.json` (workers' public keys; the
certificate body carries them too, under its signature). `verify_folder` needs nothing else:
no coordinator, no network.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gpupool.crypto.canonical import canonical_json
from gpupool.crypto.identity import unb64, verify
from gpupool.crypto.timelock import batch_message, certificate_message
from gpupool.domain.timelock import offline

FILES = ("certificate.json", "samples.jsonl", "batches.json", "keys.json")


def write_folder(
    folder: Path,
    certificate: dict[str, Any],
    samples: dict[str, list[dict[str, Any]]],
    batches: list[dict[str, Any]],
    keys: dict[str, str],
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in (
        ("certificate.json", certificate),
        ("batches.json", batches),
        ("keys.json", keys),
    ):
        (folder / name).write_bytes(canonical_json(value) + b"\n")
    lines = [canonical_json(s) + b"\n" for device in sorted(samples) for s in samples[device]]
    (folder / "samples.jsonl").write_bytes(b"".join(lines))


class ProofFolderError(Exception):
    """The folder is not a readable proof export."""


@dataclass
class ProofFolder:
    certificate: dict[str, Any]
    samples: dict[str, list[dict[str, Any]]]  # per device, in file order
    hashes: dict[str, list[str]]  # sha256 of each sample's line, exactly as stored
    batches: list[dict[str, Any]]


def read_folder(folder: Path) -> ProofFolder:
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise ProofFolderError(f"{folder} is not a proof export: missing {', '.join(missing)}")
    samples: dict[str, list[dict[str, Any]]] = defaultdict(list)
    hashes: dict[str, list[str]] = defaultdict(list)
    try:
        cert = json.loads((folder / "certificate.json").read_bytes())
        lines = [line for line in (folder / "samples.jsonl").read_bytes().split(b"\n") if line]
        # orjson: a device-hour is 3,600 lines, and the standard parser was most of the
        # verification time. It is stricter (UTF-8 only, no NaN, 64-bit integers), which
        # refuses only what no valid sample holds.
        parsed = list(map(orjson.loads, lines))
        batches = json.loads((folder / "batches.json").read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProofFolderError(f"{folder}: not valid JSON ({exc})") from exc
    for line, sample in zip(lines, parsed, strict=True):
        device = str(sample.get("device")) if type(sample) is dict else ""
        samples[device].append(sample)
        # The line's own bytes are hashed: the coordinator hashed the canonical form, so any
        # changed byte breaks the chain or its signed head.
        hashes[device].append(hashlib.sha256(line).hexdigest())
    if not isinstance(cert, dict) or not isinstance(batches, list):
        raise ProofFolderError(f"{folder}: certificate.json or batches.json has the wrong shape")
    return ProofFolder(cert, dict(samples), dict(hashes), batches)


def _canonical_problems(folder: Path) -> list[str]:
    """The small files must be exactly the canonical form of what they hold, so that no byte
    can change (not even whitespace) unnoticed. (Sample lines need no such check: their own
    bytes are hashed into the chain.)"""
    problems = []
    for name in ("certificate.json", "batches.json", "keys.json"):
        raw = (folder / name).read_bytes()
        if raw != canonical_json(json.loads(raw)) + b"\n":
            problems.append(f"{name} is not in canonical form: it was edited")
    return problems


def verify_folder(folder: Path, expected_coordinator_key: str | None = None) -> list[str]:
    """Every problem found; an empty list means the proof verifies. ProofFolderError when
    the folder cannot be read as a proof at all."""
    proof = read_folder(folder)
    try:
        return _verify(folder, proof, expected_coordinator_key)
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
        return [f"the export is malformed: {type(exc).__name__}: {exc}"]


def _verify(folder: Path, proof: ProofFolder, expected_coordinator_key: str | None) -> list[str]:
    cert, samples, hashes = proof.certificate, proof.samples, proof.hashes
    problems = _canonical_problems(folder)
    body = cert.get("body")
    key = cert.get("coordinator_key", "")
    if not isinstance(body, dict):
        return ["certificate.json has no body"]
    if expected_coordinator_key is not None and key != expected_coordinator_key:
        problems.append(
            f"the certificate is signed by the coordinator key {key or '(none)'}, "
            f"not the expected {expected_coordinator_key}"
        )
    if not _holds(key, cert.get("signature", ""), certificate_message(body)):
        problems.append("the coordinator's signature over the certificate does not verify")
    # The ids beside the body are unsigned copies: a proof must not name another lease.
    for name, field in (("lease_id", "lease"), ("cluster_id", "cluster")):
        if cert.get(name) != body.get(field):
            problems.append(f"certificate.json's {name} is not the signed body's {field}")
    worker_keys: dict[str, str] = body.get("worker_keys", {})
    if json.loads((folder / "keys.json").read_bytes()) != worker_keys:
        problems.append("keys.json differs from the worker keys the certificate names")
    for batch in proof.batches:
        problems.extend(_check_batch(body, batch, samples, hashes, worker_keys))
    # The domain re-derives every figure from the samples; the signatures are checked here.
    unsigned = {k: v for k, v in body.items() if k != "worker_keys"}
    problems.extend(
        offline.verify_certificate(unsigned, samples, hashes, verify_sig=lambda _body: True)
    )
    return problems


def _check_batch(
    body: dict[str, Any],
    batch: dict[str, Any],
    samples: dict[str, list[dict[str, Any]]],
    hashes: dict[str, list[str]],
    worker_keys: dict[str, str],
) -> list[str]:
    device, seq, last = (
        batch.get("device_id", ""),
        batch.get("last_seq", -1),
        batch.get("last_hash"),
    )
    worker = str(device).split(":", 1)[0]
    rows = samples.get(device, [])
    index = seq if 0 <= seq < len(rows) and rows[seq].get("seq") == seq else None
    if index is None or hashes[device][index] != last:
        return [f"batch {device}#{seq}: its signed head is not the hash of sample {seq}"]
    message = batch_message(str(body.get("lease")), device, seq, str(last))
    if not _holds(worker_keys.get(worker, ""), batch.get("signature", ""), message):
        return [f"batch {device}#{seq}: the worker's signature does not verify"]
    return []


def _holds(key_b64: str, signature_b64: str, message: bytes) -> bool:
    try:
        return verify(unb64(key_b64), unb64(signature_b64), message)
    except ValueError:
        return False
