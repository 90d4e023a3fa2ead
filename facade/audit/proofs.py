"""Audit evidence over the API (ledger.v1.History Get*Proof/GetCheckpoint and /v1/audit/...): the
signed checkpoints and RFC 9162 proofs of the service's audit log, as frozen results the gRPC and HTTP
edges render. Errors are LedgerErrors with a machine-readable reason."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from facade.audit.log import AuditLog, SealedCheckpoint
from facade.domain.errors import ErrorKind, LedgerError
from projections.audit_evidence import PROVE_CHANGES_MAX, sequences_of_event, sequences_of_transaction
from projections.read_model import ReadModel

__all__ = ["AuditProofs", "LeafProofResult"]


@dataclass(slots=True, frozen=True)
class LeafProofResult:
    sequence: int
    leaf_hash: bytes
    hashes: tuple[bytes, ...]


def _not_found(reason: str, message: str) -> LedgerError:
    return LedgerError(ErrorKind.NOT_FOUND, reason, message)


def _invalid(reason: str, message: str) -> LedgerError:
    return LedgerError(ErrorKind.INVALID, reason, message)


class AuditProofs:
    def __init__(self, audit: AuditLog | None, read_model: ReadModel | None) -> None:
        self.audit = audit
        """Set by the server once the audit log is open; None: audit disabled (FAILED_PRECONDITION)."""
        self._read_model = read_model

    def _log(self) -> AuditLog:
        if self.audit is None:
            raise LedgerError(ErrorKind.PRECONDITION, "AUDIT_DISABLED", "the audit log is not enabled")
        return self.audit

    def _checkpoint_blocking(self, tree_size: int) -> SealedCheckpoint:
        log = self._log()
        found = log.checkpoints()
        if not found:
            raise _not_found("NO_CHECKPOINT", "no checkpoint has been sealed yet")
        if tree_size == 0:
            return found[-1]
        for sealed in found:
            if sealed.tree_size == tree_size:
                return sealed
        raise _not_found("CHECKPOINT_NOT_FOUND", f"no checkpoint at tree size {tree_size}")

    async def checkpoint(self, tree_size: int) -> SealedCheckpoint:
        return await asyncio.to_thread(self._checkpoint_blocking, tree_size)

    async def _sequences(self, *, sequence: int, transaction_id: str, event_id: str) -> list[int]:
        if sequence:
            return [sequence]
        if not transaction_id and not event_id:
            raise _invalid("TARGET_REQUIRED", "one of sequence, transaction_id or event_id is required")
        if self._read_model is None:
            raise LedgerError(ErrorKind.PRECONDITION, "READ_MODEL_DISABLED", "lookups by id need the read model")
        if transaction_id:
            found = await self._read_model.query(lambda client: sequences_of_transaction(client, transaction_id))
        else:
            try:
                found = await self._read_model.query(lambda client: sequences_of_event(client, event_id))
            except ValueError as error:
                raise _invalid("INVALID_EVENT_ID", str(error)) from error
        if not found:
            raise _not_found("CHANGE_NOT_FOUND", "no such change in the read model")
        if len(found) > PROVE_CHANGES_MAX:
            raise _invalid("TOO_MANY_CHANGES", f"more than {PROVE_CHANGES_MAX} changes: prove them by sequence")
        return found

    async def inclusion(
        self, *, sequence: int = 0, transaction_id: str = "", event_id: str = "", tree_size: int = 0
    ) -> tuple[SealedCheckpoint, list[LeafProofResult]]:
        sequences = await self._sequences(sequence=sequence, transaction_id=transaction_id, event_id=event_id)
        sealed = await self.checkpoint(tree_size)

        def prove() -> list[LeafProofResult]:
            log = self._log()
            results = []
            for wanted in sequences:
                if not 1 <= wanted <= sealed.tree_size:
                    raise _not_found(
                        "NOT_IN_CHECKPOINT", f"change {wanted} is not in the checkpoint of size {sealed.tree_size}"
                    )
                proof = log.tree.inclusion_proof(wanted - 1, sealed.tree_size)
                results.append(LeafProofResult(wanted, log.tree.leaf(wanted - 1), tuple(proof)))
            return results

        return sealed, await asyncio.to_thread(prove)

    async def consistency(self, old_size: int, new_size: int) -> tuple[SealedCheckpoint, SealedCheckpoint, list[bytes]]:
        old = await self.checkpoint(old_size) if old_size else None
        if old is None:
            raise _invalid("OLD_SIZE_REQUIRED", "old_size must be the tree size of a checkpoint")
        new = await self.checkpoint(new_size)
        if new.tree_size < old.tree_size:
            raise _invalid("INVALID_RANGE", "old_size is larger than new_size")
        proof = await asyncio.to_thread(self._log().tree.consistency_proof, old.tree_size, new.tree_size)
        return old, new, proof
