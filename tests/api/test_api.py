"""The gRPC API over loopback against the real embedded engine: what only gRPC has (streaming, health and
reflection) and what a test needs its own server for (expiry, concurrency, restart, backpressure). The
behaviour both edges share is tests/behaviour/, run through a gRPC and an HTTP client."""

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

from .conftest import Api, credit, debit, open_api, transfer


async def expect_error(call: object, code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    assert raised.value.code() == code, raised.value.details()
    info = error_info(raised.value)
    assert info is not None and info.reason == reason and info.domain == "ledger.v1"
    return raised.value


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
