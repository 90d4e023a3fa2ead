"""Evidence for audit exports: the signed checkpoint covering the rows and inclusion proofs to it.

`attach_evidence` writes `evidence.json` next to an export's files and manifest (layout: docs/audit.md,
checked by ledger_audit_verifier.verify_bundle):

    {"version": 1, "checkpoint": "<signed note>", "key_id": "<hex>", "verifier_key": "<name+id+key>",
     "proof_rows": "all" | "first_and_last", "proofs": [{"sequence": s, "hashes": ["<base64>", ...]}]}

Every row is proved for exports of at most EVIDENCE_ALL_ROWS_MAX rows; larger ones prove their first
and last rows (a leaf commits to the whole chain before it, so the last row's proof covers the rest).

`catch_up` extends the tree from the read model's chain when the service has not fed it that far
(a CLI export on the service's machine): rows must continue the chain from the tree's head, and a
leaf already in the tree must be identical, so the read model can add leaves but never change one.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from facade.audit.log import AuditLog, LeafRecord, SealedCheckpoint
from ledger_audit_verifier import EVIDENCE_NAME, verify_bundle
from ledger_events.chain import Link, canonical_bytes
from projections.audit import _SELECT, ChainRow, Manifest, _chain_pages, _row
from projections.client import ClickHouseClient
from projections.queries import TIMESTAMP_MAX, to_int
from projections.rows import CHANGE_VALUES

__all__ = [
    "EVIDENCE_ALL_ROWS_MAX",
    "PROVE_CHANGES_MAX",
    "Evidence",
    "attach_evidence",
    "catch_up",
    "row_leaf_input",
    "sequences_of_event",
    "sequences_of_transaction",
]

EVIDENCE_ALL_ROWS_MAX = 1000
"""Exports up to this many rows carry a proof for every row; larger ones for their first and last."""


class EvidenceError(Exception):
    """No signed checkpoint can cover the export (the tree is behind), or the evidence does not verify."""


@dataclass(slots=True, frozen=True)
class Evidence:
    tree_size: int
    key_id: str
    proof_rows: str
    proofs: int


def row_leaf_input(row: ChainRow) -> bytes:
    change = CHANGE_VALUES[row.change]
    data = canonical_bytes(row.chain_sequence, row.engine_timestamp, change, row.transfer(), row.metadata_bytes())
    return bytes.fromhex(row.chain_previous_hash) + data


def catch_up(audit: AuditLog, client: ClickHouseClient) -> int:
    """Appends the read model's chain rows after the tree's head; returns how many leaves were added."""
    head = audit.head()
    previous = head.link
    added = 0
    for page in _chain_pages(client, head.timestamp_last + 1, TIMESTAMP_MAX):
        records: list[LeafRecord] = []
        for row in page:
            data = row_leaf_input(row)
            if row.chain_sequence != previous.sequence + 1 or bytes.fromhex(row.chain_previous_hash) != previous.hash:
                raise EvidenceError(f"read model chain breaks at sequence {previous.sequence + 1}")
            if hashlib.sha256(data).hexdigest() != row.chain_hash:
                raise EvidenceError(f"read model row {row.chain_sequence} does not match its chain hash")
            previous = Link(row.chain_sequence, previous.hash, bytes.fromhex(row.chain_hash))
            records.append(LeafRecord(row.chain_sequence, row.engine_timestamp, previous, data))
        added += audit.append(records)
    return added


PROVE_CHANGES_MAX = 64
"""Changes proved per request by transaction id (its legs and phases); more is refused."""


def sequences_of_transaction(client: ClickHouseClient, transaction_id: str) -> list[int]:
    """Chain sequences of a transaction's changes (at most PROVE_CHANGES_MAX + 1, to detect more)."""
    rows = client.query_rows(
        "SELECT DISTINCT chain_sequence FROM transactions WHERE transaction_id = {id:String} "
        "ORDER BY chain_sequence LIMIT {limit:UInt32}",
        {"id": transaction_id, "limit": PROVE_CHANGES_MAX + 1},
    )
    return [to_int(row[0]) for row in rows]


def sequences_of_event(client: ClickHouseClient, event_id: str) -> list[int]:
    """The chain sequence of the change an entry event id ("<engine timestamp>:D|C") belongs to."""
    timestamp_text, _, side = event_id.partition(":")
    if not timestamp_text.isdigit() or side not in ("D", "C"):
        raise ValueError(f"event id {event_id!r} is not <engine timestamp>:D or :C")
    rows = client.query_rows(
        "SELECT DISTINCT chain_sequence FROM transactions WHERE engine_timestamp = {t:UInt64}",
        {"t": int(timestamp_text)},
    )
    return [to_int(row[0]) for row in rows]


_ROW_AT = f"SELECT {_SELECT} FROM transactions WHERE chain_sequence = {{s:UInt64}} LIMIT 1"
_BEFORE = "SELECT max(chain_sequence) FROM transactions WHERE engine_timestamp < {t:UInt64}"


def _leaf_input_at(client: ClickHouseClient, sequence: int) -> bytes | None:
    found = client.query_rows(_ROW_AT, {"s": sequence})
    return row_leaf_input(_row(found[0])) if found else None


def _boundary(audit: AuditLog, sealed: SealedCheckpoint, sequence: int, data: bytes | None) -> object:
    """The change at `sequence` (outside the export), proved in the checkpoint; None beyond it."""
    if data is None or not 1 <= sequence <= sealed.tree_size:
        return None
    proof = audit.tree.inclusion_proof(sequence - 1, sealed.tree_size)
    return {
        "sequence": sequence,
        "leaf_input": base64.b64encode(data).decode(),
        "hashes": [base64.b64encode(h).decode() for h in proof],
    }


def _covering(audit: AuditLog, last_sequence: int) -> SealedCheckpoint:
    sealed = audit.covering(last_sequence)
    if sealed is None:
        sealed = audit.seal()
    if sealed.tree_size < last_sequence:
        raise EvidenceError(
            f"the audit tree holds {sealed.tree_size} changes, the export ends at {last_sequence}: "
            "let the service catch up, then export again"
        )
    return sealed


def attach_evidence(directory: Path, manifest: Manifest, audit: AuditLog, client: ClickHouseClient) -> Evidence:
    """Writes evidence.json for an export just written, then verifies the bundle as an auditor would.
    Besides the rows' proofs, it proves the changes right before and after the range (boundaries), so
    rows cut at either end are found: the rows are all of the range, not just genuine."""
    if manifest.row_count:
        before_sequence = manifest.first_sequence - 1
    else:
        before_sequence = to_int(client.query_rows(_BEFORE, {"t": manifest.timestamp_from})[0][0])
    last_sequence = manifest.last_sequence if manifest.row_count else before_sequence
    after_data = _leaf_input_at(client, last_sequence + 1)
    # Prefer a checkpoint that holds the change after the range, so the range's end is proved too.
    sealed: SealedCheckpoint | None = None
    if after_data is not None:
        with contextlib.suppress(EvidenceError):
            sealed = _covering(audit, last_sequence + 1)
    if sealed is None:
        sealed = _covering(audit, last_sequence)
    before_data = _leaf_input_at(client, before_sequence) if before_sequence else None
    if manifest.row_count <= EVIDENCE_ALL_ROWS_MAX:
        sequences = list(range(manifest.first_sequence, manifest.last_sequence + 1)) if manifest.row_count else []
        proof_rows = "all"
    else:
        sequences = [manifest.first_sequence, manifest.last_sequence]
        proof_rows = "first_and_last"
    proofs = [
        {
            "sequence": sequence,
            "hashes": [
                base64.b64encode(h).decode() for h in audit.tree.inclusion_proof(sequence - 1, sealed.tree_size)
            ],
        }
        for sequence in sequences
    ]
    key = audit.keys.verifier(sealed.checkpoint.key_id)
    document = {
        "version": 1,
        "checkpoint": sealed.note,
        "key_id": key.key_id,
        "verifier_key": key.text(),
        "proof_rows": proof_rows,
        "proofs": proofs,
        "boundary": {
            "before": _boundary(audit, sealed, before_sequence, before_data),
            "after": _boundary(audit, sealed, last_sequence + 1, after_data),
        },
    }
    (directory / EVIDENCE_NAME).write_text(json.dumps(document, indent=1) + "\n")
    report = verify_bundle(directory, key)
    if not report.ok:
        raise EvidenceError(f"the export's evidence does not verify: {report.problems}")
    return Evidence(sealed.tree_size, key.key_id, proof_rows, len(proofs))
