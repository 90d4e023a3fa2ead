"""Accounts and money movements, each test run through the gRPC client and the HTTP client against one
server: the same requests give the same statuses, reasons, amounts and balances on both edges."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from tests.behaviour._clients import Code, Refused, Rpc
from tests.behaviour.conftest import Tenant, credit, debit, transfer

pytestmark = pytest.mark.asyncio(loop_scope="package")


async def test_accounts_are_created_once_read_back_and_start_at_zero(tenant: Tenant) -> None:
    request = pb.CreateAccountRequest(
        currency="USD",
        external_reference="alice",
        owner="Alice",
        type=pb.ACCOUNT_TYPE_NO_OVERDRAFT,
        metadata={"segment": "retail"},
    )
    created = await tenant.call(Rpc.CREATE_ACCOUNT, request)
    again = await tenant.call(Rpc.CREATE_ACCOUNT, request)
    assert again["account_id"] == created["account_id"], "creation is idempotent per external reference"
    read = await tenant.call(Rpc.GET_ACCOUNT, pb.GetAccountRequest(account_id=created["account_id"]))
    for account in (created, again, read):
        assert account["currency"] == "USD" and account["external_reference"] == "alice"
        assert account["owner"] == "Alice" and account["type"] == "ACCOUNT_TYPE_NO_OVERDRAFT"
        assert account["metadata"] == {"segment": "retail"} and account["closed"] is False
        assert account["created_at_ns"] == created["created_at_ns"] and int(created["created_at_ns"]) > 0
    balance = await tenant.balance(created["account_id"])
    assert balance == {
        "currency": "USD",
        "posted": "0",
        "pending_debits": "0",
        "pending_credits": "0",
        "available": "0",
        "debits_posted": "0",
        "credits_posted": "0",
    }
    assert read["balance"] == balance

    reused = await tenant.refused(
        Rpc.CREATE_ACCOUNT,
        pb.CreateAccountRequest(
            currency="USD", external_reference="alice", owner="Bob", type=pb.ACCOUNT_TYPE_NO_OVERDRAFT
        ),
    )
    assert (reused.code, reused.reason) == (Code.ALREADY_EXISTS, "ACCOUNT_REFERENCE_REUSED")
    unknown = await tenant.refused(
        Rpc.CREATE_ACCOUNT,
        pb.CreateAccountRequest(currency="XXX", external_reference="x", type=pb.ACCOUNT_TYPE_NO_OVERDRAFT),
    )
    assert (unknown.code, unknown.reason) == (Code.INVALID_ARGUMENT, "UNKNOWN_CURRENCY")
    missing = await tenant.refused(Rpc.GET_ACCOUNT, pb.GetAccountRequest(account_id="12345"))
    assert (missing.code, missing.reason) == (Code.NOT_FOUND, "ACCOUNT_NOT_FOUND")
    malformed = await tenant.refused(Rpc.GET_BALANCE, pb.GetBalanceRequest(account_id="not-an-id"))
    assert (malformed.code, malformed.reason) == (Code.INVALID_ARGUMENT, "INVALID_ID")


async def test_listed_accounts_are_the_callers_own(tenant: Tenant) -> None:
    alice = await tenant.account("alice")
    bob = await tenant.account("bob", currency="EUR")
    everything = await tenant.call(
        Rpc.LIST_ACCOUNTS, pb.ListAccountsRequest(), tenant.caller(frozenset({"ledger.read"}))
    )
    assert sorted(a["account_id"] for a in everything["accounts"]) == sorted([alice, bob])
    euros = await tenant.call(
        Rpc.LIST_ACCOUNTS, pb.ListAccountsRequest(currency="EUR"), tenant.caller(frozenset({"ledger.read"}))
    )
    assert [a["account_id"] for a in euros["accounts"]] == [bob] and euros["next_page_token"] == ""


async def test_credit_debit_and_transfer_move_money(tenant: Tenant) -> None:
    alice, bob = await tenant.account("alice"), await tenant.account("bob")
    posted = await tenant.post(
        "c1", credit(alice, 10_000), metadata=pb.TransactionMetadata(source="pos", correlation_id="o-1")
    )
    assert posted["status"] == "TRANSACTION_STATUS_POSTED" and posted["deduplicated"] is False
    assert posted["idempotency_key"] == "c1" and posted["currency"] == "USD" and posted["authorization_id"] == ""
    assert len(posted["transaction_id"]) == 32 and int(posted["committed_at_ns"]) > 0
    assert isinstance(posted["committed_at_ns"], str), "u64 is a decimal string in JSON"
    assert posted["legs"] == [
        {
            "type": "LEG_TYPE_CREDIT",
            "account_id": alice,
            "from_account_id": "",
            "to_account_id": "",
            "amount": "10000",
            "currency": "USD",
        }
    ]
    assert (posted["metadata"]["source"], posted["metadata"]["correlation_id"]) == ("pos", "o-1")
    debited = await tenant.post("d1", debit(alice, 2_500))
    moved = await tenant.post("t1", transfer(alice, bob, 1_500))
    assert int(posted["committed_at_ns"]) < int(debited["committed_at_ns"]) < int(moved["committed_at_ns"])
    assert (await tenant.available(alice), await tenant.available(bob)) == (6_000, 1_500)
    balance = await tenant.balance(alice)
    assert (balance["posted"], balance["debits_posted"], balance["credits_posted"]) == ("6000", "4000", "10000")


async def test_amounts_beyond_64_bits_are_exact(tenant: Tenant) -> None:
    whale = await tenant.account("whale", overdraft=True)
    huge = 2**100 + 7
    await tenant.post("big", credit(whale, huge))
    await tenant.post("small", debit(whale, 8))
    assert await tenant.available(whale) == huge - 8


async def test_insufficient_funds_refuses_and_moves_nothing(tenant: Tenant) -> None:
    alice, bob = await tenant.account("alice"), await tenant.account("bob")
    await tenant.post("c1", credit(alice, 100))
    refused = await tenant.refused(
        Rpc.POST_TRANSACTION, pb.PostTransactionRequest(idempotency_key="d1", legs=[debit(alice, 101)])
    )
    assert (refused.code, refused.reason) == (Code.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    assert refused.metadata == {"leg": "0", "engine_status": "EXCEEDS_CREDITS"} and "leg 0" in refused.message
    atomic = await tenant.refused(
        Rpc.POST_TRANSACTION,
        pb.PostTransactionRequest(idempotency_key="m1", legs=[credit(bob, 50), transfer(alice, bob, 500)]),
    )
    assert (atomic.code, atomic.reason, atomic.metadata["leg"]) == (Code.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS", "1")
    assert (await tenant.available(alice), await tenant.available(bob)) == (100, 0), "no leg of a refusal moved"
    overdraft = await tenant.account("overdraft", overdraft=True)
    await tenant.post("o1", debit(overdraft, 70))
    assert await tenant.available(overdraft) == -70


async def test_invalid_requests_are_refused_with_the_same_reasons(tenant: Tenant) -> None:
    alice, euro = await tenant.account("alice"), await tenant.account("euro", currency="EUR")
    invalid, precondition = Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION
    cases: list[tuple[pb.PostTransactionRequest, Code, str]] = [
        (pb.PostTransactionRequest(idempotency_key="z", legs=[credit(alice, 0)]), invalid, "INVALID_AMOUNT"),
        (pb.PostTransactionRequest(idempotency_key="z", legs=[credit(alice, 2**128)]), invalid, "INVALID_AMOUNT"),
        (
            pb.PostTransactionRequest(
                idempotency_key="z",
                legs=[pb.Leg(type=pb.LEG_TYPE_CREDIT, account_id=alice, amount="1.50", currency="USD")],
            ),
            invalid,
            "INVALID_AMOUNT",
        ),
        (
            pb.PostTransactionRequest(idempotency_key="z", legs=[credit(alice, 1), credit(euro, 1, "EUR")]),
            invalid,
            "CURRENCY_MISMATCH",
        ),
        (pb.PostTransactionRequest(idempotency_key="z", legs=[credit(alice, 1, "XXX")]), invalid, "UNKNOWN_CURRENCY"),
        (
            pb.PostTransactionRequest(idempotency_key="z", legs=[credit(alice, 5, "EUR")]),
            precondition,
            "CURRENCY_MISMATCH",
        ),
        (
            pb.PostTransactionRequest(idempotency_key="z", legs=[transfer(alice, euro, 5)]),
            precondition,
            "CURRENCY_MISMATCH",
        ),
        (pb.PostTransactionRequest(idempotency_key="z", legs=[transfer(alice, alice, 5)]), invalid, "SAME_ACCOUNT"),
        (pb.PostTransactionRequest(idempotency_key="", legs=[credit(alice, 5)]), invalid, "MISSING_FIELD"),
        (pb.PostTransactionRequest(idempotency_key="z", legs=[]), invalid, "INVALID_LEGS"),
        (pb.PostTransactionRequest(idempotency_key="z", legs=[credit("x1", 5)]), invalid, "INVALID_ID"),
    ]
    for number, (request, code, reason) in enumerate(cases):
        request.idempotency_key = request.idempotency_key and f"z{number}"  # A refusal is the key's outcome too.
        refused = await tenant.refused(Rpc.POST_TRANSACTION, request)
        assert (refused.code, refused.reason) == (code, reason), request
    amount = await tenant.refused(Rpc.POST_TRANSACTION, cases[0][0])
    assert amount.metadata.get("field") == "legs[0].amount", amount.metadata
    unknown = await tenant.refused(
        Rpc.POST_TRANSACTION, pb.PostTransactionRequest(idempotency_key="u", legs=[credit("987654321", 5)])
    )
    assert (unknown.code, unknown.reason) == (Code.NOT_FOUND, "ACCOUNT_NOT_FOUND")
    assert await tenant.available(alice) == 0


async def test_a_retry_with_the_same_key_and_payload_gets_the_same_outcome(tenant: Tenant) -> None:
    alice = await tenant.account("alice")
    first = await tenant.post("pay-1", credit(alice, 700), metadata=pb.TransactionMetadata(source="web"))
    retry = await tenant.post("pay-1", credit(alice, 700), metadata=pb.TransactionMetadata(source="web"))
    assert retry["deduplicated"] is True and first["deduplicated"] is False
    assert {**retry, "deduplicated": False} == first, "the retry answers the original transaction"
    assert await tenant.available(alice) == 700, "money moved once"

    failed = await tenant.refused(
        Rpc.POST_TRANSACTION, pb.PostTransactionRequest(idempotency_key="pay-2", legs=[debit(alice, 5_000)])
    )
    await tenant.post("top-up", credit(alice, 10_000))  # Now it would succeed, but the key has an outcome.
    replayed = await tenant.refused(
        Rpc.POST_TRANSACTION, pb.PostTransactionRequest(idempotency_key="pay-2", legs=[debit(alice, 5_000)])
    )
    assert (
        (replayed.code, replayed.reason)
        == (failed.code, failed.reason)
        == (
            Code.FAILED_PRECONDITION,
            "INSUFFICIENT_FUNDS",
        )
    )
    assert await tenant.available(alice) == 10_700


async def test_a_key_reused_with_a_different_payload_is_a_conflict(tenant: Tenant) -> None:
    alice = await tenant.account("alice")
    await tenant.post("pay-1", credit(alice, 700))
    for request in (
        pb.PostTransactionRequest(idempotency_key="pay-1", legs=[credit(alice, 701)]),
        pb.PostTransactionRequest(idempotency_key="pay-1", legs=[credit(alice, 700)], authorize_only=True),
        pb.PostTransactionRequest(
            idempotency_key="pay-1", legs=[credit(alice, 700)], metadata=pb.TransactionMetadata(description="other")
        ),
    ):
        refused = await tenant.refused(Rpc.POST_TRANSACTION, request)
        assert (refused.code, refused.reason) == (Code.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED"), request
    assert await tenant.available(alice) == 700
    stranger = tenant.caller(client_id=f"{tenant.client_id}-other")
    other = await tenant.call(
        Rpc.CREATE_ACCOUNT,
        pb.CreateAccountRequest(currency="USD", external_reference="other", type=pb.ACCOUNT_TYPE_NO_OVERDRAFT),
        stranger,
    )
    own = pb.PostTransactionRequest(idempotency_key="pay-1", legs=[credit(other["account_id"], 5)])
    assert (await tenant.call(Rpc.POST_TRANSACTION, own, stranger))["deduplicated"] is False, "keys are per client"


async def test_transactions_are_found_by_id_and_by_key_and_entries_page(tenant: Tenant) -> None:
    alice = await tenant.account("alice")
    posted = [await tenant.post(f"e{i}", credit(alice, i + 1)) for i in range(5)]
    by_id = await tenant.call(Rpc.GET_TRANSACTION, pb.GetTransactionRequest(transaction_id=posted[2]["transaction_id"]))
    by_key = await tenant.call(Rpc.GET_TRANSACTION, pb.GetTransactionRequest(idempotency_key="e2"))
    assert by_id == by_key == posted[2]
    missing = await tenant.refused(Rpc.GET_TRANSACTION, pb.GetTransactionRequest(idempotency_key="nope"))
    assert (missing.code, missing.reason) == (Code.NOT_FOUND, "TRANSACTION_NOT_FOUND")
    malformed = await tenant.refused(Rpc.GET_TRANSACTION, pb.GetTransactionRequest(transaction_id="xyz"))
    assert (malformed.code, malformed.reason) == (Code.INVALID_ARGUMENT, "INVALID_ID")

    pages: list[list[str]] = []
    token = ""
    for _ in range(len(posted)):  # Bounded: at most one page per entry.
        page = await tenant.call(
            Rpc.LIST_ACCOUNT_ENTRIES,
            pb.ListAccountEntriesRequest(account_id=alice, page_size=2, page_token=token, descending=True),
        )
        pages.append([entry["amount"] for entry in page["entries"]])
        token = page["next_page_token"]
        if not token:
            break
    assert pages == [["5", "4"], ["3", "2"], ["1"]]
    window = await tenant.call(
        Rpc.LIST_ACCOUNT_ENTRIES,
        pb.ListAccountEntriesRequest(
            account_id=alice, from_ns=int(posted[1]["committed_at_ns"]), to_ns=int(posted[3]["committed_at_ns"])
        ),
    )
    assert [e["transaction_id"] for e in window["entries"]] == [p["transaction_id"] for p in posted[1:4]]
    assert all(e["is_debit"] is False and e["status"] == "TRANSACTION_STATUS_POSTED" for e in window["entries"])
    assert [e["committed_at_ns"] for e in window["entries"]] == [p["committed_at_ns"] for p in posted[1:4]]


async def test_a_batch_answers_each_item_in_order(tenant: Tenant) -> None:
    alice = await tenant.account("alice")
    request = pb.PostTransactionsRequest(
        transactions=[
            pb.PostTransactionRequest(idempotency_key="b1", legs=[credit(alice, 100)]),
            pb.PostTransactionRequest(idempotency_key="b2", legs=[debit(alice, 1_000)]),
            pb.PostTransactionRequest(idempotency_key="b3", legs=[credit(alice, 0)]),
            pb.PostTransactionRequest(idempotency_key="b4", legs=[debit(alice, 40)]),
            pb.PostTransactionRequest(idempotency_key="b1", legs=[credit(alice, 100)]),
        ]
    )
    results = await tenant.client.batch(request, caller=tenant.caller())
    assert len(results) == len(request.transactions)
    refusals = [(r.code, r.reason, r.metadata) for r in results if isinstance(r, Refused)]
    assert refusals == [
        (Code.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS", {"leg": "0", "engine_status": "EXCEEDS_CREDITS"}),
        (Code.INVALID_ARGUMENT, "INVALID_AMOUNT", {"field": "legs[0].amount"}),
    ]
    posted = [r for r in results if not isinstance(r, Refused)]
    assert [t["idempotency_key"] for t in posted] == ["b1", "b4", "b1"]
    assert posted[2]["transaction_id"] == posted[0]["transaction_id"] and posted[2]["deduplicated"] is True
    assert await tenant.available(alice) == 60
    retried = await tenant.client.batch(request, caller=tenant.caller())
    assert [r.reason if isinstance(r, Refused) else r["transaction_id"] for r in retried] == [
        r.reason if isinstance(r, Refused) else r["transaction_id"] for r in results
    ], "the whole batch retried: the same outcome per item"
    assert await tenant.available(alice) == 60


async def test_absent_fields_are_refused_with_the_same_reasons(tenant: Tenant) -> None:
    """Proto3 has no required fields: an absent one is its empty value. Over HTTP it is left out of the
    JSON (as the client does with every empty field), over gRPC it is empty; the answer is the same.
    Not here: an absent enum (`type`), which the gateway's schema refuses as MISSING_FIELD while gRPC
    says INVALID_ACCOUNT_TYPE / INVALID_LEG_TYPE (the schema does not offer the enums' zero values)."""
    alice = await tenant.account("alice")
    hold = await tenant.post("hold", credit(alice, 10), authorize_only=True)
    no_overdraft = pb.ACCOUNT_TYPE_NO_OVERDRAFT
    cases: list[tuple[Rpc, Message, str, str | None]] = [
        (
            Rpc.CREATE_ACCOUNT,
            pb.CreateAccountRequest(external_reference="r1", type=no_overdraft),
            "UNKNOWN_CURRENCY",
            None,
        ),
        (
            Rpc.CREATE_ACCOUNT,
            pb.CreateAccountRequest(currency="USD", type=no_overdraft),
            "MISSING_FIELD",
            "external_reference",
        ),
        (
            Rpc.POST_TRANSACTION,
            pb.PostTransactionRequest(
                idempotency_key="a2", legs=[pb.Leg(type=pb.LEG_TYPE_CREDIT, account_id=alice, amount="5")]
            ),
            "UNKNOWN_CURRENCY",
            None,
        ),
        (
            Rpc.POST_TRANSACTION,
            pb.PostTransactionRequest(
                idempotency_key="a3", legs=[pb.Leg(type=pb.LEG_TYPE_CREDIT, account_id=alice, currency="USD")]
            ),
            "INVALID_AMOUNT",
            "legs[0].amount",
        ),
        (Rpc.POST_TRANSACTION, pb.PostTransactionRequest(legs=[credit(alice, 5)]), "MISSING_FIELD", "idempotency_key"),
        (
            Rpc.CAPTURE_TRANSACTION,
            pb.CaptureTransactionRequest(authorization_id=hold["transaction_id"]),
            "MISSING_FIELD",
            "idempotency_key",
        ),
        (
            Rpc.VOID_TRANSACTION,
            pb.VoidTransactionRequest(authorization_id=hold["transaction_id"]),
            "MISSING_FIELD",
            "idempotency_key",
        ),
    ]
    for rpc, request, reason, field in cases:
        refused = await tenant.refused(rpc, request)
        assert (refused.code, refused.reason, refused.metadata.get("field")) == (
            Code.INVALID_ARGUMENT,
            reason,
            field,
        ), request
    assert await tenant.available(alice) == 0 and (await tenant.balance(alice))["pending_credits"] == "10"
