"""RFC 9162 (Certificate Transparency v2) Merkle tree hashing and proof verification.

leaf hash = SHA-256(0x00 || leaf input), node hash = SHA-256(0x01 || left || right); the algorithms
below are RFC 9162 sections 2.1.3.2 (inclusion) and 2.1.4.2 (consistency), step by step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = [
    "HASH_SIZE",
    "PROOF_HASHES_MAX",
    "ProofError",
    "leaf_hash",
    "node_hash",
    "root_from_inclusion",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
PROOF_HASHES_MAX = 128
"""A tree of at most 2^64 leaves needs at most 64 hashes per inclusion proof and ~2x per consistency
proof: anything longer is refused before any hashing."""


class ProofError(ValueError):
    """A proof does not verify (wrong root, wrong size, malformed)."""


def leaf_hash(leaf_input: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf_input).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _check_hashes(proof: Sequence[bytes]) -> None:
    if len(proof) > PROOF_HASHES_MAX:
        raise ProofError(f"proof has {len(proof)} hashes, more than {PROOF_HASHES_MAX}")
    if any(len(h) != HASH_SIZE for h in proof):
        raise ProofError("proof hash of the wrong size")


def root_from_inclusion(leaf_index: int, tree_size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root implied by an inclusion proof (RFC 9162 2.1.3.2); raises ProofError when malformed."""
    _check_hashes(proof)
    if not 0 <= leaf_index < tree_size:
        raise ProofError(f"leaf index {leaf_index} outside a tree of size {tree_size}")
    fn, sn, r = leaf_index, tree_size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof too short")
    return r


def verify_inclusion(leaf_index: int, tree_size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    if root_from_inclusion(leaf_index, tree_size, leaf, proof) != root:
        raise ProofError(f"leaf {leaf_index} is not in the tree of size {tree_size} with this root")


def verify_consistency(size_old: int, size_new: int, proof: Sequence[bytes], root_old: bytes, root_new: bytes) -> None:
    """RFC 9162 2.1.4.2: the tree of size_new extends the tree of size_old (append-only)."""
    _check_hashes(proof)
    if not 0 <= size_old <= size_new:
        raise ProofError(f"old size {size_old} is not within 0..{size_new}")
    if size_old == size_new:
        if proof or root_old != root_new:
            raise ProofError("equal sizes need an empty proof and equal roots")
        return
    if size_old == 0:
        if proof:
            raise ProofError("a consistency proof from the empty tree is empty")
        return
    path = list(proof)
    if size_old & (size_old - 1) == 0:  # An exact power of two: the old root is the first subtree.
        path.insert(0, root_old)
    if not path:
        raise ProofError("empty consistency proof")
    fn, sn = size_old - 1, size_new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != root_old or sr != root_new:
        raise ProofError(f"the tree of size {size_new} does not extend the tree of size {size_old}")
