"""The same reads through both clients at once: every query over the same data answers the same whole
document on both edges (not only the fields the other tests look at), and a transaction posted on one
edge is the same transaction, with the same id, on the other."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf.message import Message

from facade.api.gen.ledger.v1 import history_pb2 as hpb
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.auth import SCOPE_AUDIT, SCOPE_READ
from tests.behaviour._clients import Caller, Code, Edge, Refused, Rpc, since
from tests.behaviour.conftest import AUDIT_CHECKPOINT_ENTRIES, Server, Tenant, credit, debit, transfer

pytestmark = pytest.mark.asyncio(loop_scope="package")

CHECKPOINT_WAIT_SECONDS = 30.0
CHECKPOINT_POLL_SECONDS = 0.05


async def test_every_read_answers_the_same_document_on_both_edges(server: Server) -> None:
    writer = Tenant(server, server.clients[Edge.GRPC], "same-answers")
    alice, bob = await writer.account("alice"), await writer.account("bob")
    meta = pb.TransactionMetadata(source="pos", correlation_id="same-answers-1", description="lunch", labels={"k": "v"})
    first = await writer.post("s1", credit(alice, 10_000), metadata=meta)
    second = await writer.post("s2", transfer(alice, bob, 2_500), metadata=meta)
    hold = await writer.post("s3", transfer(bob, alice, 100), authorize_only=True)
    last = await writer.post("s4", debit(bob, 500), metadata=pb.TransactionMetadata(source="atm"))
    await writer.caught_up(last["committed_at_ns"])
    end = int(last["committed_at_ns"]) + 1
    reads: list[tuple[Rpc, Message]] = [
        (Rpc.GET_ACCOUNT, pb.GetAccountRequest(account_id=alice)),
        (Rpc.GET_BALANCE, pb.GetBalanceRequest(account_id=bob)),
        (Rpc.LIST_ACCOUNTS, pb.ListAccountsRequest(page_size=1)),
        (Rpc.GET_TRANSACTION, pb.GetTransactionRequest(transaction_id=second["transaction_id"])),
        (Rpc.GET_TRANSACTION, pb.GetTransactionRequest(idempotency_key="s3")),
        (Rpc.LIST_ACCOUNT_ENTRIES, pb.ListAccountEntriesRequest(account_id=bob, descending=True)),
        (Rpc.GET_STATEMENT, hpb.GetStatementRequest(account_id=alice, to=end)),
        (
            Rpc.GET_STATEMENT,
            hpb.GetStatementRequest(
                account_id=alice, to=int(second["committed_at_ns"]), limit=5, **since(int(first["committed_at_ns"]))
            ),
        ),
        (Rpc.GET_BALANCE_AS_OF, hpb.GetBalanceAsOfRequest(account_id=alice, as_of=int(second["committed_at_ns"]) - 1)),
        (Rpc.GET_BALANCE_AS_OF, hpb.GetBalanceAsOfRequest(account_id=bob)),
        (Rpc.GET_DAILY_TOTALS, hpb.GetDailyTotalsRequest(to=end, **since(int(first["committed_at_ns"])))),
        (
            Rpc.LIST_TRANSACTIONS_BY_CORRELATION,
            hpb.ListTransactionsByCorrelationRequest(correlation_id="same-answers-1"),
        ),
        (Rpc.RECONCILE, hpb.ReconcileRequest()),
    ]
    caller = writer.caller()
    for rpc, request in reads:
        over_grpc = await server.clients[Edge.GRPC].call(rpc, request, caller=caller)
        over_http = await server.clients[Edge.HTTP].call(rpc, request, caller=caller)
        assert over_http == over_grpc, rpc
    assert hold["status"] == "TRANSACTION_STATUS_AUTHORIZED"


async def test_a_transaction_posted_on_one_edge_is_the_same_on_the_other(server: Server) -> None:
    grpc_side = Tenant(server, server.clients[Edge.GRPC], "cross-edge")
    http_side = Tenant(server, server.clients[Edge.HTTP], "cross-edge")
    alice = await http_side.account("alice")
    assert await grpc_side.account("alice") == alice, "one account, created on either edge"
    over_http = await http_side.post("x1", credit(alice, 300))
    again = await grpc_side.post("x1", credit(alice, 300))
    assert again["deduplicated"] is True and {**again, "deduplicated": False} == over_http
    reused = await grpc_side.refused(
        Rpc.POST_TRANSACTION, pb.PostTransactionRequest(idempotency_key="x1", legs=[credit(alice, 301)])
    )
    assert reused.reason == "IDEMPOTENCY_KEY_REUSED"
    assert await grpc_side.available(alice) == await http_side.available(alice) == 300


async def test_audit_evidence_is_the_same_document_on_both_edges(server: Server) -> None:
    """Signed checkpoints and RFC 9162 proofs (ledger.v1.History GetCheckpoint, GetInclusionProof,
    GetConsistencyProof) over the same tree: the same document on both edges (bytes as base64, as proto3
    JSON has them), and the same refusals."""
    writer = Tenant(server, server.clients[Edge.GRPC], "same-evidence")
    alice = await writer.account("alice")
    posted = [await writer.post(f"e{i}", credit(alice, 10 + i)) for i in range(2 * AUDIT_CHECKPOINT_ENTRIES)]
    auditor = server.caller("same-evidence", frozenset({SCOPE_AUDIT}))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CHECKPOINT_WAIT_SECONDS
    last = hpb.GetInclusionProofRequest(transaction_id=posted[-1]["transaction_id"])
    while True:  # Sealed every few changes, proven once projected: wait for both.
        try:
            proof = await writer.call(Rpc.GET_INCLUSION_PROOF, last, auditor)
            break
        except Refused as refusal:
            reason = refusal.reason
        assert reason in ("NO_CHECKPOINT", "CHANGE_NOT_FOUND", "NOT_IN_CHECKPOINT"), reason
        assert loop.time() < deadline, "no checkpoint holds the last change"
        await asyncio.sleep(CHECKPOINT_POLL_SECONDS)
    assert proof["proofs"] and proof["checkpoint"]["note"]
    size = int(proof["checkpoint"]["tree_size"])
    first = hpb.GetInclusionProofRequest(transaction_id=posted[0]["transaction_id"], tree_size=size)
    reads: list[tuple[Rpc, Message]] = [
        (Rpc.GET_CHECKPOINT, hpb.GetCheckpointRequest(tree_size=size)),
        (Rpc.GET_INCLUSION_PROOF, first),
        (Rpc.GET_INCLUSION_PROOF, last),
        (Rpc.GET_CONSISTENCY_PROOF, hpb.GetConsistencyProofRequest(old_size=size, new_size=size)),
    ]
    for rpc, request in reads:
        over_grpc = await server.clients[Edge.GRPC].call(rpc, request, caller=auditor)
        over_http = await server.clients[Edge.HTTP].call(rpc, request, caller=auditor)
        assert over_http == over_grpc, rpc
    refusals: list[tuple[Rpc, Message, Caller, Code, str]] = [
        (
            Rpc.GET_CHECKPOINT,
            hpb.GetCheckpointRequest(),
            writer.caller(frozenset({SCOPE_READ})),
            Code.PERMISSION_DENIED,
            "MISSING_SCOPE",
        ),
        (
            Rpc.GET_CHECKPOINT,
            hpb.GetCheckpointRequest(tree_size=size + 10**9),
            auditor,
            Code.NOT_FOUND,
            "CHECKPOINT_NOT_FOUND",
        ),
        (Rpc.GET_INCLUSION_PROOF, hpb.GetInclusionProofRequest(), auditor, Code.INVALID_ARGUMENT, "TARGET_REQUIRED"),
        (
            Rpc.GET_CONSISTENCY_PROOF,
            hpb.GetConsistencyProofRequest(new_size=size),
            auditor,
            Code.INVALID_ARGUMENT,
            "OLD_SIZE_REQUIRED",
        ),
    ]
    for rpc, request, caller, code, reason in refusals:
        for edge, client in server.clients.items():
            refused = await Tenant(server, client, "same-evidence").refused(rpc, request, caller)
            assert (refused.code, refused.reason) == (code, reason), (edge, rpc, request)
