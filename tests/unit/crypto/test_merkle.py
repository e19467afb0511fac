"""Merkle roots and row proofs: every index proves, and any tampering fails."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from gpupool.crypto.merkle import (
    MerkleTree,
    leaf_hash,
    merkle_proof,
    merkle_root,
    row_bytes,
    row_leaves,
    verify_proof,
)

SIZES = [*range(1, 10), 16]


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def rows(count: int, width: int = 5) -> np.ndarray:
    return np.arange(count * width, dtype=np.int32).reshape(count, width) * 7919 - 40000


def flip(hex_hash: str, position: int) -> str:
    raw = bytearray(bytes.fromhex(hex_hash))
    raw[position] ^= 0x01
    return raw.hex()


@pytest.mark.parametrize("count", SIZES)
def test_every_index_proves_against_the_root(count: int) -> None:
    leaves = row_leaves(rows(count))
    root = merkle_root(leaves)
    for i in range(count):
        assert verify_proof(root, i, leaves[i], merkle_proof(leaves, i), count)


def test_root_follows_the_documented_layout() -> None:
    m = rows(3)
    l0, l1, l2 = (sha(b"\x00" + r.astype("<i4").tobytes()) for r in m)
    # Three leaves: the odd third is promoted unchanged to the next level.
    expected = sha(b"\x01" + sha(b"\x01" + l0 + l1) + l2)
    assert merkle_root(row_leaves(m)) == expected.hex()
    assert merkle_root([l0]) == l0.hex()


def test_leaves_hash_rows_as_little_endian_int32() -> None:
    m = np.array([[1, -2], [2**31 - 1, -(2**31)]], dtype=np.int64)
    assert row_leaves(m)[0] == sha(b"\x00" + b"\x01\x00\x00\x00\xfe\xff\xff\xff")
    assert row_leaves(m) == [leaf_hash(row_bytes(list(r))) for r in m.tolist()]


def test_row_bytes_refuses_values_outside_int32_and_non_integers() -> None:
    assert row_bytes([]) == b""
    for bad in ([2**31], [-(2**31) - 1], [1.5], [2**70], [[1, 2]], ["1"], [None]):
        with pytest.raises(ValueError):
            row_bytes(bad)


@pytest.mark.parametrize("count", [3, 5, 7, 9])
def test_odd_levels_give_the_last_leaf_a_shorter_proof(count: int) -> None:
    tree = MerkleTree(row_leaves(rows(count)))
    full = (count - 1).bit_length()
    assert len(tree.proof(0)) == full
    assert len(tree.proof(count - 1)) < full


@pytest.mark.parametrize("count", SIZES)
def test_a_flipped_byte_in_a_row_fails(count: int) -> None:
    m = rows(count)
    leaves = row_leaves(m)
    root = merkle_root(leaves)
    for i in range(count):
        data = bytearray(row_bytes(m[i]))
        data[i % len(data)] ^= 0x01
        assert not verify_proof(root, i, leaf_hash(bytes(data)), merkle_proof(leaves, i), count)


@pytest.mark.parametrize("count", [c for c in SIZES if c > 1])
def test_a_flipped_byte_in_any_proof_hash_fails(count: int) -> None:
    leaves = row_leaves(rows(count))
    root = merkle_root(leaves)
    for i in range(count):
        proof = merkle_proof(leaves, i)
        for h in range(len(proof)):
            for position in (0, 31):
                forged = [*proof[:h], flip(proof[h], position), *proof[h + 1 :]]
                assert not verify_proof(root, i, leaves[i], forged, count)


@pytest.mark.parametrize("count", [c for c in SIZES if c > 1])
def test_a_proof_for_another_index_fails(count: int) -> None:
    leaves = row_leaves(rows(count))
    root = merkle_root(leaves)
    for i in range(count):
        proof = merkle_proof(leaves, i)
        for j in range(count):
            if j != i:
                assert not verify_proof(root, j, leaves[i], proof, count)


def test_malformed_proofs_and_indices_fail_without_raising() -> None:
    leaves = row_leaves(rows(5))
    root = merkle_root(leaves)
    proof = merkle_proof(leaves, 1)
    assert verify_proof(root.upper(), 1, leaves[1], proof, 5)
    assert not verify_proof(root, 1, leaves[1], [*proof, proof[0]], 5)
    assert not verify_proof(root, 1, leaves[1], proof[:-1], 5)
    assert not verify_proof(root, 1, leaves[1], ["zz" * 32, *proof[1:]], 5)
    assert not verify_proof(root, 1, leaves[1], [proof[0][:-2], *proof[1:]], 5)
    assert not verify_proof(root, 5, leaves[1], proof, 5)
    assert not verify_proof(root, -1, leaves[1], proof, 5)
    assert not verify_proof(root, 1, leaves[1][:31], proof, 5)
    last = merkle_proof(leaves, 4)  # promoted twice: one hash
    assert verify_proof(root, 4, leaves[4], last, 5)
    assert not verify_proof(root, 4, leaves[4], last, 6)


def test_an_empty_tree_and_an_out_of_range_proof_are_refused() -> None:
    with pytest.raises(ValueError):
        MerkleTree([])
    with pytest.raises(IndexError):
        MerkleTree(row_leaves(rows(2))).proof(2)
