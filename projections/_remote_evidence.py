"""Evidence for an audit export made over the running service (`ledger audit export` without --offline).

The same evidence.json as projections.audit_evidence.attach_evidence (layout: docs/audit.md), built from
what the service publishes instead of the audit log's files (which the service holds): its latest signed
checkpoint (`GET /v1/audit/checkpoint`) and RFC 9162 inclusion proofs (`GET /v1/audit/inclusion-proof`),
scope ledger.audit. The service seals checkpoints on its own schedule; an export that ends after the
latest one is refused with a sentence saying to wait for the next.

The verifier key is the caller's (`--public-key FILE`, from `ledger audit keys --verifier-keys` or the
operator): the bundle is verified with the key the caller trusts, never with one the service sends.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ledger_audit_verifier import EVIDENCE_NAME, VerifierKey, verify_bundle
from projections._service_client import ServiceGateway
from projections.audit import Manifest
from projections.audit_evidence import _BEFORE, EVIDENCE_ALL_ROWS_MAX, Evidence, EvidenceError, _leaf_input_at
from projections.client import ClickHouseClient
from projections.queries import to_int

__all__ = ["attach_remote_evidence"]


@dataclass(frozen=True, slots=True)
class _Checkpoint:
    note: str
    tree_size: int
    key_id: str


def _latest(gateway: ServiceGateway) -> _Checkpoint:
    found = gateway.get("/v1/audit/checkpoint")
    return _Checkpoint(str(found["note"]), int(found["tree_size"]), str(found["key_id"]))


def _proof(gateway: ServiceGateway, sequence: int, tree_size: int) -> list[str]:
    """The sibling hashes (base64) proving change `sequence` in the checkpoint of `tree_size`."""
    assert 1 <= sequence <= tree_size
    found = gateway.get("/v1/audit/inclusion-proof", {"sequence": sequence, "tree_size": tree_size})
    [leaf] = found["proofs"]
    assert int(leaf["sequence"]) == sequence
    hashes: list[str] = leaf["hashes"]
    return hashes


def _boundary(gateway: ServiceGateway, tree_size: int, sequence: int, data: bytes | None) -> object:
    if data is None or not 1 <= sequence <= tree_size:
        return None
    return {
        "sequence": sequence,
        "leaf_input": base64.b64encode(data).decode(),
        "hashes": _proof(gateway, sequence, tree_size),
    }


def attach_remote_evidence(
    directory: Path,
    manifest: Manifest,
    client: ClickHouseClient,
    gateway: ServiceGateway,
    keys: Sequence[VerifierKey],
) -> Evidence:
    """Writes evidence.json for an export just written from the service's read model, then verifies the
    bundle with `keys` as an auditor would (the same document attach_evidence writes)."""
    assert keys
    if manifest.row_count:
        before_sequence = manifest.first_sequence - 1
    else:
        before_sequence = to_int(client.query_rows(_BEFORE, {"t": manifest.timestamp_from})[0][0])
    last_sequence = manifest.last_sequence if manifest.row_count else before_sequence
    sealed = _latest(gateway)
    if sealed.tree_size < last_sequence:
        raise EvidenceError(
            f"the service's latest signed checkpoint holds {sealed.tree_size} changes, the export ends at "
            f"{last_sequence}: export again after its next checkpoint (audit.checkpoint_interval_seconds)"
        )
    matching = [key for key in keys if key.key_id == sealed.key_id]
    if not matching:
        raise EvidenceError(f"--public-key: no key with id {sealed.key_id}, the key that signed the checkpoint")
    key = matching[0]
    after_data = _leaf_input_at(client, last_sequence + 1)
    before_data = _leaf_input_at(client, before_sequence) if before_sequence else None
    if manifest.row_count <= EVIDENCE_ALL_ROWS_MAX:
        sequences = list(range(manifest.first_sequence, manifest.last_sequence + 1)) if manifest.row_count else []
        proof_rows = "all"
    else:
        sequences = [manifest.first_sequence, manifest.last_sequence]
        proof_rows = "first_and_last"
    proofs = [{"sequence": s, "hashes": _proof(gateway, s, sealed.tree_size)} for s in sequences]
    document = {
        "version": 1,
        "checkpoint": sealed.note,
        "key_id": key.key_id,
        "verifier_key": key.text(),
        "proof_rows": proof_rows,
        "proofs": proofs,
        "boundary": {
            "before": _boundary(gateway, sealed.tree_size, before_sequence, before_data),
            "after": _boundary(gateway, sealed.tree_size, last_sequence + 1, after_data),
        },
    }
    path = directory / EVIDENCE_NAME
    path.write_text(json.dumps(document, indent=1) + "\n")
    report = verify_bundle(directory, key)
    if not report.ok:
        with contextlib.suppress(OSError):
            path.unlink()  # Evidence that does not verify is not left next to the export.
        raise EvidenceError(f"the export's evidence does not verify: {report.problems}")
    assert len(proofs) == len(sequences)
    return Evidence(sealed.tree_size, key.key_id, proof_rows, len(proofs))
