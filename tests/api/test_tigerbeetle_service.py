"""The service on a real TigerBeetle (`LEDGER_ENGINE__BACKEND=tigerbeetle`), over loopback gRPC.

The README's recipe starts a `--development` replica (32 KiB requests: 253 transfers), so a 300-item
PostTransactions only works when the engine adapter splits the batcher's batch; expiries only reach the
statement and the reconciliation when the change feed carries them.

- With `TB_ADDRESSES` (as the engine conformance suite), the batch test runs on that cluster. It is shared
  and cannot be reset: every client id, reference and idempotency key here is fresh.
- With `TB_BINARY` (a `tigerbeetle` executable), the read-model test formats and starts its own
  `--development` replica on a free loopback port: Reconcile compares every account of the cluster, so
  it needs one whose whole history the fresh read model can project in a test's time.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from facade.api.gen.ledger.v1 import history_pb2 as hpb
from facade.api.gen.ledger.v1 import history_pb2_grpc as hrpc
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.app import start
from facade.settings import EngineSettings
from tests.api.conftest import Api, credit, make_settings, transfer
from tests.engine.conftest import TB_SKIP_REASON
from tests.tigerbeetle_fixtures import needs_binary, tigerbeetle_replica

needs_cluster = pytest.mark.skipif(not os.environ.get("TB_ADDRESSES"), reason=TB_SKIP_REASON)

BATCH_ITEMS = 300
WAIT_SECONDS = 60.0
"""Bound on waiting for the expiry to reach the read model."""


async def open_tigerbeetle_api(directory: Path, *, history: bool, addresses: str, cluster_id: int) -> Api:
    settings = make_settings(directory, history)
    settings.engine = EngineSettings(backend="tigerbeetle", tb_addresses=addresses, tb_cluster_id=cluster_id)
    server = await start(settings)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    return Api(settings, server, channel, rpc.LedgerStub(channel))


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    addresses, cluster_id = os.environ["TB_ADDRESSES"], int(os.environ.get("TB_CLUSTER_ID", "0"))
    instance = await open_tigerbeetle_api(tmp_path, history=False, addresses=addresses, cluster_id=cluster_id)
    try:
        yield instance
    finally:
        await instance.channel.close()
        await instance.server.stop()


@pytest.fixture
async def api_history(tmp_path: Path) -> AsyncIterator[Api]:
    async with tigerbeetle_replica(tmp_path) as address:
        instance = await open_tigerbeetle_api(tmp_path / "service", history=True, addresses=address, cluster_id=0)
        try:
            yield instance
        finally:
            await instance.channel.close()
            await instance.server.stop()


@pytest.fixture
def client() -> str:
    return f"tb-{uuid.uuid4().hex}"


@needs_cluster
async def test_post_transactions_with_300_items(api: Api, client: str) -> None:
    alice = await api.account("alice", client=client)
    request = pb.PostTransactionsRequest(
        transactions=[
            pb.PostTransactionRequest(idempotency_key=f"k{index}", legs=[credit(alice, index + 1)])
            for index in range(BATCH_ITEMS)
        ]
    )
    response = await api.stub.PostTransactions(request, metadata=api.auth(client))
    assert [r.WhichOneof("result") for r in response.results] == ["transaction"] * BATCH_ITEMS
    assert not any(r.transaction.deduplicated for r in response.results)
    committed = [r.transaction.committed_at_ns for r in response.results]
    assert len(set(committed)) == BATCH_ITEMS
    total = BATCH_ITEMS * (BATCH_ITEMS + 1) // 2
    balance = await api.stub.GetBalance(pb.GetBalanceRequest(account_id=alice), metadata=api.auth(client))
    assert int(balance.available) == total
    # The same request again: every item is the same transaction, deduplicated, nothing posts twice.
    again = await api.stub.PostTransactions(request, metadata=api.auth(client))
    assert [r.transaction.deduplicated for r in again.results] == [True] * BATCH_ITEMS
    assert [r.transaction.committed_at_ns for r in again.results] == committed
    balance = await api.stub.GetBalance(pb.GetBalanceRequest(account_id=alice), metadata=api.auth(client))
    assert int(balance.available) == total


@needs_binary
async def test_an_expired_hold_reaches_the_statement_and_reconciles(api_history: Api, client: str) -> None:
    api = api_history
    history = hrpc.HistoryStub(api.channel)
    alice, shop = await api.account("alice", client=client), await api.account("shop", client=client)
    await api.post("fund", credit(alice, 100), client=client)
    hold = await api.post(
        "hold", transfer(alice, shop, 30), client=client, authorize_only=True, authorization_timeout_seconds=1
    )
    balance = await api.stub.GetBalance(pb.GetBalanceRequest(account_id=alice), metadata=api.auth(client))
    assert int(balance.available) == 70
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while True:
        statement = await history.GetStatement(hpb.GetStatementRequest(account_id=alice), metadata=api.auth(client))
        changes = [line.change for line in statement.lines]
        if "TWO_PHASE_EXPIRED" in changes:
            break
        assert asyncio.get_running_loop().time() < deadline, f"no expiry in the statement: {changes}"
        await asyncio.sleep(0.1)
    assert changes == ["SINGLE_PHASE", "TWO_PHASE_PENDING", "TWO_PHASE_EXPIRED"]
    expired = statement.lines[-1]
    assert (expired.side, expired.amount, expired.transaction_id) == ("DEBIT", "30", hold.transaction_id)
    assert expired.engine_timestamp > hold.committed_at_ns
    assert expired.balance_after.debits_pending == "0" and expired.balance_after.credits_posted == "100"
    balance = await api.stub.GetBalance(pb.GetBalanceRequest(account_id=alice), metadata=api.auth(client))
    assert int(balance.available) == 100
    report = await history.Reconcile(hpb.ReconcileRequest(), metadata=api.auth(client))
    assert report.ok, report
    assert report.as_of >= expired.engine_timestamp
