"""The audit log: the Merkle tree of every change, the signing keys and the signed checkpoints.

Files under settings.audit.data_dir:

    tree/level-NN.bin    the Merkle tree (facade.audit.merkle)
    tree/head.json       engine timestamp and chain link of the last leaf (written after the leaves)
    keys/                Ed25519 signing keys (facade.audit.keys)
    checkpoints.jsonl    one signed checkpoint per line, appended and fsynced: {"tree_size", "note"}

Sealing reads the root from the stored subtree roots (O(log n)); it never rehashes the leaves. A
checkpoint is written only once its leaves are fsynced, so every signed root is reproducible from
the tree. The service's own change capture feeds the tree (`AuditSink`); a CLI in another process can
seal on demand: appends and seals take the tree's flock.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from base64 import b64decode, b64encode
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from facade.audit.keys import KeyRing
from facade.audit.merkle import APPEND_LEAVES_MAX, MerkleTree
from facade.settings import AuditSettings, Settings
from ledger_audit_verifier import Checkpoint, checkpoint_body, parse_checkpoint
from ledger_events import checkpoint as heads
from ledger_events.chain import Link

__all__ = [
    "CHECKPOINTS_MAX",
    "AuditLog",
    "LeafBatch",
    "LeafRecord",
    "SealedCheckpoint",
    "audit_directory",
    "open_audit_log",
]

CHECKPOINTS_MAX = 10_000_000
"""Checkpoints kept in the log (one per 10 000 changes by default: 10^11 changes)."""
_CHECKPOINTS = "checkpoints.jsonl"
_PREVIOUS_GENESIS = bytes(32)


@dataclass(slots=True, frozen=True)
class LeafRecord:
    """One change as the tree takes it: its chain link, engine timestamp and leaf input."""

    sequence: int
    engine_timestamp: int
    link: Link
    leaf_input: bytes


@dataclass(slots=True, frozen=True)
class LeafBatch:
    """Consecutive changes as the tree takes them, without an object per change: the leaf inputs of
    sequences sequence_first, sequence_first + 1, ... and the chain head after the last of them. The
    service's capture builds one per batch (facade.audit.sink.leaf_batch): a LeafRecord and a Link per
    change cost more than hashing the change did."""

    sequence_first: int
    leaf_inputs: Sequence[bytes]
    engine_timestamp_last: int
    """The last change's engine timestamp (the head file's `timestamp_last`)."""
    link_last: Link
    """The chain link of the last change (what the head file records after it)."""


@dataclass(slots=True, frozen=True)
class SealedCheckpoint:
    note: str
    checkpoint: Checkpoint

    @property
    def tree_size(self) -> int:
        return self.checkpoint.tree_size


def audit_directory(settings: Settings) -> Path:
    """settings.audit.data_dir, or `audit` next to the engine's data dir (so tests and deployments that
    move the data dir move the audit log with it)."""
    return settings.audit.data_dir or settings.engine.data_dir.parent / "audit"


def open_audit_log(settings: Settings) -> AuditLog:
    return AuditLog(settings.audit, directory=audit_directory(settings))


class AuditLog:
    def __init__(self, settings: AuditSettings, *, directory: Path | None = None) -> None:
        self.settings = settings
        resolved = directory or settings.data_dir
        assert resolved is not None, "no audit data dir: use open_audit_log(settings)"
        self.directory = resolved
        self.tree = MerkleTree(self.directory / "tree")
        self.keys = KeyRing(self.directory, settings.origin, settings.signing_key_file)
        self._head_path = self.directory / "tree" / "head.json"
        self._checkpoints_path = self.directory / _CHECKPOINTS
        self._checkpoints: list[SealedCheckpoint] = []
        self._checkpoints_offset = 0
        self._checkpoints_lock = threading.Lock()
        """The cache is read from API threads and the sealer's thread at once."""

    def close(self) -> None:
        self.tree.close()

    def head(self) -> heads.Checkpoint:
        """The last leaf's engine timestamp and chain link (sequence = tree size once caught up)."""
        return heads.load(self._head_path)

    def append(self, records: Sequence[LeafRecord]) -> int:
        """Adds changes in chain order (re-emitted ones are checked and skipped); returns the new count."""
        if not records:
            return 0
        assert all(b.sequence == a.sequence + 1 for a, b in itertools.pairwise(records))
        last = records[-1]
        return self.append_batch(
            LeafBatch(records[0].sequence, [r.leaf_input for r in records], last.engine_timestamp, last.link)
        )

    def append_batch(self, batch: LeafBatch) -> int:
        """`append` of a LeafBatch: the leaves, durable, then the head file; returns the new count."""
        sequence_last = batch.sequence_first + len(batch.leaf_inputs) - 1
        assert batch.sequence_first >= 1
        assert len(batch.leaf_inputs) <= APPEND_LEAVES_MAX
        if not batch.leaf_inputs:
            return 0
        with self.tree.lock():
            added = self.tree.append_leaf_inputs(batch.sequence_first - 1, batch.leaf_inputs)
            if sequence_last >= self.head().link.sequence:
                heads.save(self._head_path, heads.Checkpoint(batch.engine_timestamp_last, batch.link_last))
            assert self.tree.size >= sequence_last
        return added

    # Checkpoints --------------------------------------------------------------------------------

    def checkpoints(self) -> list[SealedCheckpoint]:
        """Every checkpoint, oldest first, each verified with its own public key once (then cached;
        only lines appended since the last call are read)."""
        with self._checkpoints_lock:
            if not self._checkpoints_path.exists():
                return list(self._checkpoints)
            with self._checkpoints_path.open("rb") as handle:
                handle.seek(self._checkpoints_offset)
                for line in handle:
                    if len(self._checkpoints) >= CHECKPOINTS_MAX:
                        break
                    if not line.endswith(b"\n"):
                        break  # A torn last line (crash mid-append): it was never acknowledged.
                    note = json.loads(line)["note"]
                    verifier = self.keys.verifier(_key_id_of(note))
                    self._checkpoints.append(SealedCheckpoint(note, parse_checkpoint(note.encode(), verifier)))
                    self._checkpoints_offset += len(line)
            return list(self._checkpoints)

    def latest(self) -> SealedCheckpoint | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def covering(self, tree_size: int) -> SealedCheckpoint | None:
        """The oldest checkpoint whose tree holds `tree_size` leaves or more."""
        for sealed in self.checkpoints():
            if sealed.tree_size >= tree_size:
                return sealed
        return None

    def at_size(self, tree_size: int) -> SealedCheckpoint:
        for sealed in self.checkpoints():
            if sealed.tree_size == tree_size:
                return sealed
        raise KeyError(f"no checkpoint at tree size {tree_size}")

    def seal(self) -> SealedCheckpoint:
        """Signs the tree as it is now (a no-op returning the latest when nothing was added)."""
        with self.tree.lock():
            head = self.head()
            size = head.link.sequence
            assert size <= self.tree.size
            latest = self.latest()
            if latest is not None and latest.tree_size == size:
                return latest
            assert latest is None or latest.tree_size < size
            key = self.keys.active()
            body = checkpoint_body(
                origin=self.settings.origin,
                tree_size=size,
                root_hash=self.tree.root(size),
                timestamp_last=head.timestamp_last,
                previous_hash=latest.checkpoint.checkpoint_hash if latest is not None else _PREVIOUS_GENESIS,
            )
            signature = key.sign(body)
            blob = b64encode(bytes.fromhex(key.verifier.key_id) + signature).decode()
            note = body.decode() + f"\n\u2014 {key.verifier.name} {blob}\n"
            sealed = SealedCheckpoint(note, parse_checkpoint(note.encode(), key.verifier))
            line = (json.dumps({"tree_size": size, "note": note}) + "\n").encode()
            fd = os.open(self._checkpoints_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                _drop_torn_tail(fd)
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        assert sealed.tree_size == size
        return sealed


def _drop_torn_tail(fd: int) -> None:
    """A crash mid-append leaves a last line without its newline (never acknowledged): cut it, so the
    next checkpoint starts on a line of its own."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    tail_max = min(size, 64 * 1024)
    tail = os.pread(fd, tail_max, size - tail_max)
    keep = size - tail_max + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
    assert 0 <= keep < size
    os.ftruncate(fd, keep)


def _key_id_of(note: str) -> str:
    """The key id (hex) in a note's first signature line."""
    signature_line = note.split("\n\n", 1)[1].split("\n", 1)[0]
    return b64decode(signature_line.rsplit(" ", 1)[1])[:4].hex()
