"""A sample's bytes: the fast encoder writes exactly the canonical JSON of any value a
sample can hold, so agent, coordinator and offline verifier hash the same bytes."""

from __future__ import annotations

import sys
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gpupool.crypto.canonical import canonical_json
from gpupool.crypto.timelock import sample_json

EVERY_CHARACTER = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)


def test_every_character_is_written_as_canonical_json_writes_it() -> None:
    value = {EVERY_CHARACTER: EVERY_CHARACTER, "short": [chr(c) for c in range(0x800)]}
    assert sample_json(value) == canonical_json(value)


def test_keys_are_sorted_as_canonical_json_sorts_them() -> None:
    keys = ["b", "a", "B", "_", "é", "z", "\u2028", "😀", "\uffff", "aa", "a\u0000", ""]
    value = {k: i for i, k in enumerate(keys)}
    assert sample_json(value) == canonical_json(value)


SAMPLE_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**53), max_value=2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300)
@given(SAMPLE_VALUES)
def test_any_value_a_sample_can_hold_encodes_as_canonical_json(value: Any) -> None:
    assert sample_json(value) == canonical_json(value)
