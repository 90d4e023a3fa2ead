"""The SQL endpoint (facade.api.sql) with clickhouse-go v2 over HTTP, the client library of Grafana's
ClickHouse data source: tests/sqlclient_go (pinned in its go.mod) is built with `go build` and run against a
real service; what it reads (the data source's health check, version, time zone, tables and columns, a
typed select of entries with UInt128 / Int256 / DateTime64(9) / Map columns, a parameterised query, the
same select through the driver's own clickhouse.Open API) is compared with the engine, with every
compression the client offers (native lz4 / zstd blocks, HTTP gzip / deflate, none)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.auth import SCOPE_AUDIT, issue_token
from facade.domain.times import format_time
from tests.api.conftest import Api, open_api, transfer

GO_CLIENT = Path(__file__).resolve().parent.parent / "sqlclient_go"
BUILD_SECONDS_MAX = 600
"""The first build downloads clickhouse-go and its dependencies through the Go module proxy."""
RUN_SECONDS_MAX = 120
PROJECTION_POLLS_MAX = 400


@pytest.fixture(scope="module")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("needs the Go toolchain (`go` on PATH) to build tests/sqlclient_go; CI installs it")
    binary = tmp_path_factory.mktemp("sqlclient_go") / "sqlclient_go"
    subprocess.run(
        [go, "build", "-trimpath", "-o", str(binary), "."],
        cwd=GO_CLIENT,
        check=True,
        timeout=BUILD_SECONDS_MAX,
        env=os.environ | {"GOFLAGS": "-mod=readonly -buildvcs=false"},
    )
    return binary


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    instance = await open_api(tmp_path, history=True, sql_port=0)
    try:
        yield instance
    finally:
        await instance.channel.close()
        await instance.server.stop()


async def run_client(api: Api, binary: Path, compression: str) -> dict[str, Any]:
    assert api.server.sql is not None
    password = issue_token(api.settings.auth, "analyst", frozenset({SCOPE_AUDIT}))
    done = await asyncio.to_thread(
        subprocess.run,
        [str(binary), "-addr", f"127.0.0.1:{api.server.sql.port}", "-database", api.settings.clickhouse.database,
         "-compression", compression],
        env=os.environ | {"LEDGER_SQL_PASSWORD": password},
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS_MAX,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    return found


async def projected_entries(api: Api, binary: Path, count: int) -> dict[str, Any]:
    """The client's report once the projector has written `count` entries (bounded polls)."""
    for _ in range(PROJECTION_POLLS_MAX):
        report = await run_client(api, binary, "none")
        if len(report["entries"]) >= count:
            return report
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} entries projected")


async def test_grafana_client_library_reads_what_the_engine_holds(api: Api, go_client: Path) -> None:
    labels = {"campaign": "spring", "note": 'it\'s "quoted" \\ back'}
    alice, bob = await api.account("alice", no_overdraft=False), await api.account("bob")
    big = 2**100 + 7  # Beyond 64 bits: UInt128 must arrive exact.
    posted = [
        await api.post("go-1", transfer(alice, bob, big), metadata=pb.TransactionMetadata(labels=labels)),
        await api.post("go-2", transfer(bob, alice, 250)),
        await api.post("go-3", transfer(alice, bob, 5)),
    ]
    report = await projected_entries(api, go_client, 6)
    assert report["one"] == 1 and report["version"] and report["timezone"] in ("UTC", "Etc/UTC")
    assert {"entries", "transactions", "accounts"} <= set(report["tables"])
    assert {"name": "amount", "type": "UInt128"} in report["entry_columns"]
    assert report["result_types"]["amount"] == "UInt128" and report["result_types"]["engine_time"].startswith(
        "DateTime64"
    )
    assert report["result_types"]["labels"] == "Map(String, String)"

    entries = report["entries"]
    assert [int(e["engine_timestamp"]) for e in entries[::2]] == [int(p.committed_at_ns) for p in posted]
    first_debit, first_credit = entries[0], entries[1]
    assert (first_debit["side"], first_debit["account_id"], int(first_debit["amount"])) == ("DEBIT", alice, big)
    assert (first_credit["side"], int(first_credit["signed_amount"])) == ("CREDIT", big)
    assert int(first_debit["signed_amount"]) == -big
    assert first_debit["labels"] == labels and entries[2]["labels"] == {}
    # DateTime64(9) to the nanosecond, as the engine stamped it.
    assert [e["engine_time"] for e in entries[::2]] == [format_time(int(p.committed_at_ns)) for p in posted]

    # The parameterised sum per account equals the engine's balance.
    account = report["account_id"]
    balance = await api.stub.GetBalance(pb.GetBalanceRequest(account_id=account), metadata=api.auth())
    assert int(report["account_signed_sum"]) == int(balance.credits_posted) - int(balance.debits_posted)
    assert report["account_entries"] == sum(1 for e in entries if e["account_id"] == account)
    assert report["positional_entries"] == sum(1 for e in entries if int(e["amount"]) >= 200)

    assert "164" in report["write_refused"] and "readonly" in report["write_refused"], report["write_refused"]
    # The driver's own API (clickhouse.Open, Conn.Select into tagged structs) reads the same rows.
    assert report["native_api_entries"] == entries

    for compression in ("lz4", "zstd", "gzip", "deflate"):
        compressed = await run_client(api, go_client, compression)
        assert compressed == report, compression
