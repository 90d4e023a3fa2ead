"""Times on both edges: a request may give a time as engine nanoseconds or as RFC 3339 (`*_rfc3339`), both
naming the same nanosecond or one of them; every answer carrying a time carries it both ways, the same over
gRPC and over the JSON gateway (one loopback server with the in-service read model)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facade.api.errors import error_info
from facade.api.gen.ledger.v1 import history_pb2 as hpb
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.domain.times import format_time, parse_time
from tests.api.conftest import credit
from tests.http.test_gateway import Http, close_http, open_http
from tests.http.test_history_routes import caught_up, rfc3339, stub

OCCURRED_AT_NS = 1_764_000_000_123_456_789
OCCURRED_AT_TEXT = "2025-11-24T17:00:00.123456789+01:00"
"""The same nanosecond as OCCURRED_AT_NS, in another offset (16:00:00.123456789Z)."""


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=2**64 - 1))
def test_format_time_round_trips_every_u64(nanos: int) -> None:
    text = format_time(nanos)
    assert parse_time(text, field="t") == nanos and text.endswith("Z")
    assert len(text.split(".")[1]) - 1 in (3, 6, 9) if "." in text else nanos % 1_000_000_000 == 0


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[Http]:
    instance = await open_http(tmp_path, history=True)
    try:
        yield instance
    finally:
        await close_http(instance)


def test_the_fixture_time_is_what_it_says() -> None:
    assert parse_time(OCCURRED_AT_TEXT, field="t") == OCCURRED_AT_NS
    assert format_time(OCCURRED_AT_NS) == "2025-11-24T16:00:00.123456789Z"
    assert format_time(0) == "" and format_time(1_000_000_000) == "1970-01-01T00:00:01Z"
    assert format_time(1_500_000_000) == "1970-01-01T00:00:01.500Z"
    assert format_time(2**64 - 1) == "2554-07-21T23:34:33.709551615Z"


async def test_a_business_time_given_as_rfc3339_is_the_same_transaction_as_in_nanoseconds(http: Http) -> None:
    alice = await http.account("alice")
    over_grpc = await http.api.post(
        "t-1", credit(alice, 5), metadata=pb.TransactionMetadata(occurred_at_rfc3339=OCCURRED_AT_TEXT)
    )
    assert over_grpc.metadata.occurred_at_ns == OCCURRED_AT_NS
    assert over_grpc.metadata.occurred_at_rfc3339 == format_time(OCCURRED_AT_NS)
    assert over_grpc.committed_at_rfc3339 == format_time(over_grpc.committed_at_ns) != ""
    # The same request with the time in nanoseconds (or both, naming the same nanosecond) is a replay.
    replay = await http.post("t-1", credit_json(alice, 5), metadata={"occurred_at_ns": str(OCCURRED_AT_NS)}, expect=200)
    assert replay["deduplicated"] and replay["transaction_id"] == over_grpc.transaction_id
    assert replay["metadata"]["occurred_at_rfc3339"] == format_time(OCCURRED_AT_NS)
    both = {"occurred_at_ns": str(OCCURRED_AT_NS), "occurred_at_rfc3339": OCCURRED_AT_TEXT}
    assert (await http.post("t-1", credit_json(alice, 5), metadata=both, expect=200))["deduplicated"]
    # Read back on both edges: every time both ways.
    by_id = await http.api.stub.GetTransaction(
        pb.GetTransactionRequest(transaction_id=over_grpc.transaction_id), metadata=http.api.auth()
    )
    assert by_id.metadata.occurred_at_rfc3339 == over_grpc.metadata.occurred_at_rfc3339
    assert by_id.committed_at_rfc3339 == over_grpc.committed_at_rfc3339
    account = await http.call("GET", f"/v1/accounts/{alice}")
    assert account["created_at_rfc3339"] == format_time(int(account["created_at_ns"]))
    entries = await http.call("GET", f"/v1/accounts/{alice}/entries")
    assert [e["committed_at_rfc3339"] for e in entries["entries"]] == [over_grpc.committed_at_rfc3339]
    # The epoch is "no time" (0), whichever way it is written: the answer says so the canonical way.
    epoch = await http.api.post(
        "t-0", credit(alice, 1), metadata=pb.TransactionMetadata(occurred_at_rfc3339="1970-01-01T01:00:00+01:00")
    )
    assert (epoch.metadata.occurred_at_ns, epoch.metadata.occurred_at_rfc3339) == (0, "")


async def test_two_different_times_or_a_bad_one_are_refused_on_both_edges(http: Http) -> None:
    alice = await http.account("alice")
    for text, field in [
        ("2025-11-24T16:00:00Z", "metadata.occurred_at_rfc3339"),  # Not OCCURRED_AT_NS: which one?
        ("yesterday", "metadata.occurred_at_rfc3339"),
        ("1969-12-31T23:59:59Z", "metadata.occurred_at_rfc3339"),
    ]:
        metadata = {"occurred_at_ns": str(OCCURRED_AT_NS), "occurred_at_rfc3339": text}
        body = {"idempotency_key": "bad", "legs": [credit_json(alice, 1)], "metadata": metadata}
        refused = await http.error("POST", "/v1/transactions", body, 400, "INVALID_ARGUMENT", "INVALID_TIMESTAMP")
        assert refused["metadata"]["field"] == field
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await http.api.post(
                "bad",
                credit(alice, 1),
                metadata=pb.TransactionMetadata(occurred_at_ns=OCCURRED_AT_NS, occurred_at_rfc3339=text),
            )
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (info := error_info(failed.value)) and (info.reason, info.metadata["field"]) == (
            "INVALID_TIMESTAMP",
            field,
        )
    assert await http.available(alice) == 0, "nothing half-written"


async def test_a_bad_time_in_a_batch_refuses_that_item_only(http: Http) -> None:
    alice = await http.account("alice")
    good = pb.PostTransactionRequest(idempotency_key="b-1", legs=[credit(alice, 3)])
    bad = pb.PostTransactionRequest(
        idempotency_key="b-2", legs=[credit(alice, 4)], metadata=pb.TransactionMetadata(occurred_at_rfc3339="soon")
    )
    answer = await http.api.stub.PostTransactions(
        pb.PostTransactionsRequest(transactions=[bad, good]), metadata=http.api.auth()
    )
    assert [r.WhichOneof("result") for r in answer.results] == ["error", "transaction"]
    assert answer.results[0].error.reason == "INVALID_TIMESTAMP"
    assert await http.available(alice) == 3


async def test_history_takes_and_gives_rfc3339(http: Http) -> None:
    alice = await http.account("alice")
    posted = await http.api.post("h-1", credit(alice, 7))
    await caught_up(http, posted.committed_at_ns)
    to_ns = posted.committed_at_ns + 1_000_000_000
    period = {"from_rfc3339": rfc3339(posted.committed_at_ns, 90), "to_rfc3339": rfc3339(to_ns, -300)}
    request = hpb.GetStatementRequest(
        account_id=alice, from_rfc3339=period["from_rfc3339"], to_rfc3339=period["to_rfc3339"]
    )
    statement = await stub(http).GetStatement(request, metadata=http.api.auth())
    assert [line.engine_timestamp for line in statement.lines] == [posted.committed_at_ns]
    assert statement.lines[0].engine_timestamp_rfc3339 == posted.committed_at_rfc3339
    assert (getattr(statement, "from"), statement.to) == (posted.committed_at_ns, to_ns)
    assert (statement.from_rfc3339, statement.to_rfc3339) == (posted.committed_at_rfc3339, format_time(to_ns))
    assert statement.projected_until_rfc3339 == format_time(statement.projected_until)
    over_http = await http.call("GET", f"/v1/accounts/{alice}/statement", params=period)
    assert over_http["lines"][0]["engine_timestamp_rfc3339"] == posted.committed_at_rfc3339
    assert over_http["from_rfc3339"] == statement.from_rfc3339
    as_of = await http.call(
        "GET", f"/v1/accounts/{alice}/balance-as-of", params={"as_of_rfc3339": posted.committed_at_rfc3339}
    )
    assert (as_of["credits_posted"], as_of["timestamp_rfc3339"]) == ("7", posted.committed_at_rfc3339)
    mismatch = {"as_of": str(posted.committed_at_ns - 1), "as_of_rfc3339": posted.committed_at_rfc3339}
    refused = await http.call("GET", f"/v1/accounts/{alice}/balance-as-of", params=mismatch, expect=400)
    assert (refused["reason"], refused["metadata"]["field"]) == ("INVALID_TIMESTAMP", "as_of_rfc3339")


def credit_json(account_id: str, amount: int) -> dict[str, str]:
    return {"type": "LEG_TYPE_CREDIT", "account_id": account_id, "amount": str(amount), "currency": "USD"}
