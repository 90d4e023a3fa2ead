"""ledger.v1.History ListTransactions / ListAccounts: transactions and accounts by metadata (labels, source,
correlation id, time, amount) with cursor paging, from the read model of a real service, over gRPC and the
JSON gateway (the same answers), with the refusals (bad token, token of another filter, bad amounts,
oversized pages) and the client restriction of ledger.read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from facade.api.errors import error_info
from facade.api.gen.ledger.v1 import history_pb2 as hpb
from facade.api.gen.ledger.v1 import history_pb2_grpc as hrpc
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.auth import SCOPE_READ, SCOPE_WRITE, issue_token
from facade.http.models import from_message
from tests.api.conftest import Api, open_api, transfer

PROJECTION_POLLS_MAX = 600


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    instance = await open_api(tmp_path, history=True, http_port=0)
    try:
        yield instance
    finally:
        await instance.channel.close()
        await instance.server.stop()


def history(api: Api) -> Any:
    return hrpc.HistoryStub(api.channel)


async def caught_up(api: Api, timestamp: int) -> None:
    for _ in range(PROJECTION_POLLS_MAX):
        totals = await history(api).GetDailyTotals(hpb.GetDailyTotalsRequest(), metadata=api.auth())
        if totals.projected_until >= timestamp:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the projector did not catch up")


async def post(api: Api, key: str, leg: pb.Leg, client: str = "client-a", **metadata: Any) -> int:
    done = await api.post(key, leg, client=client, metadata=pb.TransactionMetadata(**metadata))
    return int(done.committed_at_ns)


@pytest.fixture
async def ledger(api: Api) -> dict[str, Any]:
    """Eight transactions of client-a with labels, sources, correlation ids and amounts; one of client-b."""
    a, b = await api.account("a", no_overdraft=False), await api.account("b")
    c = await api.account("c", no_overdraft=False, client="client-b")
    d = await api.account("d", client="client-b")
    times = []
    for n in range(8):
        labels = {"campaign": "spring" if n % 2 else "winter", "order": f"o-{n}"}
        source = "pos" if n < 4 else "web"
        times.append(await post(api, f"t-{n}", transfer(a, b, 100 * (n + 1)), labels=labels, source=source))
    times.append(await post(api, "t-x", transfer(c, d, 5), client="client-b", labels={"campaign": "spring"}))
    await caught_up(api, times[-1])
    return {"a": a, "b": b, "c": c, "times": times}


async def search(api: Api, **fields: Any) -> hpb.ListTransactionsResponse:
    page_size, page_token = fields.pop("page_size", 0), fields.pop("page_token", "")
    scopes = fields.pop("scopes", None)
    metadata = api.auth(scopes=scopes) if scopes else api.auth()
    request = hpb.ListTransactionsRequest(
        filter=hpb.TransactionFilter(**fields), page_size=page_size, page_token=page_token
    )
    response: hpb.ListTransactionsResponse = await history(api).ListTransactions(request, metadata=metadata)
    return response


def amounts(response: hpb.ListTransactionsResponse) -> list[int]:
    return [int(t.amount) for t in response.transfers]


async def test_filters_over_grpc(api: Api, ledger: dict[str, Any]) -> None:
    times = ledger["times"]
    assert amounts(await search(api, labels={"campaign": "spring"})) == [200, 400, 600, 800, 5]
    assert amounts(await search(api, labels={"campaign": "spring", "order": "o-3"})) == [400]
    assert amounts(await search(api, labels={"campaign": "autumn"})) == []
    assert amounts(await search(api, labels={"order": ""})) == []  # A present key only matches ''.
    assert amounts(await search(api, source="web", **{"from": times[5], "to": times[7]})) == [600, 700]
    assert amounts(await search(api, amount_min="300", amount_max="500")) == [300, 400, 500]
    assert amounts(await search(api, amount_max="5")) == [5]
    found = await search(api, labels={"order": "o-2"})
    assert found.transfers[0].labels == {"campaign": "winter", "order": "o-2"}
    assert found.transfers[0].debit_account_id == ledger["a"] and found.next_page_token == ""
    assert found.projected_until >= times[-1]

    # A ledger.read caller sees its own client's transactions only; ledger.admin sees every client's.
    own = await search(api, labels={"campaign": "spring"}, scopes=frozenset({SCOPE_READ}))
    assert amounts(own) == [200, 400, 600, 800]


async def test_cursor_paging_is_complete_and_stable(api: Api, ledger: dict[str, Any]) -> None:
    del ledger
    everything = amounts(await search(api))
    assert len(everything) == 9
    pages: list[list[int]] = []
    token = ""
    while True:
        page = await search(api, page_size=2, page_token=token)
        pages.append(amounts(page))
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [2, 2, 2, 2, 1]
    assert [amount for p in pages for amount in p] == everything
    # The same token again gives the same page.
    first = await search(api, page_size=3)
    again = await search(api, page_size=3, page_token=first.next_page_token)
    assert amounts(again) == amounts(await search(api, page_size=3, page_token=first.next_page_token))


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"page_token": "not-a-token"}, "INVALID_PAGE_TOKEN"),
        ({"amount_min": "-1"}, "INVALID_AMOUNT"),
        ({"amount_max": str(1 << 128)}, "INVALID_AMOUNT"),
        ({"amount_min": "9", "amount_max": "1"}, "INVALID_AMOUNT_RANGE"),
        ({"page_size": 1001}, "PAGE_SIZE_TOO_LARGE"),
        ({"labels": {f"k{n}": "v" for n in range(17)}}, "TOO_MANY_LABELS"),
        ({"labels": {"": "v"}}, "INVALID_LABEL"),
        ({"from": 10, "to": 5}, "INVALID_PERIOD"),
    ],
)
async def test_refusals(api: Api, fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await search(api, **fields)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(refused.value)
    assert info is not None and info.reason == reason


async def test_a_token_is_valid_only_with_its_filter(api: Api, ledger: dict[str, Any]) -> None:
    del ledger
    page = await search(api, labels={"campaign": "spring"}, page_size=1)
    assert page.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await search(api, labels={"campaign": "winter"}, page_size=1, page_token=page.next_page_token)
    info = error_info(refused.value)
    assert info is not None and info.reason == "INVALID_PAGE_TOKEN"
    # Nor for the other listing.
    request = hpb.ListHistoryAccountsRequest(
        filter=hpb.TransactionFilter(labels={"campaign": "spring"}), page_token=page.next_page_token
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await history(api).ListAccounts(request, metadata=api.auth())


async def test_list_accounts(api: Api, ledger: dict[str, Any]) -> None:
    request = hpb.ListHistoryAccountsRequest(filter=hpb.TransactionFilter(labels={"campaign": "spring"}))
    found = await history(api).ListAccounts(request, metadata=api.auth())
    by_account = {a.account_id: a.entries for a in found.accounts}
    assert by_account[ledger["a"]] == 4 and by_account[ledger["b"]] == 4 and by_account[ledger["c"]] == 1
    assert [a.account_id for a in found.accounts] == sorted(by_account, key=int)
    paged: list[str] = []
    token = ""
    while True:
        page_request = hpb.ListHistoryAccountsRequest(
            filter=hpb.TransactionFilter(labels={"campaign": "spring"}), page_size=1, page_token=token
        )
        page = await history(api).ListAccounts(page_request, metadata=api.auth())
        paged += [a.account_id for a in page.accounts]
        token = page.next_page_token
        if not token:
            break
    assert paged == [a.account_id for a in found.accounts]


async def test_the_gateway_answers_as_grpc(api: Api, ledger: dict[str, Any]) -> None:
    times = ledger["times"]
    token = issue_token(api.settings.auth, "client-a", frozenset({SCOPE_READ, "ledger.admin"}))
    base = f"http://127.0.0.1:{api.server.http_port}/v1/history"
    async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {token}"}) as http:
        response = await http.get("/transactions:search", params={"label": ["campaign=spring", "order=o-3"]})
        assert response.status_code == 200, response.text
        grpc_answer = await search(api, labels={"campaign": "spring", "order": "o-3"})
        body = response.json()
        del body["projected_until"]
        expected = from_message(grpc_answer)
        del expected["projected_until"]
        assert body == expected

        rfc3339_from = "1970-01-01T00:00:00.000000000Z"
        response = await http.get(
            "/transactions:search", params={"source": "web", "from": rfc3339_from, "to": str(times[7])}
        )
        assert [int(t["amount"]) for t in response.json()["transfers"]] == [500, 600, 700]

        pages, cursor = [], ""
        while True:
            response = await http.get("/transactions:search", params={"page_size": 4, "page_token": cursor})
            assert response.status_code == 200, response.text
            pages += [int(t["amount"]) for t in response.json()["transfers"]]
            cursor = response.json()["next_page_token"]
            if not cursor:
                break
        assert pages == amounts(await search(api))

        response = await http.get("/accounts:search", params={"label": "campaign=winter"})
        assert response.status_code == 200, response.text
        assert {a["account_id"] for a in response.json()["accounts"]} == {ledger["a"], ledger["b"]}

        for params, reason in (
            ({"label": "no-equals-sign"}, "INVALID_LABEL"),
            ({"page_token": "garbage"}, "INVALID_PAGE_TOKEN"),
            ({"from": "yesterday"}, "INVALID_TIMESTAMP"),
        ):
            response = await http.get("/transactions:search", params=params)
            assert (response.status_code, response.json()["reason"]) == (400, reason)
        response = await http.get("/transactions:search", params={"amount_min": "12x"})
        assert response.status_code in (400, 422)
    writer = issue_token(api.settings.auth, "client-a", frozenset({SCOPE_WRITE}))
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{base}/transactions:search", headers={"authorization": f"Bearer {writer}"})
        assert response.status_code == 403
