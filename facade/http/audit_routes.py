"""JSON routes for audit evidence, under /v1/audit (scope ledger.audit): the same checkpoints and RFC 9162
proofs as ledger.v1.History GetCheckpoint / GetInclusionProof / GetConsistencyProof, in their proto3
JSON form (u64 as decimal strings, hashes as base64). Verify them with ledger_audit_verifier."""

# No `from __future__ import annotations`: FastAPI must see the Annotated dependencies as objects.

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Security
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict

from facade.api.audit_proofs import AuditProofs
from facade.api.gen.ledger.v1 import history_pb2 as hpb
from facade.api.history import signed_checkpoint
from facade.auth import METHOD_SCOPES, SCOPE_AUDIT, Authenticator, Principal
from facade.http import models as m
from facade.http._json import StrictJsonRoute

__all__ = ["audit_router"]

U64_MAX = 2**64 - 1
_HISTORY = "/ledger.v1.History/"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignedCheckpoint(_Strict):
    note: str
    tree_size: str
    root_hash: str
    timestamp_last: str
    key_id: str


class LeafProof(_Strict):
    sequence: str
    leaf_index: str
    leaf_hash: str
    hashes: list[str]


class InclusionProof(_Strict):
    checkpoint: SignedCheckpoint
    proofs: list[LeafProof]


class ConsistencyProof(_Strict):
    old_checkpoint: SignedCheckpoint
    new_checkpoint: SignedCheckpoint
    hashes: list[str]


TreeSize = Annotated[int, Query(ge=0, le=U64_MAX, description="A checkpoint's tree size; 0 = the latest.")]


def audit_router(
    proofs: AuditProofs, authenticator: Authenticator, *, credentials: APIKeyHeader, responses: dict[int | str, Any]
) -> APIRouter:
    router = APIRouter(prefix="/v1/audit", responses=responses, route_class=StrictJsonRoute, tags=["audit"])

    def caller(rpc: str) -> Any:
        scope = METHOD_SCOPES[_HISTORY + rpc]
        assert scope == SCOPE_AUDIT

        async def principal(authorization: Annotated[str | None, Security(credentials)]) -> Principal:
            found = await authenticator.authenticate_async(authorization)
            authenticator.authorize(found, scope)
            return found

        return Depends(principal)

    def extra(rpc: str) -> dict[str, Any]:
        return {
            "operation_id": rpc,
            "description": f"gRPC: `ledger.v1.History/{rpc}`. Scope: `{SCOPE_AUDIT}`.",
            "openapi_extra": {"x-required-scope": SCOPE_AUDIT, "x-grpc-method": _HISTORY + rpc},
        }

    @router.get("/checkpoint", response_model=SignedCheckpoint, summary="A signed checkpoint", **extra("GetCheckpoint"))
    async def get_checkpoint(
        principal: Annotated[Principal, caller("GetCheckpoint")], tree_size: TreeSize = 0
    ) -> dict[str, Any]:
        del principal
        return m.from_message(signed_checkpoint(await proofs.checkpoint(tree_size)))

    @router.get(
        "/inclusion-proof",
        response_model=InclusionProof,
        summary="Inclusion proofs of a change or a transaction's changes",
        **extra("GetInclusionProof"),
    )
    async def get_inclusion_proof(
        principal: Annotated[Principal, caller("GetInclusionProof")],
        sequence: Annotated[int, Query(ge=0, le=U64_MAX, description="The change's chain sequence.")] = 0,
        transaction_id: Annotated[str, Query(max_length=256, description="Every change of a transaction.")] = "",
        event_id: Annotated[str, Query(max_length=64, description="An entry event id, <timestamp>:D|C.")] = "",
        tree_size: TreeSize = 0,
    ) -> dict[str, Any]:
        del principal
        sealed, found = await proofs.inclusion(
            sequence=sequence, transaction_id=transaction_id, event_id=event_id, tree_size=tree_size
        )
        message = hpb.InclusionProof(
            checkpoint=signed_checkpoint(sealed),
            proofs=[
                hpb.LeafProof(sequence=p.sequence, leaf_index=p.sequence - 1, leaf_hash=p.leaf_hash, hashes=p.hashes)
                for p in found
            ],
        )
        return m.from_message(message)

    @router.get(
        "/consistency-proof",
        response_model=ConsistencyProof,
        summary="Proof that a checkpoint extends an older one",
        **extra("GetConsistencyProof"),
    )
    async def get_consistency_proof(
        principal: Annotated[Principal, caller("GetConsistencyProof")],
        new_size: TreeSize = 0,
        # Absent is 0 (proto3), refused by the proofs as over gRPC (OLD_SIZE_REQUIRED).
        old_size: Annotated[int, Query(ge=0, le=U64_MAX, description="The older checkpoint's tree size.")] = 0,
    ) -> dict[str, Any]:
        del principal
        old, new, hashes = await proofs.consistency(old_size, new_size)
        message = hpb.ConsistencyProof(
            old_checkpoint=signed_checkpoint(old), new_checkpoint=signed_checkpoint(new), hashes=hashes
        )
        return m.from_message(message)

    return router
