"""Malformed requests over loopback gRPC: bytes that are not the method's message and invalid UTF-8 in a
string field answer INVALID_ARGUMENT with reason MALFORMED_REQUEST (not UNKNOWN with a Python
exception's text); an unexpected failure under the service answers INTERNAL with an error id and no
database text; every status is counted in the request metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from facade.api.errors import error_info
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from tests.api.conftest import Api, credit, open_api
from tests.http.test_malformed_input import LEAK_MARKERS, break_metadata_store

GARBAGE = (
    b"\xff\xff\xff\xff",
    b"\x0a\x05ab",  # Field 1, length 5, only 2 bytes follow.
    b"\x0a\x02\xc3\x28",  # Field 1 (a string) holding invalid UTF-8.
    b"\x0a\x03\xed\xa0\x80",  # A UTF-8-encoded lone surrogate: invalid UTF-8 too.
)


COUNT_WAIT_ROUNDS_MAX = 500
"""Bound on waiting for the server to count a call (10 ms apart)."""


def _identity(data: bytes) -> bytes:
    return data


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    instance = await open_api(tmp_path)
    try:
        yield instance
    finally:
        await instance.channel.close()
        await instance.server.stop()


def _samples(operation: str, code: str) -> float:
    labels = {"edge": "grpc", "method": operation, "code": code}
    return REGISTRY.get_sample_value("ledger_request_duration_seconds_count", labels) or 0.0


async def _counted(operation: str, code: str, expected: float) -> None:
    """Waits (bounded) until the server has counted the call: it records after sending the status, so the
    client can see the answer a moment before the sample exists."""
    for _ in range(COUNT_WAIT_ROUNDS_MAX):
        if _samples(operation, code) >= expected:
            break
        await asyncio.sleep(0.01)
    assert _samples(operation, code) == expected


def _assert_clean(error: grpc.aio.AioRpcError) -> None:
    details = error.details() or ""
    assert not any(marker.lower() in details.lower() for marker in LEAK_MARKERS), details


@pytest.mark.parametrize("raw", GARBAGE)
@pytest.mark.parametrize("method", ["/ledger.v1.Ledger/GetAccount", "/ledger.v1.Ledger/PostTransaction"])
async def test_undecodable_requests_are_invalid_argument(api: Api, method: str, raw: bytes) -> None:
    call = api.channel.unary_unary(method, request_serializer=_identity, response_deserializer=_identity)
    operation = method.rsplit("/", 1)[-1]
    before = _samples(operation, "INVALID_ARGUMENT")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(raw, metadata=api.auth())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    info = error_info(caught.value)
    assert info is not None and info.reason == "MALFORMED_REQUEST"
    _assert_clean(caught.value)
    await _counted(operation, "INVALID_ARGUMENT", before + 1)


async def test_authentication_comes_before_decoding(api: Api) -> None:
    call = api.channel.unary_unary(
        "/ledger.v1.Ledger/GetAccount", request_serializer=_identity, response_deserializer=_identity
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(GARBAGE[0])
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_stream_answers_what_it_read_then_refuses_the_malformed_item(api: Api) -> None:
    alice = await api.account("alice")
    good = pb.PostTransactionRequest(idempotency_key="s1", legs=[credit(alice, 5)]).SerializeToString()
    call = api.channel.stream_stream(
        "/ledger.v1.Ledger/StreamTransactions", request_serializer=_identity, response_deserializer=_identity
    )
    stream = call(iter([good, GARBAGE[2], good]), metadata=api.auth())
    answers: list[pb.TransactionResult] = []

    async def read_all() -> None:
        async for answer in stream:
            answers.append(pb.TransactionResult.FromString(answer))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_all()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info is not None and info.reason == "MALFORMED_REQUEST"
    assert [a.transaction.idempotency_key for a in answers] == ["s1"]
    assert await api.available(alice) == 5, "the item before the malformed one posted once, nothing after"


async def test_unexpected_failure_is_internal_with_an_error_id(api: Api) -> None:
    alice = await api.account("alice")
    before = _samples("GetAccount", "INTERNAL")
    break_metadata_store(api.settings.api.metadata_db)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.stub.GetAccount(pb.GetAccountRequest(account_id=alice), metadata=api.auth())
    assert caught.value.code() == grpc.StatusCode.INTERNAL, caught.value.details()
    info = error_info(caught.value)
    assert info is not None and info.reason == "INTERNAL"
    assert info.metadata["error_id"] in (caught.value.details() or "")
    _assert_clean(caught.value)
    await _counted("GetAccount", "INTERNAL", before + 1)


async def test_streams_answering_with_context_write_pass_the_guard_and_are_counted(api: Api) -> None:
    """Health's Watch answers through context.write() (a coroutine, not an async generator): the guard and
    the metrics wrap it without breaking it; a garbage request to it is refused like any other."""
    before = _samples("Watch", "CANCELLED")
    stub = health_pb2_grpc.HealthStub(api.channel)
    call = stub.Watch(health_pb2.HealthCheckRequest(service=""))
    first = await call.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    call.cancel()
    await _counted("Watch", "CANCELLED", before + 1)
    watch = api.channel.unary_stream(
        "/grpc.health.v1.Health/Watch", request_serializer=_identity, response_deserializer=_identity
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await watch(GARBAGE[2]).read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
