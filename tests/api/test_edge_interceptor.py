"""facade.api.edge.EdgeInterceptor on a real loopback server: the one-level path (untraced unary calls)
answers, authenticates and counts exactly as the three layered interceptors: refused credentials and
missing scopes by their status, each counted under its method; the caller bound in the interceptor is the
one the servicer sees, even with many callers in flight; the first value of a repeated credential counts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc
from facade.auth import SCOPE_READ, SCOPE_WRITE
from tests.api.conftest import Api, credit, open_api

COUNT_WAIT_ROUNDS_MAX = 500
"""Bound on waiting for the server to count a call (10 ms apart): it counts after sending the status."""
CALLERS = 8


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
    for _ in range(COUNT_WAIT_ROUNDS_MAX):
        if _samples(operation, code) >= expected:
            break
        await asyncio.sleep(0.01)
    assert _samples(operation, code) == expected


async def test_refused_credentials_and_scopes_are_answered_and_counted(api: Api) -> None:
    stub = ledger_pb2_grpc.LedgerStub(api.channel)
    request = pb.GetAccountRequest(account_id="1")
    unauthenticated = _samples("GetAccount", "UNAUTHENTICATED")
    denied = _samples("CreateAccount", "PERMISSION_DENIED")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetAccount(request)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetAccount(request, metadata=(("authorization", "Bearer not-a-token"),))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await _counted("GetAccount", "UNAUTHENTICATED", unauthenticated + 2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateAccount(
            pb.CreateAccountRequest(currency="USD", external_reference="x", type=pb.ACCOUNT_TYPE_NO_OVERDRAFT),
            metadata=api.auth(scopes=frozenset({SCOPE_READ})),
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await _counted("CreateAccount", "PERMISSION_DENIED", denied + 1)


async def test_the_first_authorization_value_counts(api: Api) -> None:
    stub = ledger_pb2_grpc.LedgerStub(api.channel)
    [(key, token)] = api.auth()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetAccount(
            pb.GetAccountRequest(account_id="1"), metadata=((key, "Bearer not-a-token"), (key, token))
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_each_caller_in_flight_is_the_one_the_servicer_sees(api: Api) -> None:
    """Many clients at once, without the admin scope, each posting to and reading its own account: a caller
    bound to the wrong call would be refused (another client's account answers ACCOUNT_NOT_FOUND)."""
    clients = [f"client-{index}" for index in range(CALLERS)]
    accounts = [await api.account(f"own-{client}", client=client) for client in clients]
    stub = ledger_pb2_grpc.LedgerStub(api.channel)
    ok_before = _samples("PostTransaction", "OK")

    async def post_and_read(client: str, account_id: str, amount: int) -> int:
        caller = api.auth(client, frozenset({SCOPE_READ, SCOPE_WRITE}))
        request = pb.PostTransactionRequest(idempotency_key=f"{client}-credit", legs=[credit(account_id, amount)])
        await stub.PostTransaction(request, metadata=caller)
        balance = await stub.GetBalance(pb.GetBalanceRequest(account_id=account_id), metadata=caller)
        return int(balance.available)

    balances = await asyncio.gather(
        *(
            post_and_read(client, account, 100 + i)
            for i, (client, account) in enumerate(zip(clients, accounts, strict=True))
        )
    )
    assert balances == [100 + i for i in range(CALLERS)]
    await _counted("PostTransaction", "OK", ok_before + CALLERS)
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # Another client's account: as if missing.
        await stub.GetBalance(
            pb.GetBalanceRequest(account_id=accounts[0]), metadata=api.auth(clients[1], frozenset({SCOPE_READ}))
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
