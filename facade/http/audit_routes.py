"""JSON routes for audit evidence, under /v1/audit (scope ledger.audit): the same checkpoints and RFC 9162
proofs as ledger.v1.History GetCheckpoint / GetInclusionProof / GetConsistencyProof, in their proto3
JSON form (u64 as decimal strings, hashes as base64). Verify them with ledger_audit_verifier."""

# No `from __future__ import annotations`: FastAPI must see the Annotated dependencies as objects.

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Security
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict

from facade.api.gen.ledger.v1 import history_pb2 as hpb
from facade.auth import METHOD_SCOPES, SCOPE_AUDIT, Authenticator, Principal
from facade.http import models as m
from facade.http._json import StrictJsonRoute
from facade.operations import history as ops
from facade.operations.history import HistoryBackend

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
    history: HistoryBackend, authenticator: Authenticator, *, credentials: APIKeyHeader, responses: dict[int | str, Any]
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
            "openapi_extra": {"x-required-scope": SCOPE_AUDIT},
        }

    @router.get("/checkpoint", response_model=SignedCheckpoint, summary="A signed checkpoint", **extra("GetCheckpoint"))
    async def get_checkpoint(
        principal: Annotated[Principal, caller("GetCheckpoint")], tree_size: TreeSize = 0
    ) -> dict[str, Any]:
        request = hpb.GetCheckpointRequest(tree_size=tree_size)
        return m.from_message(await ops.get_checkpoint(history, principal, request, None))

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
        request = hpb.GetInclusionProofRequest(tree_size=tree_size)
        # `target` is a oneof and the last field set wins: set in reverse order of precedence (as the
        # proofs read them: sequence, then transaction_id, then event_id).
        if event_id:
            request.event_id = event_id
        if transaction_id:
            request.transaction_id = transaction_id
        if sequence:
            request.sequence = sequence
        return m.from_message(await ops.get_inclusion_proof(history, principal, request, None))

    @router.get(
        "/consistency-proof",
        response_model=ConsistencyProof,
        summary="Proof that a checkpoint extends an older one",
        **extra("GetConsistencyProof"),
    )
    async def get_consistency_proof(
        principal: Annotated[Principal, caller("GetConsistencyProof")],
        old_size: Annotated[int, Query(ge=0, le=U64_MAX, description="The older checkpoint's tree size.")],
        new_size: TreeSize = 0,
    ) -> dict[str, Any]:
        request = hpb.GetConsistencyProofRequest(old_size=old_size, new_size=new_size)
        return m.from_message(await ops.get_consistency_proof(history, principal, request, None))

    return router
