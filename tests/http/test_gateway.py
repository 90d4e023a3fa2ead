"""The JSON gateway over loopback: a real uvicorn server in the service's loop (api.http_port=0), the real
embedded engine in tmp_path, httpx as the client, and the gRPC API of the same server for comparison. Here:
what only HTTP has (OpenAPI, 429 + Retry-After, WWW-Authenticate, JSON forms, metrics per route); the
behaviour both edges share is tests/behaviour/, run through a gRPC and an HTTP client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import json_format

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.auth import SCOPE_READ, SCOPES_ALL, issue_token
from tests.api.conftest import API_KEY_SECRET, Api, open_api

JsonObject = dict[str, Any]


@dataclass
class Http:
    api: Api
    client: httpx.AsyncClient

    def auth(self, client_id: str = "client-a", scopes: frozenset[str] = SCOPES_ALL) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(self.api.settings.auth, client_id, scopes)}"}

    async def call(
        self,
        method: str,
        path: str,
        body: object = None,
        expect: int = 200,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> JsonObject:
        response = await self.client.request(
            method, path, json=body, params=params, headers=self.auth() if headers is None else headers
        )
        assert response.status_code == expect, response.text
        payload: JsonObject = response.json()
        return payload

    async def error(
        self, method: str, path: str, body: object, status: int, code: str, reason: str, **kwargs: Any
    ) -> JsonObject:
        payload = await self.call(method, path, body, expect=status, **kwargs)
        assert (payload["code"], payload["reason"]) == (code, reason), payload
        assert set(payload) == {"code", "reason", "message", "metadata"}
        return payload

    async def account(self, reference: str, currency: str = "USD", no_overdraft: bool = True) -> str:
        kind = "ACCOUNT_TYPE_NO_OVERDRAFT" if no_overdraft else "ACCOUNT_TYPE_OVERDRAFT_ALLOWED"
        account = await self.call(
            "POST",
            "/v1/accounts",
            {"currency": currency, "external_reference": reference, "owner": reference, "type": kind},
            expect=201,
        )
        return str(account["account_id"])

    async def post(self, key: str, *legs: JsonObject, expect: int = 201, **fields: Any) -> JsonObject:
        return await self.call(
            "POST", "/v1/transactions", {"idempotency_key": key, "legs": list(legs), **fields}, expect
        )

    async def available(self, account_id: str) -> int:
        return int((await self.call("GET", f"/v1/accounts/{account_id}/balance"))["available"])


def credit(account_id: str, amount: int | str, currency: str = "USD") -> JsonObject:
    return {"type": "LEG_TYPE_CREDIT", "account_id": account_id, "amount": str(amount), "currency": currency}


def debit(account_id: str, amount: int | str, currency: str = "USD") -> JsonObject:
    return {"type": "LEG_TYPE_DEBIT", "account_id": account_id, "amount": str(amount), "currency": currency}


def transfer(source: str, destination: str, amount: int | str, currency: str = "USD") -> JsonObject:
    return {
        "type": "LEG_TYPE_TRANSFER",
        "from_account_id": source,
        "to_account_id": destination,
        "amount": str(amount),
        "currency": currency,
    }


async def open_http(directory: Path, **api: Any) -> Http:
    instance = await open_api(directory, http_port=0, **api)
    assert instance.server.http_port > 0
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{instance.server.http_port}", timeout=30)
    return Http(instance, client)


async def close_http(http: Http) -> None:
    await http.client.aclose()
    await http.api.channel.close()
    await http.api.server.stop()


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[Http]:
    instance = await open_http(tmp_path)
    try:
        yield instance
    finally:
        await close_http(instance)


async def test_get_transaction_and_paginated_entries(http: Http) -> None:
    alice = await http.account("alice")
    posted = [await http.post(f"e{i}", credit(alice, i + 1)) for i in range(5)]
    by_id = await http.call("GET", f"/v1/transactions/{posted[2]['transaction_id']}")
    by_key = await http.call("GET", "/v1/transactions?idempotency_key=e2")
    assert by_id == by_key and by_id["legs"][0]["amount"] == "3" and not by_id["deduplicated"]
    await http.error("GET", "/v1/transactions?idempotency_key=nope", None, 404, "NOT_FOUND", "TRANSACTION_NOT_FOUND")
    await http.error("GET", "/v1/transactions/xyz", None, 400, "INVALID_ARGUMENT", "INVALID_ID")
    pages: list[list[str]] = []
    token = ""
    while True:
        page = await http.client.get(
            f"/v1/accounts/{alice}/entries",
            params={"page_size": 2, "page_token": token, "order": "desc"},
            headers=http.auth(),
        )
        assert page.status_code == 200, page.text
        data = page.json()
        pages.append([e["amount"] for e in data["entries"]])
        token = data["next_page_token"]
        if not token:
            break
    assert pages == [["5", "4"], ["3", "2"], ["1"]]
    window = await http.client.get(
        f"/v1/accounts/{alice}/entries",
        params={"from_ns": posted[1]["committed_at_ns"], "to_ns": posted[3]["committed_at_ns"]},
        headers=http.auth(),
    )
    entries = window.json()["entries"]
    assert [e["amount"] for e in entries] == ["2", "3", "4"]
    assert all(not e["is_debit"] and e["status"] == "TRANSACTION_STATUS_POSTED" for e in entries)
    assert [e["transaction_id"] for e in entries] == [p["transaction_id"] for p in posted[1:4]]


async def test_authentication_and_scopes(http: Http) -> None:
    alice = await http.account("alice")
    path = f"/v1/accounts/{alice}/balance"
    response = await http.client.get(path)
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["code"] == "UNAUTHENTICATED" and response.json()["reason"] == "MISSING_CREDENTIALS"
    await http.error("GET", path, None, 401, "UNAUTHENTICATED", "INVALID_TOKEN", headers={"Authorization": "Bearer x"})
    read_only = http.auth(scopes=frozenset({SCOPE_READ}))
    assert (await http.call("GET", path, headers=read_only))["available"] == "0"
    await http.error(
        "POST",
        "/v1/transactions",
        {"idempotency_key": "x", "legs": [credit(alice, 1)]},
        403,
        "PERMISSION_DENIED",
        "MISSING_SCOPE",
        headers=read_only,
    )
    await http.error(
        "POST",
        "/v1/accounts",
        {"currency": "USD", "external_reference": "r", "type": "ACCOUNT_TYPE_NO_OVERDRAFT"},
        403,
        "PERMISSION_DENIED",
        "MISSING_SCOPE",
        headers=http.auth(scopes=frozenset({"ledger.write"})),
    )
    api_key = {"Authorization": f"ApiKey reader-1.{API_KEY_SECRET}"}
    assert (await http.call("GET", path, headers=api_key))["currency"] == "USD"
    await http.error(
        "GET", path, None, 401, "UNAUTHENTICATED", "INVALID_API_KEY", headers={"Authorization": "ApiKey reader-1.no"}
    )
    # Credentials are checked before the body: an unauthenticated caller learns nothing about the schema.
    await http.error(
        "POST", "/v1/transactions", {"bogus": 1}, 401, "UNAUTHENTICATED", "MISSING_CREDENTIALS", headers={}
    )
    other_client = http.auth("client-b", frozenset({SCOPE_READ}))
    await http.error("GET", path, None, 404, "NOT_FOUND", "ACCOUNT_NOT_FOUND", headers=other_client)


async def test_a_transaction_posted_over_http_is_the_same_over_grpc(http: Http) -> None:
    alice = await http.account("alice")
    bob = await http.api.account("bob")  # Created over gRPC: one set of accounts.
    posted = await http.post(
        "x-1",
        credit(alice, 500),
        transfer(alice, bob, 200),
        metadata={"source": "web", "labels": {"k": "v"}, "occurred_at_ns": "1700000000000000000"},
    )
    over_grpc = await http.api.stub.GetTransaction(
        pb.GetTransactionRequest(transaction_id=posted["transaction_id"]), metadata=http.api.auth()
    )
    assert over_grpc.idempotency_key == "x-1" and over_grpc.committed_at_ns == int(posted["committed_at_ns"])
    as_json = json_format.MessageToDict(
        over_grpc, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    assert as_json == posted, "the gateway's JSON is the proto3 JSON of the gRPC message"
    # And the other way: posted over gRPC, read over HTTP, and a gRPC retry deduplicates an HTTP post.
    replay = await http.api.post("x-1", *over_grpc.legs, metadata=over_grpc.metadata)
    assert replay.deduplicated and replay.transaction_id == posted["transaction_id"]
    grpc_posted = await http.api.post("g-1", pb.Leg(type=pb.LEG_TYPE_DEBIT, account_id=bob, amount="5", currency="USD"))
    assert (await http.call("GET", "/v1/transactions?idempotency_key=g-1"))["transaction_id"] == (
        grpc_posted.transaction_id
    )
    assert await http.available(bob) == await http.api.available(bob) == 195


async def test_openapi_lists_every_operation_with_string_amounts(http: Http) -> None:
    response = await http.client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    operations = {
        op["operationId"]: (method.upper(), path)
        for path, ops in document["paths"].items()
        for method, op in ops.items()
    }
    assert operations == {
        "CreateAccount": ("POST", "/v1/accounts"),
        "ListAccounts": ("GET", "/v1/accounts"),
        "GetAccount": ("GET", "/v1/accounts/{account_id}"),
        "GetBalance": ("GET", "/v1/accounts/{account_id}/balance"),
        "ListAccountEntries": ("GET", "/v1/accounts/{account_id}/entries"),
        "PostTransaction": ("POST", "/v1/transactions"),
        "PostTransactions": ("POST", "/v1/transactions:batch"),
        "GetTransactionByIdempotencyKey": ("GET", "/v1/transactions"),
        "GetTransaction": ("GET", "/v1/transactions/{transaction_id}"),
        "CaptureTransaction": ("POST", "/v1/transactions/{authorization_id}:capture"),
        "VoidTransaction": ("POST", "/v1/transactions/{authorization_id}:void"),
    }
    post = document["paths"]["/v1/transactions"]["post"]
    # The scope the operation needs, in its security requirement (Security(..., scopes=[...])).
    assert post["x-required-scope"] == "ledger.write" and post["security"] == [{"LedgerCredentials": ["ledger.write"]}]
    assert post["x-grpc-method"] == "/ledger.v1.Ledger/PostTransaction"
    assert set(post["responses"]) >= {"200", "201", "400", "401", "403", "409", "422", "429"}
    for path, methods in document["paths"].items():
        for operation in methods.values():
            rpc = operation["x-grpc-method"]
            assert rpc.endswith("/" + operation["operationId"].removesuffix("ByIdempotencyKey")), path
            assert operation["security"] == [{"LedgerCredentials": [operation["x-required-scope"]]}], path
    schemas = document["components"]["schemas"]

    def field(model: str, name: str) -> JsonObject:
        candidates = [schemas[k] for k in (model, f"{model}-Input", f"{model}-Output") if k in schemas]
        assert candidates, f"{model} not in {sorted(schemas)}"
        found: JsonObject = candidates[0]["properties"][name]
        return found

    for model, name in [
        ("Leg", "amount"),
        ("Balance", "available"),
        ("Balance", "credits_posted"),
        ("Account", "account_id"),
        ("Entry", "transfer_id"),
        ("Transaction", "committed_at_ns"),
        ("CaptureTransactionRequest", "amount"),
    ]:
        assert field(model, name)["type"] == "string", (model, name)
    assert field("Leg", "amount")["pattern"] == "^[1-9][0-9]{0,38}$"
    assert field("Leg", "amount")["description"].startswith("Minor units")
    assert field("Leg", "type")["enum"] == ["LEG_TYPE_CREDIT", "LEG_TYPE_DEBIT", "LEG_TYPE_TRANSFER"]
    assert (await http.client.get("/docs")).status_code == 200


async def test_amounts_are_decimal_strings_and_requests_are_checked(http: Http) -> None:
    alice = await http.account("alice")

    async def rejected(body: object, reason: str, field: str | None = None, status: int = 400) -> None:
        code = "INVALID_ARGUMENT"
        error = await http.error("POST", "/v1/transactions", body, status, code, reason)
        if field is not None:
            assert error["metadata"]["field"] == field, error

    for amount in (1.5, 10, 1e3):
        leg = {**credit(alice, 1), "amount": amount}
        await rejected({"idempotency_key": "f", "legs": [leg]}, "INVALID_AMOUNT", "legs[0].amount")
    # Strings that are not canonical minor units: the mapping module's checks, as over gRPC.
    for text in ("1.50", "-1", "01", "0", str(2**128 - 1), str(2**128), "1e3"):
        await rejected({"idempotency_key": "s", "legs": [credit(alice, text)]}, "INVALID_AMOUNT", "legs[0].amount")
    await rejected({"idempotency_key": "u", "legs": [credit(alice, 1)], "authorise_only": True}, "INVALID_REQUEST")
    await rejected({"idempotency_key": "t", "legs": [{**credit(alice, 1), "type": "CREDIT"}]}, "INVALID_REQUEST")
    await rejected({"idempotency_key": "", "legs": [credit(alice, 1)]}, "MISSING_FIELD")
    await rejected({"idempotency_key": "c", "legs": [credit(alice, 1, "XXX")]}, "UNKNOWN_CURRENCY")
    await rejected({"idempotency_key": "i", "legs": [credit("0123", 1)]}, "INVALID_ID", "legs[0].account_id")
    malformed = await http.client.post(
        "/v1/transactions", content=b"{not json", headers={**http.auth(), "Content-Type": "application/json"}
    )
    assert malformed.status_code == 400 and malformed.json()["reason"] == "MALFORMED_JSON"
    await http.error(
        "GET", f"/v1/accounts/{alice}/entries?page_size=-1", None, 400, "INVALID_ARGUMENT", "INVALID_REQUEST"
    )
    await http.error("GET", "/v1/nowhere", None, 404, "NOT_FOUND", "ROUTE_NOT_FOUND")
    assert await http.available(alice) == 0, "nothing rejected was written"


async def test_backpressure_is_429_with_retry_after(tmp_path: Path) -> None:
    http = await open_http(tmp_path, write_queue_transfers_max=1, batch_transfers_max=1)
    try:
        alice = await http.account("alice")
        responses = await asyncio.gather(
            *(
                http.client.post(
                    "/v1/transactions",
                    json={"idempotency_key": f"q{i}", "legs": [credit(alice, 1)]},
                    headers=http.auth(),
                )
                for i in range(60)
            )
        )
        rejected = [r for r in responses if r.status_code == 429]
        assert rejected, "a one-transfer queue must overflow under 60 concurrent writes"
        for response in rejected:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["reason"] == "WRITE_QUEUE_FULL" and response.json()["metadata"]["retry_after_ms"]
        assert all(r.status_code in (201, 429) for r in responses)
        assert await http.available(alice) == len(responses) - len(rejected)
    finally:
        await close_http(http)


async def test_requests_are_measured_per_operation_and_status(http: Http) -> None:
    from prometheus_client import REGISTRY

    def count(operation: str, status: str) -> float:
        labels = {"edge": "http", "method": operation, "code": status}
        return REGISTRY.get_sample_value("ledger_request_duration_seconds_count", labels) or 0.0

    alice = await http.account("alice")
    posted, refused = count("PostTransaction", "201"), count("PostTransaction", "422")
    await http.post("m1", credit(alice, 10))
    await http.post("m2", debit(alice, 1_000), expect=422)
    assert (count("PostTransaction", "201") - posted, count("PostTransaction", "422") - refused) == (1, 1)
