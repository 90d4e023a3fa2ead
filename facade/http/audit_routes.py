"""JSON routes for audit evidence, under /v1/audit (scope ledger.audit): the same checkpoints and RFC 9162
proofs as ledger.v1.History GetCheckpoint / GetInclusionProof / GetConsistencyProof (facade.operations.history,
declared in facade.http._routes), in their proto3 JSON form (u64 as decimal strings, hashes as base64).
Verify them with ledger_audit_verifier."""

# No `from __future__ import annotations`: FastAPI must see the Annotated dependencies as objects.

from typing import Annotated, Any

from fastapi import APIRouter, Query

from facade.api.gen.ledger.v1 import history_pb2 as hpb
from facade.http import models as m
from facade.http._json import StrictJsonRoute
from facade.http._routes import API_PREFIX, CurrentPrincipal, History, route
from facade.http.admission import request_deadline
from facade.operations import history as ops

__all__ = ["router"]

U64_MAX = 2**64 - 1

router = APIRouter(prefix=API_PREFIX, route_class=StrictJsonRoute)

TreeSize = Annotated[int, Query(ge=0, le=U64_MAX, description="A checkpoint's tree size; 0 = the latest.")]


@route(router, "GetCheckpoint")
async def get_checkpoint(history: History, principal: CurrentPrincipal, tree_size: TreeSize = 0) -> dict[str, Any]:
    request = hpb.GetCheckpointRequest(tree_size=tree_size)
    return m.from_message(await ops.get_checkpoint(history, principal, request, request_deadline.get()))


@route(router, "GetInclusionProof")
async def get_inclusion_proof(
    history: History,
    principal: CurrentPrincipal,
    sequence: Annotated[int, Query(ge=0, le=U64_MAX, description="The change's chain sequence.")] = 0,
    transaction_id: Annotated[str, Query(max_length=256, description="Every change of a transaction.")] = "",
    event_id: Annotated[str, Query(max_length=64, description="An entry event id, <timestamp>:D|C.")] = "",
    tree_size: TreeSize = 0,
) -> dict[str, Any]:
    request = hpb.GetInclusionProofRequest(tree_size=tree_size)
    # `target` is a oneof and the last field set wins: set in reverse order of precedence (as the proofs
    # read them: sequence, then transaction_id, then event_id).
    if event_id:
        request.event_id = event_id
    if transaction_id:
        request.transaction_id = transaction_id
    if sequence:
        request.sequence = sequence
    return m.from_message(await ops.get_inclusion_proof(history, principal, request, request_deadline.get()))


@route(router, "GetConsistencyProof")
async def get_consistency_proof(
    history: History,
    principal: CurrentPrincipal,
    new_size: TreeSize = 0,
    # Absent is 0 (proto3), refused by the proofs as over gRPC (OLD_SIZE_REQUIRED).
    old_size: Annotated[int, Query(ge=0, le=U64_MAX, description="The older checkpoint's tree size.")] = 0,
) -> dict[str, Any]:
    request = hpb.GetConsistencyProofRequest(old_size=old_size, new_size=new_size)
    return m.from_message(await ops.get_consistency_proof(history, principal, request, request_deadline.get()))
