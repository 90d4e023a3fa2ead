"""The same reads through both clients at once: every query over the same data answers the same whole
document on both edges (not only the fields the other tests look at), and a transaction posted on one
edge is the same transaction, with the same id, on the other."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message

from facade.api.gen.ledger.v1 import history_pb2 as hpb
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from tests.behaviour._clients import Edge, Rpc
from tests.behaviour.conftest import Server, Tenant, credit, debit, transfer

pytestmark = pytest.mark.asyncio(loop_scope="package")


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
                account_id=alice, to=int(second["committed_at_ns"]), limit=5, **{"from": int(first["committed_at_ns"])}
            ),
        ),
        (Rpc.GET_BALANCE_AS_OF, hpb.GetBalanceAsOfRequest(account_id=alice, as_of=int(second["committed_at_ns"]) - 1)),
        (Rpc.GET_BALANCE_AS_OF, hpb.GetBalanceAsOfRequest(account_id=bob)),
        (Rpc.GET_DAILY_TOTALS, hpb.GetDailyTotalsRequest(to=end, **{"from": int(first["committed_at_ns"])})),
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
