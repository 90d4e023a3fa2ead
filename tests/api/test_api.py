"""The gRPC API over loopback against the real embedded engine: behaviour a payments team relies on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from facade.api.errors import STATUS_DETAILS_KEY, error_info
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.auth import SCOPE_ADMIN, SCOPE_READ, SCOPE_WRITE

from .conftest import API_KEY_SECRET, Api, credit, debit, open_api, transfer


async def expect_error(call: object, code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    assert raised.value.code() == code, raised.value.details()
    info = error_info(raised.value)
    assert info is not None and info.reason == reason and info.domain == "ledger.v1"
    return raised.value


async def test_credit_debit_transfer_and_balances(api: Api) -> None:
    alice, bob = await api.account("alice"), await api.account("bob")
    posted = await api.post(
        "c1", credit(alice, 10_000), metadata=pb.TransactionMetadata(source="pos", correlation_id="o-1")
    )
    assert posted.status == pb.TRANSACTION_STATUS_POSTED and posted.committed_at_ns > 0 and not posted.deduplicated
    await api.post("d1", debit(alice, 2_500))
    await api.post("t1", transfer(alice, bob, 1_500))
    assert (await api.available(alice), await api.available(bob)) == (6_000, 1_500)
    balance = await api.stub.GetBalance(pb.GetBalanceRequest(account_id=alice), metadata=api.auth())
    assert (balance.debits_posted, balance.credits_posted, balance.currency) == ("4000", "10000", "USD")


async def test_amounts_beyond_64_bits_are_exact(api: Api) -> None:
    whale = await api.account("whale", no_overdraft=False)
    huge = 2**100 + 7
    await api.post("big", credit(whale, huge))
    assert await api.available(whale) == huge


async def test_insufficient_funds(api: Api) -> None:
    alice = await api.account("alice")
    await api.post("c1", credit(alice, 100))
    error = await expect_error(
        api.post("d1", debit(alice, 101)), grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS"
    )
    assert "leg 0" in (error.details() or "")
    assert await api.available(alice) == 100


async def test_multi_leg_transaction_is_atomic(api: Api) -> None:
    alice, bob, carol = await api.account("alice"), await api.account("bob"), await api.account("carol")
    await api.post("c1", credit(alice, 100))
    await expect_error(
        api.post("t1", transfer(alice, bob, 60), transfer(alice, carol, 60)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_FUNDS",
    )
    assert (await api.available(alice), await api.available(bob), await api.available(carol)) == (100, 0, 0)


async def test_idempotent_retry_returns_the_original_result(api: Api) -> None:
    alice = await api.account("alice")
    first = await api.post("pay-1", credit(alice, 700))
    retry = await api.post("pay-1", credit(alice, 700))
    assert retry.deduplicated and retry.transaction_id == first.transaction_id
    assert retry.committed_at_ns == first.committed_at_ns
    assert await api.available(alice) == 700
    # A failed transaction's retry returns the original failure too (not the engine's id_already_failed).
    await expect_error(
        api.post("pay-2", debit(alice, 9_999)), grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS"
    )
    await api.post("pay-3", credit(alice, 100_000))
    await expect_error(
        api.post("pay-2", debit(alice, 9_999)), grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS"
    )


async def test_key_reuse_with_a_different_payload_is_rejected(api: Api) -> None:
    alice = await api.account("alice")
    await api.post("k", credit(alice, 700))
    await expect_error(api.post("k", credit(alice, 701)), grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    # Keys are scoped per client: another client may use the same key.
    other = await api.account("other", client="client-b")
    await api.post("k", credit(other, 5), client="client-b")
    assert await api.available(alice) == 700


async def test_validation_errors_are_specific(api: Api) -> None:
    alice = await api.account("alice")
    euro = await api.account("euro", currency="EUR")
    await expect_error(
        api.post("m", credit(alice, 1), credit(euro, 1, "EUR")), grpc.StatusCode.INVALID_ARGUMENT, "CURRENCY_MISMATCH"
    )
    await expect_error(
        api.post("x", transfer(alice, euro, 1)), grpc.StatusCode.FAILED_PRECONDITION, "CURRENCY_MISMATCH"
    )
    await expect_error(api.post("a", credit(alice, 0)), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AMOUNT")
    await expect_error(api.post("b", credit(alice, 2**128)), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AMOUNT")
    bad_amount = pb.Leg(type=pb.LEG_TYPE_CREDIT, account_id=alice, amount="1.50", currency="USD")
    await expect_error(api.post("c", bad_amount), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AMOUNT")
    await expect_error(api.post("", credit(alice, 1)), grpc.StatusCode.INVALID_ARGUMENT, "MISSING_FIELD")
    await expect_error(api.post("d", credit(alice, 1, "XXX")), grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_CURRENCY")
    await expect_error(api.post("e", transfer(alice, alice, 1)), grpc.StatusCode.INVALID_ARGUMENT, "SAME_ACCOUNT")
    await expect_error(api.post("f", credit("12345", 1)), grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")


async def test_authorize_capture_void_and_expiry(api: Api) -> None:
    alice, shop = await api.account("alice"), await api.account("shop")
    await api.post("fund", credit(alice, 1_000))
    hold = await api.post("auth-1", transfer(alice, shop, 300), authorize_only=True)
    assert hold.status == pb.TRANSACTION_STATUS_AUTHORIZED
    assert await api.available(alice) == 700
    captured = await api.stub.CaptureTransaction(
        pb.CaptureTransactionRequest(idempotency_key="cap-1", authorization_id=hold.transaction_id, amount="200"),
        metadata=api.auth(),
    )
    assert captured.status == pb.TRANSACTION_STATUS_POSTED and captured.authorization_id == hold.transaction_id
    assert (await api.available(alice), await api.available(shop)) == (800, 200)
    await expect_error(
        api.stub.VoidTransaction(
            pb.VoidTransactionRequest(idempotency_key="void-1", authorization_id=hold.transaction_id),
            metadata=api.auth(),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "AUTHORIZATION_ALREADY_CAPTURED",
    )
    second = await api.post("auth-2", transfer(alice, shop, 100), authorize_only=True)
    voided = await api.stub.VoidTransaction(
        pb.VoidTransactionRequest(idempotency_key="void-2", authorization_id=second.transaction_id), metadata=api.auth()
    )
    assert voided.status == pb.TRANSACTION_STATUS_VOIDED
    assert await api.available(alice) == 800
    expiring = await api.post("auth-3", transfer(alice, shop, 50), authorize_only=True, authorization_timeout_seconds=1)
    assert await api.available(alice) == 750
    await asyncio.sleep(1.5)
    await expect_error(
        api.stub.CaptureTransaction(
            pb.CaptureTransactionRequest(idempotency_key="cap-3", authorization_id=expiring.transaction_id),
            metadata=api.auth(),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "AUTHORIZATION_EXPIRED",
    )
    assert await api.available(alice) == 800


async def test_batch_with_mixed_results(api: Api) -> None:
    alice = await api.account("alice")
    response = await api.stub.PostTransactions(
        pb.PostTransactionsRequest(
            transactions=[
                pb.PostTransactionRequest(idempotency_key="b1", legs=[credit(alice, 100)]),
                pb.PostTransactionRequest(idempotency_key="b2", legs=[debit(alice, 1_000)]),
                pb.PostTransactionRequest(idempotency_key="b3", legs=[credit(alice, 0)]),
                pb.PostTransactionRequest(idempotency_key="b4", legs=[debit(alice, 40)]),
            ]
        ),
        metadata=api.auth(),
    )
    kinds = [r.WhichOneof("result") for r in response.results]
    assert kinds == ["transaction", "error", "error", "transaction"]
    assert [r.error.reason for r in response.results if r.HasField("error")] == ["INSUFFICIENT_FUNDS", "INVALID_AMOUNT"]
    assert response.results[1].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert await api.available(alice) == 60


async def test_stream_transactions_answers_each_request_in_order(api: Api) -> None:
    alice = await api.account("alice")

    async def requests() -> AsyncIterator[pb.PostTransactionRequest]:
        for i in range(200):
            yield pb.PostTransactionRequest(idempotency_key=f"s{i}", legs=[credit(alice, i + 1)])
        yield pb.PostTransactionRequest(idempotency_key="s-bad", legs=[debit(alice, 10**9)])

    results = [r async for r in api.stub.StreamTransactions(requests(), metadata=api.auth())]
    assert len(results) == 201
    assert all(r.HasField("transaction") for r in results[:200])
    assert [r.transaction.idempotency_key for r in results[:200]] == [f"s{i}" for i in range(200)]
    assert results[200].error.reason == "INSUFFICIENT_FUNDS"
    assert await api.available(alice) == sum(range(1, 201))


async def test_get_transaction_and_paginated_entries(api: Api) -> None:
    alice = await api.account("alice")
    posted = [await api.post(f"e{i}", credit(alice, i + 1)) for i in range(5)]
    by_id = await api.stub.GetTransaction(
        pb.GetTransactionRequest(transaction_id=posted[2].transaction_id), metadata=api.auth()
    )
    by_key = await api.stub.GetTransaction(pb.GetTransactionRequest(idempotency_key="e2"), metadata=api.auth())
    assert by_id == by_key and by_id.legs[0].amount == "3"
    pages, token = [], ""
    while True:
        page = await api.stub.ListAccountEntries(
            pb.ListAccountEntriesRequest(account_id=alice, page_size=2, page_token=token, descending=True),
            metadata=api.auth(),
        )
        pages.append([e.amount for e in page.entries])
        token = page.next_page_token
        if not token:
            break
    assert pages == [["5", "4"], ["3", "2"], ["1"]]
    window = await api.stub.ListAccountEntries(
        pb.ListAccountEntriesRequest(
            account_id=alice, from_ns=posted[1].committed_at_ns, to_ns=posted[3].committed_at_ns
        ),
        metadata=api.auth(),
    )
    assert [e.amount for e in window.entries] == ["2", "3", "4"]
    assert all(not e.is_debit and e.transaction_id for e in window.entries)


async def test_authentication_and_scopes(api: Api) -> None:
    alice = await api.account("alice")
    request = pb.GetBalanceRequest(account_id=alice)
    await expect_error(api.stub.GetBalance(request), grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIALS")
    await expect_error(
        api.stub.GetBalance(request, metadata=(("authorization", "Bearer not-a-jwt"),)),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_TOKEN",
    )
    read_only = api.auth(scopes=frozenset({SCOPE_READ}))
    assert (await api.stub.GetBalance(request, metadata=read_only)).available == "0"
    await expect_error(
        api.stub.PostTransaction(
            pb.PostTransactionRequest(idempotency_key="x", legs=[credit(alice, 1)]), metadata=read_only
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "MISSING_SCOPE",
    )
    api_key = (("authorization", f"ApiKey reader-1.{API_KEY_SECRET}"),)
    assert (await api.stub.GetBalance(request, metadata=api_key)).currency == "USD"
    await expect_error(
        api.stub.GetBalance(request, metadata=(("authorization", "ApiKey reader-1.wrong"),)),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_API_KEY",
    )
    # Another client cannot see this client's account.
    await expect_error(
        api.stub.GetBalance(request, metadata=api.auth("client-b", frozenset({SCOPE_READ}))),
        grpc.StatusCode.NOT_FOUND,
        "ACCOUNT_NOT_FOUND",
    )


async def test_health_is_open_and_reflection_needs_credentials(api: Api) -> None:
    health = health_pb2_grpc.HealthStub(api.channel)
    response = await health.Check(health_pb2.HealthCheckRequest(service="ledger.v1.Ledger"))
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_fifty_concurrent_clients_on_one_hot_account(api: Api) -> None:
    hot = await api.account("hot")
    await api.post("seed", credit(hot, 1_000_000))
    clients = [await api.account(f"c{i}") for i in range(50)]

    async def client(index: int) -> None:
        for n in range(20):
            await api.post(f"hot-{index}-{n}", transfer(hot, clients[index], index + 1))

    await asyncio.gather(*(client(i) for i in range(50)))
    expected_out = sum((i + 1) * 20 for i in range(50))
    assert await api.available(hot) == 1_000_000 - expected_out
    assert [await api.available(c) for c in clients] == [(i + 1) * 20 for i in range(50)]


async def test_restart_keeps_every_acknowledged_transaction(api: Api) -> None:
    alice = await api.account("alice")
    acknowledged = [await api.post(f"r{i}", credit(alice, 10)) for i in range(30)]
    await api.restart()
    assert await api.available(alice) == 300
    retry = await api.post("r7", credit(alice, 10))
    assert retry.deduplicated and retry.committed_at_ns == acknowledged[7].committed_at_ns
    await api.post("r-new", credit(alice, 1))
    assert await api.available(alice) == 301


async def test_backpressure_when_the_write_queue_is_full(tmp_path: Path) -> None:
    api = await open_api(tmp_path, write_queue_transfers_max=1, batch_transfers_max=1)
    try:
        alice = await api.account("alice")
        outcomes = await asyncio.gather(
            *(api.post(f"q{i}", credit(alice, 1)) for i in range(60)), return_exceptions=True
        )
        rejected = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        assert rejected, "a one-transfer queue must overflow under 60 concurrent writes"
        for error in rejected:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            trailers: Any = error.trailing_metadata()
            status = next(status_pb2.Status.FromString(v) for k, v in trailers if k == STATUS_DETAILS_KEY)
            retry = error_details_pb2.RetryInfo()
            assert any(detail.Unpack(retry) for detail in status.details) and retry.retry_delay.ToMilliseconds() > 0
        accepted = len(outcomes) - len(rejected)
        assert await api.available(alice) == accepted, "nothing rejected was half-written"
    finally:
        await api.channel.close()
        await api.server.stop()


async def test_a_client_moves_money_only_between_its_own_accounts(api: Api) -> None:
    writer = frozenset({SCOPE_READ, SCOPE_WRITE})
    alice, bob = await api.account("alice"), await api.account("bob")
    mallory = await api.account("mallory", client="client-b")
    await api.post("seed", credit(alice, 1_000))

    async def post_as(client: str, key: str, leg: pb.Leg, scopes: frozenset[str] = writer) -> pb.Transaction:
        response: pb.Transaction = await api.stub.PostTransaction(
            pb.PostTransactionRequest(idempotency_key=key, legs=[leg]), metadata=api.auth(client, scopes)
        )
        return response

    for key, leg in (("steal", transfer(alice, mallory, 400)), ("drain", debit(alice, 400)), ("gift", credit(bob, 1))):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await post_as("client-b", key, leg)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert (info := error_info(refused.value)) and info.reason == "ACCOUNT_NOT_FOUND"
    assert (await api.available(alice), await api.available(bob), await api.available(mallory)) == (1_000, 0, 0)

    await post_as("client-a", "own", transfer(alice, bob, 300))  # Its own accounts: allowed.
    await post_as("client-b", "admin", transfer(alice, mallory, 100), SCOPES_ADMIN_WRITE)  # Admin: any account.
    assert (await api.available(alice), await api.available(bob), await api.available(mallory)) == (600, 300, 100)


SCOPES_ADMIN_WRITE = frozenset({SCOPE_ADMIN, SCOPE_WRITE, SCOPE_READ})
