"""The History queries over the JSON gateway (facade.http.history_routes) against ledger.v1.History over gRPC,
on one loopback server with the in-service read model: the same query gives the same answer on both edges,
the same refusals carry the same reasons, and times are accepted as engine nanoseconds or RFC 3339. The
queries' answers on both edges are tests/behaviour/ (test_history.py, test_same_answers.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facade.api.errors import error_info
from facade.api.gen.ledger.v1 import history_pb2 as hpb
from facade.api.gen.ledger.v1 import history_pb2_grpc as hrpc
from facade.auth import SCOPE_READ, SCOPE_WRITE
from facade.domain.errors import LedgerError
from facade.http import models as m
from facade.http.history_routes import REASON_INVALID_TIMESTAMP, parse_time
from tests.api.conftest import credit
from tests.http.test_gateway import Http, close_http, open_http

WAIT_SECONDS = 30.0
NANOS_PER_SECOND = 1_000_000_000
JsonObject = dict[str, Any]


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[Http]:
    instance = await open_http(tmp_path, history=True)
    try:
        yield instance
    finally:
        await close_http(instance)


def rfc3339(nanos: int, offset_minutes: int = 0) -> str:
    """Engine nanoseconds → RFC 3339 with all nine fraction digits, in the given UTC offset."""
    zone = timezone(timedelta(minutes=offset_minutes))
    moment = datetime.fromtimestamp(nanos // NANOS_PER_SECOND, tz=UTC).astimezone(zone)
    return (
        moment.strftime("%Y-%m-%dT%H:%M:%S")
        + f".{nanos % NANOS_PER_SECOND:09d}"
        + moment.strftime("%z")[:3]
        + (":" + moment.strftime("%z")[3:])
    )


def period_request(request: Any, timestamp_from: int) -> Any:
    """`request` with its `from` field (a Python keyword) set."""
    setattr(request, "from", timestamp_from)
    return request


def stub(http: Http) -> Any:
    return hrpc.HistoryStub(http.api.channel)


async def caught_up(http: Http, timestamp: int) -> None:
    """Waits until the read model holds the change committed at `timestamp`."""
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while True:
        totals = await stub(http).GetDailyTotals(hpb.GetDailyTotalsRequest(), metadata=http.api.auth())
        if totals.projected_until >= timestamp:
            return
        assert asyncio.get_running_loop().time() < deadline, "projector did not catch up"
        await asyncio.sleep(0.05)


async def test_rfc3339_times_are_the_same_instants_as_nanoseconds(http: Http) -> None:
    api = http.api
    alice = await api.account("alice")
    first = await api.post("t1", credit(alice, 100))
    second = await api.post("t2", credit(alice, 200))
    await caught_up(http, second.committed_at_ns)
    boundary = second.committed_at_ns  # Half-open [from, to): `to` at the second leaves it out.
    by_nanos = await http.call("GET", f"/v1/accounts/{alice}/statement?to={boundary}")
    for offset_minutes in (0, 60, -330):
        text = rfc3339(boundary, offset_minutes)
        by_text = await http.client.get(f"/v1/accounts/{alice}/statement", params={"to": text}, headers=http.auth())
        assert by_text.status_code == 200, by_text.text
        assert by_text.json() == by_nanos, text
    assert [line["transaction_id"] for line in by_nanos["lines"]] == [first.transaction_id]
    exact = rfc3339(first.committed_at_ns)
    before = await http.client.get(f"/v1/accounts/{alice}/balance-as-of", params={"as_of": exact}, headers=http.auth())
    assert before.json()["credits_posted"] == "100", "as_of is inclusive, to the nanosecond"
    totals = await http.client.get(
        "/v1/history/daily-totals", params={"from": rfc3339(boundary), "to": rfc3339(boundary + 1)}, headers=http.auth()
    )
    assert [t["amount"] for t in totals.json()["totals"]] == ["200"]


async def test_refusals_carry_the_grpc_reasons(http: Http) -> None:
    api = http.api
    alice = await api.account("alice")
    reader = http.auth(scopes=frozenset({SCOPE_READ}))
    stranger = http.auth(client_id="client-b", scopes=frozenset({SCOPE_READ, SCOPE_WRITE}))
    history = stub(http)

    async def refused(path: str, status: int, reason: str, headers: dict[str, str] | None = None) -> JsonObject:
        response = await http.client.get(path, headers=http.auth() if headers is None else headers)
        assert response.status_code == status, response.text
        body: JsonObject = response.json()
        assert body["reason"] == reason, body
        return body

    await refused(f"/v1/accounts/{alice}/statement", 404, "ACCOUNT_NOT_FOUND", stranger)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await history.GetStatement(
            hpb.GetStatementRequest(account_id=alice), metadata=api.auth("client-b", frozenset({SCOPE_READ}))
        )
    assert (info := error_info(failed.value)) and info.reason == "ACCOUNT_NOT_FOUND"
    for path, call, request in (
        ("/v1/history/daily-totals", history.GetDailyTotals, hpb.GetDailyTotalsRequest()),
        ("/v1/history/transactions?correlation_id=x", history.ListTransactionsByCorrelation,
         hpb.ListTransactionsByCorrelationRequest(correlation_id="x")),
        ("/v1/history/reconciliation", history.Reconcile, hpb.ReconcileRequest()),
    ):  # fmt: skip
        body = await refused(path, 403, "MISSING_SCOPE", reader)
        assert body["code"] == "PERMISSION_DENIED"
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(request, metadata=api.auth(scopes=frozenset({SCOPE_READ})))
        assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (info := error_info(failed.value)) and info.reason == "MISSING_SCOPE"
    await refused(f"/v1/accounts/{alice}/balance-as-of", 401, "MISSING_CREDENTIALS", {})
    await refused(f"/v1/accounts/{alice}/statement?limit=10001", 400, "LIMIT_TOO_LARGE")
    await refused(f"/v1/accounts/{alice}/statement?from=9&to=5", 400, "INVALID_PERIOD")
    await refused("/v1/history/daily-totals?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", 400, "INVALID_PERIOD")
    await refused("/v1/history/transactions", 400, "CORRELATION_ID_REQUIRED")
    for bad in ("yesterday", "2026-13-01T00:00:00Z", "1969-12-31T23:59:59Z", "18446744073709551616", "-1", "01"):
        body = await refused(f"/v1/accounts/{alice}/balance-as-of?as_of={bad}", 400, REASON_INVALID_TIMESTAMP)
        assert body["metadata"]["field"] == "as_of" and body["code"] == "INVALID_ARGUMENT"
    body = await refused("/v1/history/daily-totals?from=2026-01-01T00:00:00.1234567890Z", 400, REASON_INVALID_TIMESTAMP)
    assert body["metadata"]["field"] == "from"


@settings(max_examples=200, deadline=None)
@given(nanos=st.integers(min_value=0, max_value=m.UINT64_MAX), offset=st.integers(-1439, 1439))
def test_parse_time_round_trips_rfc3339(nanos: int, offset: int) -> None:
    assert parse_time(rfc3339(nanos, offset), field="to") == nanos
    assert parse_time(str(nanos), field="to") == nanos


def test_parse_time_edges() -> None:
    assert parse_time("", field="to") == 0
    assert parse_time("1970-01-01T00:00:00Z", field="to") == 0
    assert parse_time("1970-01-01t00:00:01.5z", field="to") == 1_500_000_000
    assert parse_time("1970-01-01 01:00:00+01:00", field="to") == 0
    assert parse_time(str(m.UINT64_MAX), field="to") == m.UINT64_MAX
    assert parse_time("2554-07-21T23:34:33.709551615Z", field="to") == m.UINT64_MAX
    for bad in (
        "2554-07-21T23:34:33.709551616Z",  # 2^64 ns: one past the u64 range.
        "9999-12-31T23:59:59-23:59",  # Past datetime's range once in UTC.
        "0000-01-01T00:00:00Z",
        "1970-01-01T00:00:00",
        "1970-01-01T00:00:60Z",
        "1970-01-01T00:00:00+24:00",
        " 1",
        "1 ",
        "1\n",
    ):
        with pytest.raises(LedgerError) as failed:
            parse_time(bad, field="to")
        assert failed.value.reason == REASON_INVALID_TIMESTAMP and failed.value.metadata == {"field": "to"}


async def test_without_the_read_model_the_routes_are_absent_and_docs_still_served(tmp_path: Path) -> None:
    instance = await open_http(tmp_path)  # serve_history off: no History service on either edge.
    try:
        response = await instance.client.get("/v1/history/daily-totals", headers=instance.auth())
        assert response.status_code == 404 and response.json()["reason"] == "ROUTE_NOT_FOUND"
        document = (await instance.client.get("/openapi.json")).json()
        assert not [path for path in document["paths"] if "history" in path or "statement" in path]
        assert (await instance.client.get("/docs")).status_code == 200
    finally:
        await close_http(instance)
