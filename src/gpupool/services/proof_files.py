"""A Proof of Time-Lock export on disk, and its offline verification.

The folder holds `certificate.json` (the signed body, its signature and the coordinator's
public key), `samples.jsonl` (every sample, one per line, in chain order per device),
`batches.json` (each batch's signed head) and `keys.json` (workers' public keys; the
certificate body carries them too, under its signature). `verify_folder` needs nothing else:
no coordinator, no network.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from gpupool.crypto.identity import unb64, verify
from gpupool.crypto.timelock import batch_message, certificate_message, sample_hash
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
    (folder / "certificate.json").write_text(json.dumps(certificate, indent=1, sort_keys=True))
    with (folder / "samples.jsonl").open("w") as f:
        for device in sorted(samples):
            for sample in samples[device]:
                f.write(json.dumps(sample, sort_keys=True, separators=(",", ":")) + "\n")
    (folder / "batches.json").write_text(json.dumps(batches, indent=1, sort_keys=True))
    (folder / "keys.json").write_text(json.dumps(keys, indent=1, sort_keys=True))


class ProofFolderError(Exception):
    """The folder is not a readable proof export."""


def read_folder(
    folder: Path,
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise ProofFolderError(f"{folder} is not a proof export: missing {', '.join(missing)}")
    try:
        cert = json.loads((folder / "certificate.json").read_text())
        samples: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for line in (folder / "samples.jsonl").read_text().splitlines():
            if line.strip():
                sample = json.loads(line)
                samples[str(sample.get("device"))].append(sample)
        batches = json.loads((folder / "batches.json").read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProofFolderError(f"{folder}: not valid JSON ({exc})") from exc
    if not isinstance(cert, dict) or not isinstance(batches, list):
        raise ProofFolderError(f"{folder}: certificate.json or batches.json has the wrong shape")
    return cert, dict(samples), batches


def verify_folder(folder: Path, expected_coordinator_key: str | None = None) -> list[str]:
    """Every problem found; an empty list means the proof verifies."""
    cert, samples, batches = read_folder(folder)
    problems: list[str] = []
    body = cert.get("body")
    key = cert.get("coordinator_key", "")
    if not isinstance(body, dict):
        return ["certificate.json has no body"]
    if expected_coordinator_key is not None and key != expected_coordinator_key:
        problems.append("the certificate is signed by another coordinator key than expected")
    if not _holds(key, cert.get("signature", ""), certificate_message(body)):
        problems.append("the coordinator's signature over the certificate does not verify")
    worker_keys: dict[str, str] = body.get("worker_keys", {})
    hashes = {d: [sample_hash(s) for s in rows] for d, rows in samples.items()}
    for batch in batches:
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
    index = next((i for i, s in enumerate(rows) if s.get("seq") == seq), None)
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
