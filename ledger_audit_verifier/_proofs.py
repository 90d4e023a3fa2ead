"""Proof documents (JSON) as `ledger audit prove` and `ledger audit consistency` write them.

{"type": "inclusion", "checkpoint": "<signed note>", "sequence": 7, "leaf_index": 6,
 "leaf_hash": "<base64>", "hashes": ["<base64>", ...]}
{"type": "consistency", "old_checkpoint": "<signed note>", "new_checkpoint": "<signed note>",
 "hashes": ["<base64>", ...]}
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence

from ledger_audit_verifier._merkle import ProofError, verify_consistency, verify_inclusion
from ledger_audit_verifier._note import NoteError, VerifierKey, parse_checkpoint_any

__all__ = ["verify_proof_document"]


def _hashes(document: Mapping[str, object]) -> list[bytes]:
    listed = document.get("hashes")
    if not isinstance(listed, list):
        raise ProofError("proof document has no hashes list")
    try:
        return [base64.b64decode(str(h), validate=True) for h in listed]
    except binascii.Error as error:
        raise ProofError(f"proof hash: {error}") from error


def _note(document: Mapping[str, object], name: str) -> bytes:
    note = document.get(name)
    if not isinstance(note, str):
        raise NoteError(f"proof document has no {name}")
    return note.encode()


def verify_proof_document(document: Mapping[str, object], key: VerifierKey | Sequence[VerifierKey]) -> str:
    """Verifies a proof document; returns what it proved, raises ProofError or NoteError otherwise."""
    keys = [key] if isinstance(key, VerifierKey) else list(key)
    kind = document.get("type")
    if kind == "inclusion":
        checkpoint = parse_checkpoint_any(_note(document, "checkpoint"), keys)
        try:
            leaf_index = int(str(document["leaf_index"]))
            leaf = base64.b64decode(str(document["leaf_hash"]), validate=True)
        except (KeyError, ValueError, binascii.Error) as error:
            raise ProofError(f"malformed inclusion proof: {error}") from error
        verify_inclusion(leaf_index, checkpoint.tree_size, leaf, _hashes(document), checkpoint.root_hash)
        return f"leaf {leaf_index} is in the signed tree of size {checkpoint.tree_size}"
    if kind == "consistency":
        old = parse_checkpoint_any(_note(document, "old_checkpoint"), keys)
        new = parse_checkpoint_any(_note(document, "new_checkpoint"), keys)
        verify_consistency(old.tree_size, new.tree_size, _hashes(document), old.root_hash, new.root_hash)
        return f"the signed tree of size {new.tree_size} extends the signed tree of size {old.tree_size}"
    raise ProofError(f"unknown proof document type {kind!r}")
