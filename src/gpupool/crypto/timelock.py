"""The bytes that Proof of Time-Lock hashes and signs.

- A sample's hash is sha256 of its canonical JSON; the next sample names it as `prev`.
- An agent signs each batch it sends over (lease, device, last seq, last hash): signing the
  head commits it to every sample before, through the chain.
- The coordinator signs a certificate's canonical JSON.
- Beacon values are HMAC-SHA256(secret, "beacon:<number>"): unpredictable to anyone without
  the coordinator's secret before the coordinator publishes them, identical on every
  replica that holds the secret, and needing no table of issued beacons.

Every message starts with a domain tag so a signature made for one purpose never verifies
for another.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import orjson

from gpupool.crypto.canonical import canonical_json, sha256_hex

ZERO_HASH = "0" * 64
BEACON_BYTES = 16


def sample_json(sample: Mapping[str, Any]) -> bytes:
    """A sample's canonical JSON: the bytes its hash is taken over.

    A sample holds only strings, integers below 2**53, nulls, lists and objects with string
    keys (`Sample.from_dict` refuses anything else). For such values orjson writes exactly
    the bytes of `canonical_json` (tests/unit/crypto/test_timelock.py compares them for
    every character), about fifteen times faster; the coordinator encodes every sample it
    accepts and the agent every sample it sends.
    """
    return orjson.dumps(sample, option=orjson.OPT_SORT_KEYS)


def sample_hash(sample: Mapping[str, Any]) -> str:
    return sha256_hex(sample_json(sample))


def batch_message(lease_id: str, device_id: str, last_seq: int, last_hash: str) -> bytes:
    return f"gpupool/potl-batch/v1\n{lease_id}\n{device_id}\n{last_seq}\n{last_hash}".encode()


def certificate_message(body: Mapping[str, Any]) -> bytes:
    return b"gpupool/potl-certificate/v1\n" + canonical_json(body)


def beacon_secret(signing_key: bytes) -> bytes:
    """Derive the beacon secret from the coordinator's private signing key."""
    return hashlib.sha256(b"gpupool/beacon-secret/v1\n" + signing_key).digest()


def beacon_value(secret: bytes, number: int) -> str:
    mac = hmac.new(secret, f"beacon:{number}".encode(), hashlib.sha256).digest()
    return mac[:BEACON_BYTES].hex()
