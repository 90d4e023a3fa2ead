"""ledger.v1.History over loopback gRPC: the read model (chDB) fed by the in-service projector from the
engine's change feed, answering with the same ownership and scope rules as the ledger API. The queries'
behaviour on both edges is tests/behaviour/test_history.py; here what needs a server of its own (a restart)
or many inputs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from facade.api.gen.ledger.v1 import history_pb2 as hpb
from facade.api.gen.ledger.v1 import history_pb2_grpc as hrpc
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from tests.api.conftest import Api, credit, open_api

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
