"""An append-only RFC 9162 Merkle tree on disk: O(log n) roots and proofs, nothing recomputed.

Layout: one file per level, `level-00.bin` (leaf hashes) .. `level-NN.bin`, each a run of 32-byte
hashes. Level k holds the roots of the complete subtrees of 2^k leaves, in order, so every complete
subtree is one read away, and the root of any tree size is the fold of at most 64 of them (the
compact range / right frontier). Appending n leaves writes about 2n hashes (64 bytes per entry).

Writers hold `lock` (an flock, so the service and an on-demand `ledger audit checkpoint` in another
process take turns) and re-read the level sizes under it. A crash mid-append can leave a level short
or a partial hash at a file's end: `_recover` truncates partial hashes and rebuilds missing parents
from the level below, so level 0 (fsynced before any checkpoint covers it) is the truth. Readers
read only below a signed tree size, which was complete and fsynced before it was signed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from ledger_audit_verifier import node_hash

__all__ = ["EMPTY_ROOT", "LEVELS_MAX", "MerkleTree"]

HASH_SIZE = 32
LEVELS_MAX = 64
"""Levels 0..63: a tree of up to 2^63 leaves."""
APPEND_LEAVES_MAX = 1 << 20
"""Leaves per append call: bounds the memory an append holds."""
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""RFC 9162: the root of the empty tree is the hash of the empty string."""
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
"""RFC 9162's domain separation of leaf and node hashes (ledger_audit_verifier.leaf_hash, node_hash)."""


def _split(count: int) -> int:
    """The largest power of two smaller than count (count > 1)."""
    assert count > 1
    return 1 << ((count - 1).bit_length() - 1)


class MerkleTree:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._fds: dict[int, int] = {}
        """Level files open so far: only the ~log2(n) levels that exist, opened on first use."""
        self._counts = [0] * LEVELS_MAX
        self._synced: list[int] | None = None
        """Every level's count as this process last left them, all fsynced (None: not yet)."""
        self._lock_fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        self._thread_lock = threading.Lock()
        with self.lock():
            pass  # Recovers a torn append left by a crash.

    def _fd(self, level: int) -> int:
        assert 0 <= level < LEVELS_MAX
        fd = self._fds.get(level)
        if fd is None:
            path = self.directory / f"level-{level:02d}.bin"
            fd = self._fds[level] = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        return fd

    def _levels(self) -> int:
        """Levels with a file: they are created bottom-up, so the first missing one ends them."""
        level = 0
        while level < LEVELS_MAX and (level in self._fds or (self.directory / f"level-{level:02d}.bin").exists()):
            level += 1
        return level

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        os.close(self._lock_fd)
        self._fds.clear()

    @property
    def size(self) -> int:
        """Leaves as of the last refresh (under `lock`, or at open)."""
        return self._counts[0]

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across processes (flock) and threads (an flock on one descriptor does not exclude
        the process's own threads); the sizes are re-read and repaired on entry."""
        with self._thread_lock:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                self._recover()
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _recover(self) -> None:
        levels = self._levels()
        self._counts = [0] * LEVELS_MAX
        for level in range(levels):
            fd = self._fd(level)
            size = os.fstat(fd).st_size
            if size % HASH_SIZE:
                os.ftruncate(fd, size - size % HASH_SIZE)
            self._counts[level] = size // HASH_SIZE
        for level in range(LEVELS_MAX - 1):
            expected = self._counts[level] // 2
            if expected == 0 and self._counts[level + 1] == 0:
                break
            if self._counts[level + 1] > expected:
                os.ftruncate(self._fd(level + 1), expected * HASH_SIZE)
                self._counts[level + 1] = expected
            missing = range(self._counts[level + 1], expected)
            if missing:
                parents = [node_hash(self.node(level, 2 * j), self.node(level, 2 * j + 1)) for j in missing]
                self._write(level + 1, parents)
        # Whatever another process (or a crash) left may not be durable yet: fsync it before building on it.
        # When every level is as this process left it after its last fsync, there is nothing to flush (the
        # files only grow, and only a repair above shrinks them, which changes the counts): ~17 fsyncs of
        # clean files per append and seal, ~8 µs of system CPU each, ~15% of an append's per-batch cost.
        if self._counts != self._synced:
            for fd in self._fds.values():
                os.fsync(fd)
            self._synced = list(self._counts)

    def _write(self, level: int, hashes: Sequence[bytes]) -> None:
        data = b"".join(hashes)
        assert len(data) == HASH_SIZE * len(hashes)
        written = os.write(self._fd(level), data)
        assert written == len(data)
        self._counts[level] += len(hashes)

    def node(self, level: int, index: int) -> bytes:
        """The root of the complete subtree of 2^level leaves starting at leaf index << level."""
        assert 0 <= level < LEVELS_MAX and index >= 0
        data = os.pread(self._fd(level), HASH_SIZE, index * HASH_SIZE)
        assert len(data) == HASH_SIZE
        return data

    def leaf(self, index: int) -> bytes:
        return self.node(0, index)

    def append_leaf_inputs(self, index_first: int, leaf_inputs: Sequence[bytes]) -> int:
        # leaf_hash inlined, as node_hash in `append` (there its call was ~10% of a parent's cost); tests pin
        # the bytes (tests/audit/test_audit_golden.py).
        sha256 = hashlib.sha256
        return self.append(index_first, [sha256(_LEAF_PREFIX + data).digest() for data in leaf_inputs])

    def append(self, index_first: int, leaves: Sequence[bytes]) -> int:
        """Appends leaf hashes at leaf index `index_first`; call under `lock`. Leaves already present
        (a re-emitted batch) must be identical and are skipped. Returns how many were new; durable
        (fsynced) on return."""
        assert len(leaves) <= APPEND_LEAVES_MAX
        assert index_first >= 0
        size = self._counts[0]
        if index_first > size:
            raise ValueError(f"leaf {index_first} appended to a tree of {size} leaves: a gap")
        overlap = min(size - index_first, len(leaves))
        for offset in range(overlap):
            if self.leaf(index_first + offset) != leaves[offset]:
                raise ValueError(f"leaf {index_first + offset} differs from the one already in the tree")
        new = leaves[overlap:]
        sha256 = hashlib.sha256
        level, start, hashes = 0, size, new
        while hashes and level < LEVELS_MAX:
            assert self._counts[level] == start
            self._write(level, hashes)
            parents: list[bytes] = []
            if start % 2 == 1:
                parents.append(node_hash(self.node(level, start - 1), hashes[0]))
                hashes = hashes[1:]
            # node_hash inlined over the pairs: its call was ~10% of a parent's cost.
            pairs = zip(hashes[0::2], hashes[1::2], strict=False)  # An odd last one waits for its sibling.
            parents += [sha256(_NODE_PREFIX + left + right).digest() for left, right in pairs]
            level, start, hashes = level + 1, start // 2, parents
        for written_level in range(level + 1):
            os.fsync(self._fd(written_level))
        self._synced = list(self._counts)
        assert self._counts[0] == size + len(new)
        return len(new)

    def subtree(self, start: int, count: int) -> bytes:
        """MTH of leaves [start, start + count): complete subtrees are read, the rest folded."""
        assert count > 0
        if count & (count - 1) == 0 and start % count == 0:
            level = count.bit_length() - 1
            return self.node(level, start >> level)
        k = _split(count)
        return node_hash(self.subtree(start, k), self.subtree(start + k, count - k))

    def root(self, size: int) -> bytes:
        assert 0 <= size <= self._counts[0]
        return self.subtree(0, size) if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 2.1.3.1 PATH(index, D[size]), leaf to root."""
        if not 0 <= index < size <= self._counts[0]:
            raise ValueError(f"no leaf {index} in a tree of {size} leaves (tree holds {self._counts[0]})")
        proof: list[bytes] = []
        start, count, m = 0, size, index
        while count > 1:
            k = _split(count)
            if m < k:
                proof.append(self.subtree(start + k, count - k))
                count = k
            else:
                proof.append(self.subtree(start, k))
                start, count, m = start + k, count - k, m - k
        proof.reverse()
        return proof

    def consistency_proof(self, size_old: int, size_new: int) -> list[bytes]:
        """RFC 9162 2.1.4.1 PROOF(size_old, D[size_new])."""
        if not 0 <= size_old <= size_new <= self._counts[0]:
            raise ValueError(f"no consistency proof from {size_old} to {size_new} (tree holds {self._counts[0]})")
        if size_old in (0, size_new):
            return []
        proof: list[bytes] = []
        start, count, m, complete = 0, size_new, size_old, True
        while m != count:
            k = _split(count)
            if m <= k:
                proof.append(self.subtree(start + k, count - k))
                count = k
            else:
                proof.append(self.subtree(start, k))
                start, count, m, complete = start + k, count - k, m - k, False
        if not complete:
            proof.append(self.subtree(start, count))
        proof.reverse()
        return proof
