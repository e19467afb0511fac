"""Canonical JSON (sorted keys, no spaces, UTF-8) and SHA-256 helpers.

Anything that is hashed or signed is first put in this one form, so that two parties that
hold the same value compute the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
