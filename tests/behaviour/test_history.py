"""The read-model queries (ledger.v1.History) through both edges: statement, balance as of a moment, daily
totals, transactions by correlation id, reconciliation, and their refusals."""

from __future__ import annotations

import pytest

from facade.api.gen.ledger.v1 import history_pb2 as hpb
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.auth import SCOPE_READ
from tests.behaviour._clients import Code, JsonObject, Rpc, since
from tests.behaviour.conftest import Tenant, credit, debit, transfer

pytestmark = pytest.mark.asyncio(loop_scope="package")


async def _three_transactions(tenant: Tenant) -> tuple[str, str, list[JsonObject]]:
    """alice +10000 (pos, order-7), alice → bob 2500 (pos, order-7), bob -500 (atm); caught up."""
    alice, bob = await tenant.account("alice"), await tenant.account("bob")
    correlation_id = f"order-7-{tenant.client_id}"  # Correlation search crosses clients: make it this test's.
    meta = pb.TransactionMetadata(source="pos", correlation_id=correlation_id, description="lunch", labels={"k": "v"})
    posted = [
        await tenant.post("h1", credit(alice, 10_000), metadata=meta),
        await tenant.post("h2", transfer(alice, bob, 2_500), metadata=meta),
        await tenant.post("h3", debit(bob, 500), metadata=pb.TransactionMetadata(source="atm")),
    ]
    await tenant.caught_up(posted[-1]["committed_at_ns"])
    return alice, bob, posted


async def test_a_statement_lists_the_entries_with_balances(tenant: Tenant) -> None:
    alice, bob, posted = await _three_transactions(tenant)
    statement = await tenant.call(Rpc.GET_STATEMENT, hpb.GetStatementRequest(account_id=alice))
    assert [(line["side"], line["amount"], line["signed_amount"]) for line in statement["lines"]] == [
        ("CREDIT", "10000", "10000"),
        ("DEBIT", "2500", "-2500"),
    ]
    assert [line["transaction_id"] for line in statement["lines"]] == [p["transaction_id"] for p in posted[:2]]
    assert [line["engine_timestamp"] for line in statement["lines"]] == [p["committed_at_ns"] for p in posted[:2]]
    second = statement["lines"][1]
    assert (second["counterparty_account_id"], second["correlation_id"], second["description"]) == (
        bob,
        f"order-7-{tenant.client_id}",
        "lunch",
    )
    assert (second["change"], second["currency"], second["source"]) == ("SINGLE_PHASE", "USD", "pos")
    assert (second["balance_after"]["credits_posted"], second["balance_after"]["debits_posted"]) == ("10000", "2500")
    assert statement["opening"]["credits_posted"] == "0" and statement["from"] == "0"
    assert (statement["closing"]["credits_posted"], statement["closing"]["debits_posted"]) == ("10000", "2500")
    assert statement["truncated"] is False and int(statement["projected_until"]) >= int(posted[-1]["committed_at_ns"])

    period = await tenant.call(
        Rpc.GET_STATEMENT,
        hpb.GetStatementRequest(
            account_id=alice,
            to=int(posted[1]["committed_at_ns"]),
            limit=5,
            **since(int(posted[0]["committed_at_ns"])),
        ),
    )
    assert [line["amount"] for line in period["lines"]] == ["10000"], "the period is half-open: [from, to)"
    assert (period["closing"]["credits_posted"], period["closing"]["debits_posted"]) == ("10000", "0")
    first = await tenant.call(Rpc.GET_STATEMENT, hpb.GetStatementRequest(account_id=alice, limit=1))
    assert len(first["lines"]) == 1 and first["truncated"] is True


async def test_balances_as_of_a_moment(tenant: Tenant) -> None:
    alice, bob, posted = await _three_transactions(tenant)
    then = await tenant.call(
        Rpc.GET_BALANCE_AS_OF, hpb.GetBalanceAsOfRequest(account_id=alice, as_of=int(posted[1]["committed_at_ns"]) - 1)
    )
    assert (then["account_id"], then["credits_posted"], then["debits_posted"]) == (alice, "10000", "0")
    assert then["timestamp"] == posted[0]["committed_at_ns"]
    now = await tenant.call(Rpc.GET_BALANCE_AS_OF, hpb.GetBalanceAsOfRequest(account_id=bob))
    engine = await tenant.balance(bob)
    assert (now["credits_posted"], now["debits_posted"]) == (engine["credits_posted"], engine["debits_posted"])
    assert (now["credits_posted"], now["debits_posted"], now["timestamp"]) == (
        "2500",
        "500",
        posted[2]["committed_at_ns"],
    )


async def test_daily_totals_correlation_and_reconciliation(tenant: Tenant) -> None:
    _, _, posted = await _three_transactions(tenant)
    period = since(int(posted[0]["committed_at_ns"]))
    totals = await tenant.call(
        Rpc.GET_DAILY_TOTALS, hpb.GetDailyTotalsRequest(to=int(posted[-1]["committed_at_ns"]) + 1, **period)
    )
    by_source = {(t["source"], t["transaction_type"]): (t["transfers"], t["amount"]) for t in totals["totals"]}
    assert sum(int(t["transfers"]) for t in totals["totals"]) == 3, "only this test's period"
    assert by_source[("atm", "debit")] == ("1", "500")
    assert sum(int(t["amount"]) for t in totals["totals"] if t["source"] == "pos") == 12_500

    correlated = await tenant.call(
        Rpc.LIST_TRANSACTIONS_BY_CORRELATION,
        hpb.ListTransactionsByCorrelationRequest(correlation_id=f"order-7-{tenant.client_id}"),
    )
    assert [(t["transaction_id"], t["amount"]) for t in correlated["transfers"]] == [
        (posted[0]["transaction_id"], "10000"),
        (posted[1]["transaction_id"], "2500"),
    ]
    assert correlated["transfers"][0]["labels"] == {"k": "v"} and correlated["transfers"][0]["leg_index"] == 0
    assert int(correlated["transfers"][0]["chain_sequence"]) < int(correlated["transfers"][1]["chain_sequence"])

    report = await tenant.call(Rpc.RECONCILE, hpb.ReconcileRequest())
    assert report["ok"] is True and report["drift"] == [] and report["unknown_accounts"] == []
    assert int(report["accounts_checked"]) >= 2 and int(report["as_of"]) >= int(posted[-1]["committed_at_ns"])


async def test_history_refusals(tenant: Tenant) -> None:
    alice = await tenant.account("alice")
    reader = tenant.caller(frozenset({SCOPE_READ}))
    cases = [
        (Rpc.GET_STATEMENT, hpb.GetStatementRequest(account_id=alice, limit=10_001), "LIMIT_TOO_LARGE"),
        (Rpc.GET_STATEMENT, hpb.GetStatementRequest(account_id=alice, to=5, **since(9)), "INVALID_PERIOD"),
        (Rpc.GET_STATEMENT, hpb.GetStatementRequest(account_id="bad"), "INVALID_ID"),
        (Rpc.GET_DAILY_TOTALS, hpb.GetDailyTotalsRequest(to=5, **since(9)), "INVALID_PERIOD"),
    ]
    for rpc, request, reason in cases:
        caller = tenant.caller() if rpc is Rpc.GET_DAILY_TOTALS else reader
        refused = await tenant.refused(rpc, request, caller)
        assert (refused.code, refused.reason) == (Code.INVALID_ARGUMENT, reason), request
    no_id = await tenant.refused(Rpc.LIST_TRANSACTIONS_BY_CORRELATION, hpb.ListTransactionsByCorrelationRequest())
    assert (no_id.code, no_id.reason) == (Code.INVALID_ARGUMENT, "CORRELATION_ID_REQUIRED")
    unknown = await tenant.refused(Rpc.GET_BALANCE_AS_OF, hpb.GetBalanceAsOfRequest(account_id="424242"), reader)
    assert (unknown.code, unknown.reason) == (Code.NOT_FOUND, "ACCOUNT_NOT_FOUND")
