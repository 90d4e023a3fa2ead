"""ledger.v1.History ListTransactions / ListAccounts: transactions and accounts by metadata (labels, source,
correlation id, time, amount) with cursor paging, from the read model of a real service, over gRPC and the
JSON gateway (the same answers), with the refusals (bad token, token of another filter, bad amounts,
oversized pages) and the client restriction of ledger.read."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
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
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.auth import SCOPE_READ, SCOPE_WRITE, SCOPES_ALL, issue_token
from facade.http.models import from_message
from facade.settings import AuthSettings
from ledger_testkit.service import ledger_executable
from tests.api.conftest import Api, open_api, transfer
from tests.metadata.test_shared_facades import STOP_SECONDS, LogLines

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


ACCOUNT_POLLS_MAX = 600
"""Polls (50 ms apart) for an account to reach the read model's `accounts` table."""
QUOTED_NOTE = "it's \"quoted\" \\ back\\slash\t{'x':'y'}"
"""A label value with quotes, backslashes, a tab and map syntax: it must neither break the row nor the query."""


async def open_account(api: Api, reference: str, client: str = "client-a", **labels: str) -> str:
    account = await api.stub.CreateAccount(
        pb.CreateAccountRequest(
            currency="USD",
            external_reference=reference,
            owner=reference,
            type=pb.ACCOUNT_TYPE_OVERDRAFT_ALLOWED,
            metadata=labels,
        ),
        metadata=api.auth(client),
    )
    return str(account.account_id)


async def accounts_labelled(api: Api, labels: dict[str, str], **fields: Any) -> hpb.ListHistoryAccountsResponse:
    scopes = fields.pop("scopes", None)
    metadata = api.auth(client_id=fields.pop("client", "client-a"), **({"scopes": scopes} if scopes else {}))
    request = hpb.ListHistoryAccountsRequest(account_labels=labels, **fields)
    response: hpb.ListHistoryAccountsResponse = await history(api).ListAccounts(request, metadata=metadata)
    return response


async def until_listed(api: Api, labels: dict[str, str], expected: set[str]) -> hpb.ListHistoryAccountsResponse:
    """ListAccounts by account labels (as an admin) once it lists `expected` (the feed writes in the background)."""
    for _ in range(ACCOUNT_POLLS_MAX):
        found = await accounts_labelled(api, labels)
        if {a.account_id for a in found.accounts} == expected:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"accounts labelled {labels} never became {expected}: {found}")


async def test_accounts_by_their_own_labels(api: Api) -> None:
    noted = await open_account(api, "acct-noted", tier="gold", note=QUOTED_NOTE)
    gold = await open_account(api, "acct-gold", tier="gold")
    silver = await open_account(api, "acct-silver", tier="silver")
    foreign = await open_account(api, "acct-foreign", client="client-b", tier="gold")
    found = await until_listed(api, {"tier": "gold"}, {noted, gold, foreign})
    assert [a.account_id for a in found.accounts] == sorted([noted, gold, foreign], key=int)
    by_id = {a.account_id: a for a in found.accounts}
    assert dict(by_id[noted].labels) == {"tier": "gold", "note": QUOTED_NOTE}
    assert by_id[noted].external_reference == "acct-noted" and by_id[noted].currency == "USD"
    assert by_id[noted].entries == 0  # Listed without any entry: the labels alone select it.
    await until_listed(api, {"tier": "silver"}, {silver})
    await until_listed(api, {"note": QUOTED_NOTE}, {noted})
    await until_listed(api, {"note": QUOTED_NOTE, "tier": "silver"}, set())  # Every pair must match.
    await until_listed(api, {"tier": ""}, set())  # An empty value matches a present key only.

    # ledger.read sees its own client's accounts only, and never another client's attributes.
    own = await accounts_labelled(api, {"tier": "gold"}, scopes=frozenset({SCOPE_READ}))
    assert {a.account_id for a in own.accounts} == {noted, gold}
    theirs = await accounts_labelled(api, {"tier": "gold"}, client="client-b", scopes=frozenset({SCOPE_READ}))
    assert {a.account_id for a in theirs.accounts} == {foreign}

    # With a transaction filter too: only the accounts with an entry matching it.
    committed = await post(api, "acct-t-1", transfer(noted, silver, 70), labels={"campaign": "autumn"})
    await caught_up(api, committed)
    both = await accounts_labelled(api, {"tier": "gold"}, filter=hpb.TransactionFilter(labels={"campaign": "autumn"}))
    assert [(a.account_id, a.entries) for a in both.accounts] == [(noted, 1)]
    assert dict(both.accounts[0].labels)["note"] == QUOTED_NOTE
    # Without account labels the entries' accounts carry their own labels too.
    touched = await history(api).ListAccounts(
        hpb.ListHistoryAccountsRequest(filter=hpb.TransactionFilter(labels={"campaign": "autumn"})),
        metadata=api.auth(),
    )
    assert {a.account_id: a.labels["tier"] for a in touched.accounts} == {noted: "gold", silver: "silver"}
    listed = await until_listed(api, {"tier": "gold"}, {noted, gold, foreign})
    assert {a.account_id: a.entries for a in listed.accounts}[noted] == 1

    # Cursor paging over the account-label listing: complete, in order, bound to its filter.
    paged, token = [], ""
    for _ in range(10):
        page = await accounts_labelled(api, {"tier": "gold"}, page_size=1, page_token=token)
        paged += [a.account_id for a in page.accounts]
        token = page.next_page_token
        if not token:
            break
    assert paged == [a.account_id for a in listed.accounts]
    first = await accounts_labelled(api, {"tier": "gold"}, page_size=1)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await accounts_labelled(api, {"tier": "silver"}, page_size=1, page_token=first.next_page_token)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(refused.value)
    assert info is not None and info.reason == "INVALID_PAGE_TOKEN"
    for labels, reason in (
        ({"": "x"}, "INVALID_LABEL"),
        ({"k": "v" * 129}, "FILTER_TOO_LONG"),
        ({f"k{n}": "v" for n in range(17)}, "TOO_MANY_LABELS"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await accounts_labelled(api, labels)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        info = error_info(refused.value)
        assert info is not None and info.reason == reason

    # The gateway: `account_label=key=value`, the same answer as gRPC.
    token_text = issue_token(api.settings.auth, "client-a", frozenset({SCOPE_READ, "ledger.admin"}))
    base = f"http://127.0.0.1:{api.server.http_port}/v1/history"
    async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {token_text}"}) as http:
        response = await http.get("/accounts:search", params={"account_label": [f"note={QUOTED_NOTE}", "tier=gold"]})
        assert response.status_code == 200, response.text
        expected = from_message(await accounts_labelled(api, {"note": QUOTED_NOTE, "tier": "gold"}))
        body = response.json()
        del body["projected_until"], expected["projected_until"]
        del body["projected_until_rfc3339"], expected["projected_until_rfc3339"]
        assert body == expected and [a["account_id"] for a in body["accounts"]] == [noted]
        assert body["accounts"][0]["labels"]["note"] == QUOTED_NOTE
        response = await http.get("/accounts:search", params={"account_label": "tier=gold", "label": "campaign=autumn"})
        assert [a["account_id"] for a in response.json()["accounts"]] == [noted]
        response = await http.get("/accounts:search", params={"account_label": "no-equals-sign"})
        assert (response.status_code, response.json()["reason"]) == (400, "INVALID_LABEL")


async def test_accounts_created_while_the_read_model_was_off_are_caught_up(tmp_path: Path) -> None:
    """A service without its read model creates an account and is killed (SIGKILL); restarted with the read
    model on, the catch-up from the metadata store finds the account the read model never received."""
    env = os.environ | {
        "LEDGER_API__PORT": "0",
        "LEDGER_API__HTTP_PORT": "-1",
        "LEDGER_API__SQL_PORT": "-1",
        "LEDGER_OBSERVABILITY__METRICS_PORT": "-1",
        "LEDGER_OBSERVABILITY__LOG_JSON": "true",
        "LEDGER_KAFKA__BOOTSTRAP_SERVERS": "",
        "LEDGER_ENGINE__DATA_DIR": str(tmp_path / "engine"),
        "LEDGER_API__METADATA_DB": str(tmp_path / "metadata.sqlite3"),
        "LEDGER_CLICKHOUSE__CHDB_PATH": str(tmp_path / "clickhouse"),
        "LEDGER_CLICKHOUSE__PROJECTOR_CHECKPOINT": str(tmp_path / "projector.json"),
    }
    token = (("authorization", f"Bearer {issue_token(AuthSettings(), 'client-a', SCOPES_ALL)}"),)
    first = Served(tmp_path, env | {"LEDGER_CLICKHOUSE__SERVE_HISTORY": "false"})
    try:
        request = pb.CreateAccountRequest(
            currency="USD", external_reference="crash-1", type=pb.ACCOUNT_TYPE_NO_OVERDRAFT, metadata={"k": QUOTED_NOTE}
        )
        created = str(first.ledger.CreateAccount(request, metadata=token, timeout=STOP_SECONDS).account_id)
    finally:
        first.stop(signal.SIGKILL)
    second = Served(tmp_path, env | {"LEDGER_CLICKHOUSE__SERVE_HISTORY": "true"})
    try:
        listed: list[str] = []
        for _ in range(ACCOUNT_POLLS_MAX):
            found = second.history.ListAccounts(
                hpb.ListHistoryAccountsRequest(account_labels={"k": QUOTED_NOTE}), metadata=token, timeout=STOP_SECONDS
            )
            listed = [a.account_id for a in found.accounts]
            if listed:
                break
            time.sleep(0.05)
        assert listed == [created]
        assert dict(found.accounts[0].labels) == {"k": QUOTED_NOTE}
        assert found.accounts[0].external_reference == "crash-1"
    finally:
        second.stop(signal.SIGTERM)


class Served:
    """One `ledger serve` process and stubs on its gRPC port."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [ledger_executable(), "serve"], env=env, cwd=directory, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        try:
            serving = LogLines(self.process.stdout).wait("serving")
        except BaseException:
            self.process.kill()
            self.process.wait(STOP_SECONDS)
            raise
        self.channel = grpc.insecure_channel(f"127.0.0.1:{serving['port']}")
        self.ledger: Any = rpc.LedgerStub(self.channel)
        self.history: Any = hrpc.HistoryStub(self.channel)

    def stop(self, sig: signal.Signals) -> None:
        self.channel.close()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        self.process.wait(STOP_SECONDS)
