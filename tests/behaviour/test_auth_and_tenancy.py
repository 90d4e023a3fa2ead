"""Who may call what, through both edges: no credentials, bad credentials, a missing scope, and another
client's accounts (invisible: NOT_FOUND, never a hint that they exist)."""

from __future__ import annotations

import pytest

from facade.api.gen.ledger.v1 import history_pb2 as hpb
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.auth import SCOPE_ADMIN, SCOPE_READ, SCOPE_WRITE
from tests.api.conftest import API_KEY_SECRET
from tests.behaviour._clients import Caller, Code, Rpc
from tests.behaviour.conftest import Tenant, credit, debit, transfer

pytestmark = pytest.mark.asyncio(loop_scope="package")

READER = frozenset({SCOPE_READ})
WRITER = frozenset({SCOPE_READ, SCOPE_WRITE})


async def test_callers_without_valid_credentials_are_refused(tenant: Tenant) -> None:
    alice = await tenant.account("alice")
    request = pb.GetBalanceRequest(account_id=alice)
    cases = [
        (Caller(None), "MISSING_CREDENTIALS"),
        (Caller("Bearer not-a-jwt"), "INVALID_TOKEN"),
        (Caller("ApiKey reader-1.wrong"), "INVALID_API_KEY"),
        (Caller("Basic dXNlcjpwYXNz"), "UNSUPPORTED_CREDENTIALS"),
    ]
    for caller, reason in cases:
        refused = await tenant.refused(Rpc.GET_BALANCE, request, caller)
        assert (refused.code, refused.reason) == (Code.UNAUTHENTICATED, reason), caller
    post = pb.PostTransactionRequest(idempotency_key="anon", legs=[credit(alice, 5)])
    anonymous = await tenant.refused(Rpc.POST_TRANSACTION, post, Caller(None))
    assert (anonymous.code, anonymous.reason) == (Code.UNAUTHENTICATED, "MISSING_CREDENTIALS")
    history = await tenant.refused(Rpc.GET_BALANCE_AS_OF, hpb.GetBalanceAsOfRequest(account_id=alice), Caller(None))
    assert (history.code, history.reason) == (Code.UNAUTHENTICATED, "MISSING_CREDENTIALS")
    assert await tenant.available(alice) == 0


async def test_each_operation_needs_its_scope(tenant: Tenant) -> None:
    alice = await tenant.account("alice")
    reader = tenant.caller(READER)
    assert (await tenant.call(Rpc.GET_BALANCE, pb.GetBalanceRequest(account_id=alice), reader))["available"] == "0"
    denied = [
        (Rpc.POST_TRANSACTION, pb.PostTransactionRequest(idempotency_key="w", legs=[credit(alice, 1)]), reader),
        (
            Rpc.CREATE_ACCOUNT,
            pb.CreateAccountRequest(currency="USD", external_reference="x", type=pb.ACCOUNT_TYPE_NO_OVERDRAFT),
            tenant.caller(WRITER),
        ),
        (Rpc.GET_DAILY_TOTALS, hpb.GetDailyTotalsRequest(), reader),
        (Rpc.RECONCILE, hpb.ReconcileRequest(), tenant.caller(WRITER)),
        (
            Rpc.LIST_TRANSACTIONS_BY_CORRELATION,
            hpb.ListTransactionsByCorrelationRequest(correlation_id="x"),
            reader,
        ),
    ]
    for rpc, request, caller in denied:
        refused = await tenant.refused(rpc, request, caller)
        assert (refused.code, refused.reason) == (Code.PERMISSION_DENIED, "MISSING_SCOPE"), rpc
    assert await tenant.available(alice) == 0


async def test_an_api_key_acts_for_its_client_with_its_scopes(tenant: Tenant) -> None:
    """The configured key `reader-1` reads for client-a (tests.api.conftest): it sees client-a's accounts
    and may not write."""
    owner = tenant.caller(client_id="client-a")
    account = await tenant.call(
        Rpc.CREATE_ACCOUNT,
        pb.CreateAccountRequest(
            currency="USD", external_reference=f"key-{tenant.client_id}", type=pb.ACCOUNT_TYPE_NO_OVERDRAFT
        ),
        owner,
    )
    key = Caller(f"ApiKey reader-1.{API_KEY_SECRET}")
    balance = await tenant.call(Rpc.GET_BALANCE, pb.GetBalanceRequest(account_id=account["account_id"]), key)
    assert balance["currency"] == "USD"
    post = pb.PostTransactionRequest(idempotency_key=f"k-{tenant.client_id}", legs=[credit(account["account_id"], 1)])
    refused = await tenant.refused(Rpc.POST_TRANSACTION, post, key)
    assert (refused.code, refused.reason) == (Code.PERMISSION_DENIED, "MISSING_SCOPE")


async def test_another_clients_accounts_are_invisible_and_untouchable(tenant: Tenant) -> None:
    alice, bob = await tenant.account("alice"), await tenant.account("bob")
    await tenant.post("seed", credit(alice, 1_000))
    stranger = f"{tenant.client_id}-stranger"
    mallory = str(
        (
            await tenant.call(
                Rpc.CREATE_ACCOUNT,
                pb.CreateAccountRequest(
                    currency="USD", external_reference="mallory", type=pb.ACCOUNT_TYPE_NO_OVERDRAFT
                ),
                tenant.caller(client_id=stranger),
            )
        )["account_id"]
    )
    thief = tenant.caller(WRITER, client_id=stranger)
    reads = [
        (Rpc.GET_BALANCE, pb.GetBalanceRequest(account_id=alice)),
        (Rpc.GET_ACCOUNT, pb.GetAccountRequest(account_id=alice)),
        (Rpc.LIST_ACCOUNT_ENTRIES, pb.ListAccountEntriesRequest(account_id=alice)),
        (Rpc.GET_STATEMENT, hpb.GetStatementRequest(account_id=alice)),
        (Rpc.GET_BALANCE_AS_OF, hpb.GetBalanceAsOfRequest(account_id=alice)),
    ]
    for rpc, request in reads:
        refused = await tenant.refused(rpc, request, thief)
        assert (refused.code, refused.reason) == (Code.NOT_FOUND, "ACCOUNT_NOT_FOUND"), rpc
    for key, leg in (("steal", transfer(alice, mallory, 400)), ("drain", debit(alice, 400)), ("gift", credit(bob, 1))):
        request = pb.PostTransactionRequest(idempotency_key=key, legs=[leg])
        refused = await tenant.refused(Rpc.POST_TRANSACTION, request, thief)
        assert (refused.code, refused.reason) == (Code.NOT_FOUND, "ACCOUNT_NOT_FOUND"), key
    hidden = await tenant.refused(Rpc.GET_TRANSACTION, pb.GetTransactionRequest(idempotency_key="seed"), thief)
    assert (hidden.code, hidden.reason) == (Code.NOT_FOUND, "TRANSACTION_NOT_FOUND"), "keys are per client"
    hold = await tenant.post("hold", transfer(alice, bob, 10), authorize_only=True)
    capture = pb.CaptureTransactionRequest(idempotency_key="c", authorization_id=hold["transaction_id"])
    foreign = await tenant.refused(Rpc.CAPTURE_TRANSACTION, capture, thief)
    assert foreign.code == Code.NOT_FOUND, foreign
    assert (await tenant.available(alice), await tenant.available(bob), await tenant.available(mallory)) == (990, 0, 0)

    admin = tenant.caller(frozenset({SCOPE_ADMIN, SCOPE_WRITE, SCOPE_READ}), client_id=stranger)
    await tenant.call(
        Rpc.POST_TRANSACTION,
        pb.PostTransactionRequest(idempotency_key="admin", legs=[transfer(alice, mallory, 100)]),
        admin,
    )
    assert (await tenant.available(alice), await tenant.available(mallory)) == (890, 100), (
        "an admin reaches any account"
    )
