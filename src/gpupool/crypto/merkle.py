"""Merkle commitments over the rows of a matrix, with proofs that open single rows.

Layout (docs/challenge.md): leaf i = sha256(0x00 || row i as little-endian int32), inner node
= sha256(0x01 || left || right). The prefixes keep a leaf from ever passing for an inner node.
Levels are built pairwise from the left; a level with an odd count promotes its last node
unchanged, so that node has no sibling there and its proof is one hash shorter. A proof lists
the sibling hashes bottom-up, hex; checking it needs the leaf count, which both sides know (n).
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
_HEX_HASH = re.compile(r"[0-9a-f]{64}")


def leaf_hash(row_bytes: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + row_bytes).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def row_bytes(values: Sequence[int]) -> bytes:
    """One row as it is hashed: little-endian int32. ValueError for non-integers or values
    outside int32 (struct checks both, and is several times faster than NumPy on a list)."""
    try:
        return struct.pack(f"<{len(values)}i", *values)
    except (struct.error, TypeError) as exc:
        raise ValueError("a row is a list of int32 values") from exc


def _leaf(row: memoryview) -> bytes:
    digest = hashlib.sha256(LEAF_PREFIX)
    digest.update(row)  # hashlib lets go of the GIL on buffers this large: threads help
    return digest.digest()


def row_leaves(matrix: npt.NDArray[np.integer], workers: int = 1) -> list[bytes]:
    """The leaf hash of every row of a 2-D integer matrix (hashed as little-endian int32),
    on `workers` threads: the agent hashes inside the coordinator's timed window."""
    if matrix.ndim != 2:
        raise ValueError("row_leaves needs a 2-D matrix")
    data = np.ascontiguousarray(matrix, dtype="<i4")
    rows = [memoryview(data[i]).cast("B") for i in range(data.shape[0])]
    if workers <= 1 or len(rows) < 64:
        return [_leaf(r) for r in rows]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(_leaf, rows, chunksize=max(1, len(rows) // (4 * workers))))


class MerkleTree:
    """Every level of the tree, so any number of proofs costs no rehashing."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        if not leaves:
            raise ValueError("a Merkle tree needs at least one leaf")
        levels = [list(leaves)]
        while len(levels[-1]) > 1:
            level = levels[-1]
            parents = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                parents.append(level[-1])  # promoted unchanged
            levels.append(parents)
        self._levels = levels

    @property
    def count(self) -> int:
        return len(self._levels[0])

    @property
    def root(self) -> str:
        return self._levels[-1][0].hex()

    def proof(self, index: int) -> list[str]:
        if not 0 <= index < self.count:
            raise IndexError(f"leaf {index} is outside 0..{self.count - 1}")
        siblings = []
        for level in self._levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                siblings.append(level[sibling].hex())
            index //= 2
        return siblings


def merkle_root(leaves: Sequence[bytes]) -> str:
    return MerkleTree(leaves).root


def merkle_proof(leaves: Sequence[bytes], index: int) -> list[str]:
    return MerkleTree(leaves).proof(index)


def verify_proof(root: str, index: int, leaf: bytes, proof: Sequence[str], count: int) -> bool:
    """Whether `proof` leads from leaf hash `leaf` at `index` of `count` leaves to `root`.

    Anything malformed (bad hex, a proof of the wrong length, an index out of range) is simply
    False: this checks answers from the network.
    """
    if not 0 <= index < count or len(leaf) != 32:
        return False
    if not all(isinstance(h, str) and _HEX_HASH.fullmatch(h) for h in proof):
        return False
    node, width, used = leaf, count, 0
    while width > 1:
        if index % 2 or index + 1 < width:
            if used == len(proof):
                return False
            sibling = bytes.fromhex(proof[used])
            used += 1
            node = node_hash(sibling, node) if index % 2 else node_hash(node, sibling)
        index //= 2
        width = (width + 1) // 2
    return used == len(proof) and node.hex() == root.lower()
