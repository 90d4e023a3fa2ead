"""Statement reconciliation over the JSON gateway of a running service (loopback HTTP, the service's
own read model): a CSV statement for an account reconciles against what was posted over gRPC, the
run reads back as JSON and CSV; bad statements, callers without ledger.audit and unknown runs are
refused with the gateway's error body."""

from __future__ import annotations

import asyncio
import csv
import datetime
import io
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.auth import SCOPE_READ
from tests.api.conftest import Api, credit, debit, open_api

WAIT_SECONDS = 30.0


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    instance = await open_api(tmp_path, history=True, http_port=0)
    try:
        yield instance
    finally:
        await instance.channel.close()
        await instance.server.stop()


async def caught_up(api: Api, timestamp: int) -> None:
    read_model = api.server.read_model
    assert read_model is not None
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while await read_model.projected_until() < timestamp:
        assert asyncio.get_running_loop().time() < deadline, "projector did not catch up"
        await asyncio.sleep(0.05)


def headers(api: Api, scopes: frozenset[str] | None = None) -> dict[str, str]:
    pairs = api.auth(scopes=scopes) if scopes is not None else api.auth()
    return dict(pairs)


async def test_reconcile_a_csv_statement_over_http(api: Api) -> None:
    alice = await api.account("alice")
    first = await api.post(
        "s1", credit(alice, 10_000), metadata=pb.TransactionMetadata(correlation_id="INV-100", source="bank")
    )
    await api.post("s2", credit(alice, 2_550), metadata=pb.TransactionMetadata(source="bank"))
    last = await api.post("s3", debit(alice, 1_000), metadata=pb.TransactionMetadata(source="bank"))
    await caught_up(api, last.committed_at_ns)
    day = datetime.datetime.fromtimestamp(first.committed_at_ns // 1_000_000_000, tz=datetime.UTC).date()
    statement = (
        "date,amount,reference,description\n"
        f"{day},100.00,INV-100,invoice\n"
        f"{day + datetime.timedelta(days=1)},25.50,,late\n"
        f"{day},-7.00,,not in the ledger\n"
    ).encode()
    base = f"http://127.0.0.1:{api.server.http_port}/v1/statements"
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(f"{base}/{alice}/reconcile", content=statement, headers=headers(api))
        assert response.status_code == 200, response.text
        body = response.json()
        summary = body["summary"]
        assert (summary["matched"], summary["unmatched_statement"], summary["unmatched_ledger"]) == (2, 1, 1)
        assert summary["date_discrepancies"] == 1 and body["created"] is True
        kinds = sorted((r["kind"], r["rule"]) for r in body["results"])
        assert kinds == [
            ("MATCHED", "AMOUNT_DATE"),
            ("MATCHED", "REFERENCE"),
            ("UNMATCHED_LEDGER", "NONE"),
            ("UNMATCHED_STATEMENT", "NONE"),
        ]
        unmatched = next(r for r in body["results"] if r["kind"] == "UNMATCHED_LEDGER")
        assert unmatched["ledger_amount"] == "-1000"

        again = await client.post(f"{base}/{alice}/reconcile", content=statement, headers=headers(api))
        assert again.json()["created"] is False and again.json()["summary"] == summary

        run = await client.get(f"{base}/runs/{summary['run_id']}", headers=headers(api))
        assert run.status_code == 200 and run.json()["results"] == body["results"]
        exported = await client.get(f"{base}/runs/{summary['run_id']}/results.csv", headers=headers(api))
        assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        assert len(rows) == 4 and {row["currency"] for row in rows} == {"USD"}
        assert next(r for r in rows if r["kind"] == "UNMATCHED_STATEMENT")["statement_amount"] == "-7.00"

        refusals = [
            (await client.post(f"{base}/{alice}/reconcile", content=b"date,amount\n2026-01-01,1.001\n",
                               headers=headers(api)), 400, "INVALID_STATEMENT"),
            (await client.post(f"{base}/{alice}/reconcile", content=b"<!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>",
                               params={"format": "camt053"}, headers=headers(api)), 400, "INVALID_STATEMENT"),
            (await client.post(f"{base}/999999/reconcile", content=statement, headers=headers(api)),
             400, "INVALID_STATEMENT"),
            (await client.get(f"{base}/runs/nope", headers=headers(api)), 404, "RUN_NOT_FOUND"),
            (await client.get(f"{base}/runs/{summary['run_id']}", headers=headers(api, frozenset({SCOPE_READ}))),
             403, None),
            (await client.get(f"{base}/runs/{summary['run_id']}"), 401, None),
        ]  # fmt: skip
        for refused, status, reason in refusals:
            assert refused.status_code == status, refused.text
            if reason is not None:
                assert refused.json()["reason"] == reason, refused.text
