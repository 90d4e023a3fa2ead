"""PostTransactions' response is filled in place, item by item: it must equal, message for message, the
response made of each item's own result (`posted_result`, what a stream answers), refusals included."""

from __future__ import annotations

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.domain.accounts import Currencies
from facade.domain.errors import ErrorKind, LedgerError
from facade.domain.transactions import map_post
from facade.operations import convert
from facade.service import TransactionView
from facade.settings import ApiSettings

CURRENCIES = Currencies(dict(ApiSettings().currencies))


def test_a_batch_response_equals_the_items_own_results() -> None:
    requests = [
        pb.PostTransactionRequest(
            idempotency_key=f"k{i}",
            legs=[pb.Leg(type=pb.LEG_TYPE_CREDIT, account_id=str(1000 + i), amount=str(5 + i), currency="USD")],
            metadata=pb.TransactionMetadata(source="s", labels={"a": "1"}, occurred_at_ns=i * 1_000_000)
            if i % 2
            else None,
        )
        for i in range(6)
    ]
    request = pb.PostTransactionsRequest(transactions=requests)
    results: list[TransactionView | LedgerError] = []
    for i, item in enumerate(requests):
        if i % 3 == 2:
            results.append(LedgerError(ErrorKind.PRECONDITION, "INSUFFICIENT_FUNDS", "no", {"leg": "0"}))
        elif i == 4:
            results.append(LedgerError(ErrorKind.INVALID, "INVALID_AMOUNT", "bad"))
        else:
            mapped = map_post("client", convert.post_request(item), currencies=CURRENCIES)
            results.append(TransactionView(mapped, 1_700_000_000_000_000_001 + i, deduplicated=i == 3))
    response = convert.batch_response(request, results)
    expected = [convert.posted_result(q, r) for q, r in zip(requests, results, strict=True)]
    assert list(response.results) == expected
    assert [r.WhichOneof("result") for r in response.results] == [
        "transaction",
        "transaction",
        "error",
        "transaction",
        "error",
        "error",
    ]
