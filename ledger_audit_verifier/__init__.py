"""Stand-alone verifier for the ledger's audit evidence: needs Python 3.11 and `cryptography` only.

Verifies, offline, with the service's public key alone:
- a signed checkpoint (C2SP signed note with an Ed25519 signature: `parse_checkpoint`),
- an inclusion or consistency proof (RFC 9162: `verify_inclusion`, `verify_consistency`, or a proof
  document written by `ledger audit prove` / `ledger audit consistency`: `verify_proof_document`),
- an export bundle (rows + checkpoint + inclusion proofs: `verify_bundle`).

    python -m ledger_audit_verifier --export DIR --public-key FILE
    python -m ledger_audit_verifier --proof FILE --public-key FILE

Byte layouts: docs/audit.md. Nothing here imports the service, reads a data directory or writes a file.
"""

from __future__ import annotations

from ledger_audit_verifier._bundle import EVIDENCE_NAME, BundleReport, leaf_input, row_leaf_input, verify_bundle
from ledger_audit_verifier._merkle import (
    ProofError,
    leaf_hash,
    node_hash,
    root_from_inclusion,
    verify_consistency,
    verify_inclusion,
)
from ledger_audit_verifier._note import (
    Checkpoint,
    NoteError,
    VerifierKey,
    checkpoint_body,
    key_hash,
    parse_checkpoint,
    parse_checkpoint_any,
    parse_keys,
)
from ledger_audit_verifier._proofs import verify_proof_document

__all__ = [
    "EVIDENCE_NAME",
    "BundleReport",
    "Checkpoint",
    "NoteError",
    "ProofError",
    "VerifierKey",
    "checkpoint_body",
    "key_hash",
    "leaf_hash",
    "leaf_input",
    "node_hash",
    "parse_checkpoint",
    "parse_checkpoint_any",
    "parse_keys",
    "root_from_inclusion",
    "row_leaf_input",
    "verify_bundle",
    "verify_consistency",
    "verify_inclusion",
    "verify_proof_document",
]
