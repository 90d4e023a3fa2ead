"""The on-disk Merkle tree against the RFC 9162 definition computed naively, with the stand-alone
verifier checking every inclusion and consistency proof; re-emitted, conflicting and torn appends."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from facade.audit.merkle import EMPTY_ROOT, MerkleTree
from ledger_audit_verifier import ProofError, leaf_hash, node_hash, verify_consistency, verify_inclusion

SIZE_MAX = 40


def naive_root(leaves: list[bytes]) -> bytes:
    """RFC 9162 2.1.1 MTH, straight from the definition."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(naive_root(leaves[:k]), naive_root(leaves[k:]))


LEAVES = [leaf_hash(f"change {i}".encode()) for i in range(SIZE_MAX)]


@pytest.fixture
def tree(tmp_path: Path) -> MerkleTree:
    tree = MerkleTree(tmp_path / "tree")
    with tree.lock():
        # Uneven batches, one overlapping a re-emitted leaf, as the change capture delivers them.
        assert tree.append(0, LEAVES[:3]) == 3
        assert tree.append(2, LEAVES[2:17]) == 14
        assert tree.append(17, LEAVES[17:]) == SIZE_MAX - 17
    return tree


def test_roots_and_every_proof_verify(tree: MerkleTree) -> None:
    assert tree.root(0) == EMPTY_ROOT
    for size in range(SIZE_MAX + 1):
        root = tree.root(size)
        assert root == naive_root(LEAVES[:size])
        for index in range(size):
            verify_inclusion(index, size, LEAVES[index], tree.inclusion_proof(index, size), root)
        for size_old in range(size + 1):
            verify_consistency(size_old, size, tree.consistency_proof(size_old, size), tree.root(size_old), root)


def test_wrong_proofs_are_refused(tree: MerkleTree) -> None:
    root = tree.root(21)
    proof = tree.inclusion_proof(5, 21)
    with pytest.raises(ProofError):
        verify_inclusion(6, 21, LEAVES[5], proof, root)  # Another position.
    with pytest.raises(ProofError):
        verify_inclusion(5, 21, LEAVES[6], proof, root)  # Another leaf.
    with pytest.raises(ProofError):
        verify_inclusion(
            5, 8, LEAVES[5], proof, root
        )  # Another size (another shape: the size is signed with the root).
    with pytest.raises(ProofError):
        verify_inclusion(5, 21, LEAVES[5], proof[:-1], root)  # Truncated.
    consistency = tree.consistency_proof(13, 21)
    with pytest.raises(ProofError):
        verify_consistency(13, 21, consistency, tree.root(12), root)
    with pytest.raises(ProofError):
        verify_consistency(13, 21, consistency[1:], tree.root(13), root)
    forked = node_hash(tree.root(13), LEAVES[0])
    with pytest.raises(ProofError):
        verify_consistency(13, 21, consistency, tree.root(13), forked)


def test_appends_never_rewrite_history(tree: MerkleTree) -> None:
    with tree.lock(), pytest.raises(ValueError, match="differs"):
        tree.append(10, [LEAVES[11]])
    with tree.lock(), pytest.raises(ValueError, match="gap"):
        tree.append(SIZE_MAX + 1, [LEAVES[0]])
    with tree.lock():
        assert tree.append(30, LEAVES[30:]) == 0  # Re-emitted after a crash: checked and skipped.
    assert tree.root(SIZE_MAX) == naive_root(LEAVES)


def test_torn_append_is_repaired_on_reopen(tmp_path: Path, tree: MerkleTree) -> None:
    """A crash after the leaves but before their parents (and mid-hash): reopening rebuilds the
    parents from level 0 and drops the partial hash."""
    tree.close()
    directory = tmp_path / "tree"
    os.truncate(directory / "level-01.bin", 3 * 32)
    os.truncate(directory / "level-03.bin", 0)
    with (directory / "level-00.bin").open("ab") as handle:
        handle.write(b"\x07" * 5)
    reopened = MerkleTree(directory)
    assert reopened.size == SIZE_MAX
    assert reopened.root(SIZE_MAX) == naive_root(LEAVES)
    verify_inclusion(33, SIZE_MAX, LEAVES[33], reopened.inclusion_proof(33, SIZE_MAX), naive_root(LEAVES))
    reopened.close()


def test_storage_is_about_two_hashes_per_leaf(tmp_path: Path, tree: MerkleTree) -> None:
    assert tree.size == SIZE_MAX
    stored = sum(path.stat().st_size for path in (tmp_path / "tree").glob("level-*.bin"))
    assert 32 * SIZE_MAX <= stored < 2 * 32 * SIZE_MAX


def test_what_another_writer_appended_is_fsynced_before_this_one_builds_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock fsyncs every level unless the files are exactly as this tree left them after its own
    fsynced append: another writer's leaves (a crash may have kept them from being flushed) are made
    durable before anything is appended or signed over them; this tree's own are not flushed twice."""
    directory = tmp_path / "tree"
    ours, theirs = MerkleTree(directory), MerkleTree(directory)
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with ours.lock():
        ours.append(0, LEAVES[:5])
    written = len(synced)
    assert written >= 3  # Levels 0, 1 and 2 (5 leaves), each fsynced by the append itself.
    with ours.lock():
        assert ours.size == 5
    assert len(synced) == written  # Nothing new on disk: nothing to flush.
    with theirs.lock():
        assert len(synced) > written  # The files are not as `theirs` last left them: all flushed.
        theirs.append(5, LEAVES[5:9])
    written = len(synced)
    with ours.lock():
        assert ours.size == 9
        assert len(synced) - written == len(ours._fds)  # Another writer's leaves: every level flushed.
        assert ours.root(9) == naive_root(LEAVES[:9])
    ours.close()
    theirs.close()
