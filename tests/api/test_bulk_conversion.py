"""A bulk request large enough to be converted and mapped off the event loop (MAP_IN_THREAD_TRANSACTIONS_MIN
items) answers exactly as a small one: each item in its place, the ones that do not convert or map refused
with their own reason, the others committed once (over loopback, real engine)."""

from __future__ import annotations

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.service import MAP_IN_THREAD_TRANSACTIONS_MIN
from tests.api.conftest import Api, credit, debit

BAD_TIME_INDEX = 5
OVERDRAWN_INDEX = 9
INVALID_AMOUNT_INDEX = 17


async def test_a_bulk_request_converted_off_the_loop_answers_each_item_in_its_place(api: Api) -> None:
    alice = await api.account("alice")
    items = [
        pb.PostTransactionRequest(idempotency_key=f"bulk-{i}", legs=[credit(alice, 1)])
        for i in range(MAP_IN_THREAD_TRANSACTIONS_MIN)
    ]
    items[BAD_TIME_INDEX].metadata.occurred_at_rfc3339 = "yesterday"
    items[OVERDRAWN_INDEX].legs[0].CopyFrom(debit(alice, 1_000_000))
    items[INVALID_AMOUNT_INDEX].legs[0].amount = "-1"
    response = await api.stub.PostTransactions(pb.PostTransactionsRequest(transactions=items), metadata=api.auth())

    assert len(response.results) == MAP_IN_THREAD_TRANSACTIONS_MIN
    reasons = {i: r.error.reason for i, r in enumerate(response.results) if r.HasField("error")}
    assert reasons == {
        BAD_TIME_INDEX: "INVALID_TIMESTAMP",
        OVERDRAWN_INDEX: "INSUFFICIENT_FUNDS",
        INVALID_AMOUNT_INDEX: "INVALID_AMOUNT",
    }
    committed = [r.transaction for r in response.results if r.HasField("transaction")]
    assert [t.idempotency_key for t in committed] == [
        f"bulk-{i}" for i in range(MAP_IN_THREAD_TRANSACTIONS_MIN) if i not in reasons
    ]
    assert len({t.committed_at_ns for t in committed}) == len(committed)
    assert await api.available(alice) == MAP_IN_THREAD_TRANSACTIONS_MIN - len(reasons)
