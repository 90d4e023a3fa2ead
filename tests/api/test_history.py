"""ledger.v1.History over loopback gRPC: the read model (chDB) fed by the in-service projector from the
engine's change feed, answering with the same ownership and scope rules as the ledger API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from facade.api.errors import error_info
from facade.api.gen.ledger.v1 import history_pb2 as hpb
from facade.api.gen.ledger.v1 import history_pb2_grpc as hrpc
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.auth import SCOPE_READ, SCOPE_WRITE
from tests.api.conftest import Api, credit, debit, open_api, transfer

WAIT_SECONDS = 30.0


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    instance = await open_api(tmp_path, history=True)
    try:
        yield instance
    finally:
        await instance.channel.close()
        await instance.server.stop()


def history(api: Api) -> Any:
    return hrpc.HistoryStub(api.channel)


async def caught_up(api: Api, timestamp: int) -> None:
    """Waits until the read model holds the change committed at `timestamp`."""
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while True:
        totals = await history(api).GetDailyTotals(hpb.GetDailyTotalsRequest(), metadata=api.auth())
        if totals.projected_until >= timestamp:
            return
        assert asyncio.get_running_loop().time() < deadline, "projector did not catch up"
        await asyncio.sleep(0.05)


async def test_statement_balances_totals_correlation_reconcile(api: Api) -> None:
    alice, bob = await api.account("alice"), await api.account("bob")
    meta = pb.TransactionMetadata(source="pos", correlation_id="order-7", description="lunch")
    first = await api.post("h1", credit(alice, 10_000), metadata=meta)
    second = await api.post("h2", transfer(alice, bob, 2_500), metadata=meta)
    third = await api.post("h3", debit(bob, 500), metadata=pb.TransactionMetadata(source="atm"))
    await caught_up(api, third.committed_at_ns)
    stub = history(api)

    statement = await stub.GetStatement(hpb.GetStatementRequest(account_id=alice), metadata=api.auth())
    assert [(line.side, line.amount, line.signed_amount) for line in statement.lines] == [
        ("CREDIT", "10000", "10000"),
        ("DEBIT", "2500", "-2500"),
    ]
    assert [line.transaction_id for line in statement.lines] == [first.transaction_id, second.transaction_id]
    assert statement.lines[1].counterparty_account_id == bob
    assert statement.lines[1].correlation_id == "order-7" and statement.lines[1].description == "lunch"
    assert statement.opening.credits_posted == "0"
    assert (statement.closing.credits_posted, statement.closing.debits_posted) == ("10000", "2500")
    assert not statement.truncated and statement.projected_until >= third.committed_at_ns

    # A period that ends before the transfer: only the credit, closing balance as of then.
    early = await stub.GetStatement(
        hpb.GetStatementRequest(account_id=alice, to=second.committed_at_ns), metadata=api.auth()
    )
    assert [line.amount for line in early.lines] == ["10000"]
    assert (early.closing.credits_posted, early.closing.debits_posted) == ("10000", "0")

    # As-of balances: between the credit and the transfer, and now (equal to the engine's balance).
    then = await stub.GetBalanceAsOf(
        hpb.GetBalanceAsOfRequest(account_id=alice, as_of=second.committed_at_ns - 1), metadata=api.auth()
    )
    assert (then.credits_posted, then.debits_posted, then.timestamp) == ("10000", "0", first.committed_at_ns)
    now = await stub.GetBalanceAsOf(hpb.GetBalanceAsOfRequest(account_id=bob), metadata=api.auth())
    engine = await api.stub.GetBalance(pb.GetBalanceRequest(account_id=bob), metadata=api.auth())
    assert (now.credits_posted, now.debits_posted) == (engine.credits_posted, engine.debits_posted) == ("2500", "500")

    totals = await stub.GetDailyTotals(hpb.GetDailyTotalsRequest(), metadata=api.auth())
    by_source = {(t.source, t.transaction_type): (t.transfers, t.amount) for t in totals.totals}
    assert sum(t.transfers for t in totals.totals) == 3
    assert by_source[("atm", "debit")] == (1, "500")
    assert sum(int(t.amount) for t in totals.totals if t.source == "pos") == 12_500

    correlated = await stub.ListTransactionsByCorrelation(
        hpb.ListTransactionsByCorrelationRequest(correlation_id="order-7"), metadata=api.auth()
    )
    assert [(t.transaction_id, t.amount) for t in correlated.transfers] == [
        (first.transaction_id, "10000"),
        (second.transaction_id, "2500"),
    ]
    assert correlated.transfers[0].chain_sequence < correlated.transfers[1].chain_sequence

    report = await stub.Reconcile(hpb.ReconcileRequest(), metadata=api.auth())
    assert report.ok and not report.drift and report.accounts_checked >= 2
    assert report.as_of == third.committed_at_ns


async def test_restart_resumes_projection_without_duplicates(api: Api) -> None:
    alice = await api.account("alice")
    await api.post("r1", credit(alice, 100))
    await api.restart()  # Stops the projector; it resumes from what ClickHouse holds.
    last = await api.post("r2", credit(alice, 200))
    await caught_up(api, last.committed_at_ns)
    statement = await history(api).GetStatement(hpb.GetStatementRequest(account_id=alice), metadata=api.auth())
    assert [line.amount for line in statement.lines] == ["100", "200"]
    report = await history(api).Reconcile(hpb.ReconcileRequest(), metadata=api.auth())
    assert report.ok


async def test_ownership_scopes_and_bad_requests(api: Api) -> None:
    alice = await api.account("alice")
    stub = history(api)
    reader = api.auth(scopes=frozenset({SCOPE_READ}))
    stranger = api.auth(client_id="client-b", scopes=frozenset({SCOPE_READ, SCOPE_WRITE}))

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.GetStatement(hpb.GetStatementRequest(account_id=alice), metadata=stranger)
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    assert (info := error_info(failed.value)) and info.reason == "ACCOUNT_NOT_FOUND"

    for call, request in (
        (stub.GetDailyTotals, hpb.GetDailyTotalsRequest()),
        (stub.ListTransactionsByCorrelation, hpb.ListTransactionsByCorrelationRequest(correlation_id="x")),
        (stub.Reconcile, hpb.ReconcileRequest()),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(request, metadata=reader)
        assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.GetBalanceAsOf(hpb.GetBalanceAsOfRequest(account_id=alice))
    assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.GetStatement(hpb.GetStatementRequest(account_id=alice, limit=10_001), metadata=reader)
    assert (info := error_info(failed.value)) and info.reason == "LIMIT_TOO_LARGE"
    backwards = hpb.GetStatementRequest(account_id=alice, to=5)
    setattr(backwards, "from", 9)  # `from` is a Python keyword.
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.GetStatement(backwards, metadata=reader)
    assert (info := error_info(failed.value)) and info.reason == "INVALID_PERIOD"
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.ListTransactionsByCorrelation(hpb.ListTransactionsByCorrelationRequest(), metadata=api.auth())
    assert (info := error_info(failed.value)) and info.reason == "CORRELATION_ID_REQUIRED"


async def test_correlation_ids_match_exactly_whatever_their_characters(api: Api) -> None:
    """Each id finds its own transaction only: `a\\nb` (backslash, n) is not `a<newline>b`, a quote and
    a trailing backslash are just characters (they once reached ClickHouse as escape sequences)."""
    alice = await api.account("alice")
    hostile = ["a\nb", "a\\nb", "q'\\", "\\", "tab\there", "{correlation_id:String}", "nul\0"]
    posted = {}
    for number, correlation_id in enumerate(hostile):
        meta = pb.TransactionMetadata(correlation_id=correlation_id)
        posted[correlation_id] = await api.post(f"c{number}", credit(alice, 100 + number), metadata=meta)
    await caught_up(api, max(t.committed_at_ns for t in posted.values()))
    stub = history(api)
    for correlation_id, transaction in posted.items():
        found = await stub.ListTransactionsByCorrelation(
            hpb.ListTransactionsByCorrelationRequest(correlation_id=correlation_id), metadata=api.auth()
        )
        assert [t.transaction_id for t in found.transfers] == [transaction.transaction_id], repr(correlation_id)
    for absent in ("a\\\\nb", "q'", "q'\\\\", "\\\\", "a"):
        found = await stub.ListTransactionsByCorrelation(
            hpb.ListTransactionsByCorrelationRequest(correlation_id=absent), metadata=api.auth()
        )
        assert list(found.transfers) == [], repr(absent)
