"""The audit log's files across crashes: a torn checkpoint line is dropped (it was never acknowledged)
and the next checkpoint chains to the last whole one; sealing twice without new changes is a no-op."""

from __future__ import annotations

import hashlib
from pathlib import Path

from facade.audit.log import AuditLog, LeafRecord
from facade.settings import AuditSettings
from ledger_audit_verifier import leaf_hash
from ledger_events.chain import Link


def records(first: int, count: int) -> list[LeafRecord]:
    found = []
    for sequence in range(first, first + count):
        data = f"change {sequence}".encode()
        found.append(LeafRecord(sequence, 1000 + sequence, Link(sequence, b"", hashlib.sha256(data).digest()), data))
    return found


def test_torn_checkpoint_line_is_dropped(tmp_path: Path) -> None:
    log = AuditLog(AuditSettings(data_dir=tmp_path))
    log.append(records(1, 5))
    first = log.seal()
    assert log.seal() == first  # Nothing new: the same checkpoint, no new line.
    path = tmp_path / "checkpoints.jsonl"
    whole = path.read_bytes()
    assert whole.count(b"\n") == 1
    with path.open("ab") as handle:
        handle.write(b'{"tree_size": 9, "note": "ledger-serv')  # A crash mid-append.
    log.close()

    reopened = AuditLog(AuditSettings(data_dir=tmp_path))
    assert [c.tree_size for c in reopened.checkpoints()] == [5]
    reopened.append(records(6, 3))
    second = reopened.seal()
    assert second.tree_size == 8 and second.checkpoint.timestamp_last == 1008
    assert second.checkpoint.previous_hash == first.checkpoint.checkpoint_hash
    assert path.read_bytes().startswith(whole) and path.read_bytes().count(b"\n") == 2
    assert [c.tree_size for c in AuditLog(AuditSettings(data_dir=tmp_path)).checkpoints()] == [5, 8]
    assert reopened.tree.leaf(7) == leaf_hash(b"change 8")
    reopened.close()
