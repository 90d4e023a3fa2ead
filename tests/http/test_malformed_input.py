"""Malformed input over the JSON gateway on loopback: every case a 400 with a machine-readable reason,
nothing posted, never a 500; and an unexpected failure (the metadata store closed under the service)
answers 500 INTERNAL with an error id, no database text, and is counted in the request metrics."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.http.test_gateway import Http, close_http, credit, open_http

U64_MAX = 2**64 - 1
LEAK_MARKERS = ("Traceback", "sqlite", "no such table", "Error(", "Exception", 'File "', "ClickHouse", "DB::")


def break_metadata_store(path: Path) -> None:
    """A real fault under a running service: the accounts table vanishes (another process renames it),
    so the service's next account read fails inside SQLite with "no such table"."""
    with sqlite3.connect(path) as side:
        side.execute("ALTER TABLE accounts RENAME TO accounts_gone")


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[Http]:
    instance = await open_http(tmp_path)
    try:
        yield instance
    finally:
        await close_http(instance)


def _body(key: str, account_id: str = "", **metadata: object) -> dict[str, Any]:
    leg = {"type": "LEG_TYPE_CREDIT", "account_id": account_id, "amount": "100", "currency": "USD"}
    return {"idempotency_key": key, "legs": [leg], "metadata": metadata}


def _samples(edge: str, operation: str, code: str) -> float:
    found = REGISTRY.get_sample_value(
        "ledger_request_duration_seconds_count", {"edge": edge, "method": operation, "code": code}
    )
    return found or 0.0


async def _raw(http: Http, content: bytes, path: str = "/v1/transactions") -> tuple[int, dict[str, Any]]:
    headers = {**http.auth(), "Content-Type": "application/json"}
    response = await http.client.post(path, content=content, headers=headers)
    payload = response.json()
    assert set(payload) == {"code", "reason", "message", "metadata"}, payload
    assert not any(marker in response.text for marker in LEAK_MARKERS), response.text
    return response.status_code, payload


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        pytest.param(b'{"idempotency_key": "k", "legs": [', "MALFORMED_JSON", id="truncated"),
        pytest.param(b"", "INVALID_REQUEST", id="empty"),
        pytest.param(b'{"idempotency_key": "\xff\xfe", "legs": []}', "MALFORMED_JSON", id="invalid-utf8"),
        pytest.param(b'{"idempotency_key": "\\ud800", "legs": []}', "INVALID_UNICODE", id="lone-surrogate"),
        pytest.param(b'{"legs": [], "x": {"\\udfff": 1}}', "INVALID_UNICODE", id="surrogate-key"),
        pytest.param(b'{"idempotency_key": NaN, "legs": []}', "MALFORMED_JSON", id="nan"),
        pytest.param(b"[" * 5000 + b"]" * 5000, "MALFORMED_JSON", id="deep"),
        pytest.param(b'{"idempotency_key": 1' + b"0" * 5000 + b"}", "MALFORMED_JSON", id="huge-integer"),
        pytest.param(b'"just a string"', "INVALID_REQUEST", id="not-an-object"),
        pytest.param(b'{"idempotency_key": 7, "legs": []}', "INVALID_REQUEST", id="wrong-type"),
    ],
)
async def test_malformed_bodies_are_400_with_a_reason(http: Http, content: bytes, reason: str) -> None:
    status, payload = await _raw(http, content)
    assert (status, payload["code"], payload["reason"]) == (400, "INVALID_ARGUMENT", reason), payload


async def test_duplicate_keys_are_refused_and_move_nothing(http: Http) -> None:
    alice = await http.account("alice")
    leg = f'{{"type": "LEG_TYPE_CREDIT", "account_id": "{alice}", "amount": "1", "amount": "999", "currency": "USD"}}'
    duplicated = '{"idempotency_key": "dup", "legs": [' + leg + "]}"
    status, payload = await _raw(http, duplicated.encode())
    assert (status, payload["reason"], payload["metadata"]) == (400, "DUPLICATE_KEY", {"field": "amount"})
    assert await http.available(alice) == 0
    # The same body without the duplicate posts (the refusal was the duplicate, not the rest).
    await http.post("dup", credit(alice, 1))
    assert await http.available(alice) == 1


async def test_u64_and_u32_fields_refuse_out_of_range_values(http: Http) -> None:
    alice = await http.account("alice")
    body = _body("t-max", alice, occurred_at_ns=str(U64_MAX))
    posted = await http.call("POST", "/v1/transactions", body, expect=201)
    assert posted["metadata"]["occurred_at_ns"] == str(U64_MAX), "2^64-1 is a u64"
    over = _body("t-over", alice, occurred_at_ns=str(U64_MAX + 1))
    status, payload = await _raw(http, json.dumps(over).encode())
    assert (status, payload["reason"], payload["metadata"]["field"]) == (
        400,
        "INVALID_REQUEST",
        "metadata.occurred_at_ns",
    )
    for query in (f"from_ns={U64_MAX + 1}", "page_size=-1", f"page_size={2**32}", "to_ns=-5"):
        response = await http.client.get(f"/v1/accounts/{alice}/entries?{query}", headers=http.auth())
        assert response.status_code == 400, (query, response.text)
        assert response.json()["code"] == "INVALID_ARGUMENT"
    too_long = {**_body("t-timeout", alice), "authorization_timeout_seconds": 2**32}
    status, payload = await _raw(http, json.dumps(too_long).encode())
    assert (status, payload["metadata"]["field"]) == (400, "authorization_timeout_seconds")
    assert await http.available(alice) == 100


async def test_unexpected_failure_is_500_internal_with_error_id_and_counted(http: Http) -> None:
    alice = await http.account("alice")
    before = _samples("http", "GetAccount", "500")
    break_metadata_store(http.api.settings.api.metadata_db)
    response = await http.client.get(f"/v1/accounts/{alice}", headers=http.auth())
    assert response.status_code == 500, response.text
    payload = response.json()
    assert (payload["code"], payload["reason"]) == ("INTERNAL", "INTERNAL")
    error_id = payload["metadata"]["error_id"]
    assert len(error_id) == 16 and error_id in payload["message"]
    assert not any(marker.lower() in response.text.lower() for marker in LEAK_MARKERS), response.text
    assert _samples("http", "GetAccount", "500") == before + 1


async def test_u128_fields_refuse_values_from_2_to_the_128(http: Http) -> None:
    alice = await http.account("alice")
    for amount in (str(2**128), str(2**128 - 1), "-1", "0"):
        payload = await http.error(
            "POST",
            "/v1/transactions",
            _body(f"a{amount}", alice)
            | {"legs": [{"type": "LEG_TYPE_CREDIT", "account_id": alice, "amount": amount, "currency": "USD"}]},
            400,
            "INVALID_ARGUMENT",
            "INVALID_AMOUNT",
        )
        assert payload["metadata"]["field"] == "legs[0].amount"
    for account_id in (str(2**128), "-1"):
        leg = {"type": "LEG_TYPE_CREDIT", "account_id": account_id, "amount": "1", "currency": "USD"}
        await http.error(
            "POST", "/v1/transactions", {"idempotency_key": f"i{account_id}", "legs": [leg]}, 400,
            "INVALID_ARGUMENT", "INVALID_ID",
        )  # fmt: skip
        response = await http.client.get(f"/v1/accounts/{account_id}", headers=http.auth())
        assert response.status_code == 400 and response.json()["reason"] == "INVALID_ID", response.text
    assert await http.available(alice) == 0
