"""The read model's SQL endpoint (facade.api.sql) with the real clickhouse-connect client and raw HTTP,
against a running service over loopback: queries, parameters, a large streamed result, compression,
and every refusal (writes, multi-statements, the caller's own SETTINGS, no credentials, no audit scope)."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import httpx
import lz4.frame  # type: ignore[import-untyped]  # lz4 ships no type hints.
import pytest
from backports import zstd  # type: ignore[import-not-found,unused-ignore]  # compression.zstd from Python 3.14
from clickhouse_connect.driver._backend.httpcommon import negotiate_compression
from clickhouse_connect.driver.exceptions import DatabaseError

from facade.api.sql import checked_statement, run_limited
from facade.app import start
from facade.auth import SCOPE_AUDIT, SCOPE_READ, issue_token
from facade.dev_certs import write_dev_certs
from projections.client import ClickHouseError
from tests.api.conftest import API_KEY_SECRET, Api, make_settings, open_api, transfer

PROJECTION_POLLS_MAX = 400


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    instance = await open_api(tmp_path, history=True, sql_port=0)
    try:
        yield instance
    finally:
        await instance.channel.close()
        await instance.server.stop()


def sql_port(api: Api) -> int:
    assert api.server.sql is not None
    return api.server.sql.port


def token(api: Api, scopes: frozenset[str] = frozenset({SCOPE_AUDIT})) -> str:
    return issue_token(api.settings.auth, "analyst", scopes)


async def connect(api: Api, **options: Any) -> Any:
    """clickhouse-connect's client (synchronous: run off the loop the service runs on)."""
    options.setdefault("password", token(api))
    return await asyncio.to_thread(
        clickhouse_connect.get_client, host="127.0.0.1", port=sql_port(api), username="analyst", **options
    )


async def projected(client: Any, count: int) -> None:
    """Waits (bounded polls, no timing asserted) until the projector has written `count` entries."""
    for _ in range(PROJECTION_POLLS_MAX):
        if await asyncio.to_thread(client.command, "SELECT count() FROM entries") >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} entries projected")


async def test_query_and_parameters_with_clickhouse_connect(api: Api) -> None:
    source, destination = await api.account("alice", no_overdraft=False), await api.account("bob")
    await api.post("t-1", transfer(source, destination, 700))
    await api.post("t-2", transfer(source, destination, 50))
    client = await connect(api)
    await projected(client, 4)
    result = await asyncio.to_thread(
        client.query,
        "SELECT side, sum(amount) FROM entries WHERE account_id = {account:UInt128} GROUP BY side ORDER BY side",
        parameters={"account": int(destination)},
    )
    assert result.result_rows == [("CREDIT", 750)]
    # A string parameter with characters that need escaping travels intact.
    echoed = await asyncio.to_thread(client.query, "SELECT {text:String}", parameters={"text": "it's a\ttab\\"})
    assert echoed.result_rows == [("it's a\ttab\\",)]
    tables = await asyncio.to_thread(client.query, "SHOW TABLES")
    assert {"entries", "transactions", "balances"} <= {row[0] for row in tables.result_rows}
    # Credentials as an access token (Authorization: Bearer) work too.
    bearer = await asyncio.to_thread(
        clickhouse_connect.get_client, host="127.0.0.1", port=sql_port(api), access_token=token(api)
    )
    assert await asyncio.to_thread(bearer.command, "SELECT count() FROM entries") == 4


async def test_large_result_streams(api: Api) -> None:
    client = await connect(api)
    total = 0
    rows = 0
    with await asyncio.to_thread(client.query_row_block_stream, "SELECT number FROM numbers(300000)") as stream:
        for block in stream:
            rows += len(block)
            total += sum(row[0] for row in block)
    assert rows == 300000
    assert total == 300000 * 299999 // 2


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO entries (event_id) VALUES ('x')",
        "CREATE TABLE stolen (a UInt8) ENGINE = Memory",
        "DROP TABLE entries",
        "SELECT * FROM file('/etc/passwd')",
        "SELECT file('/etc/hostname')",
        "SELECT `FILE` ('/etc/hostname')",
        "SELECT * FROM system.one INTO OUTFILE '/tmp/sql-endpoint-test.out'",
        "SELECT * FROM python('x')",
        "SELECT * FROM (SELECT 1 SETTINGS readonly = 0)",
        "USE system",
        "SELECT 1 SETTINGS readonly=0",
        "SELECT 1; DROP TABLE entries",
        "SELECT 1; SELECT 2",
    ],
)
async def test_writes_and_multi_statements_refused(api: Api, sql: str) -> None:
    client = await connect(api)
    with pytest.raises(DatabaseError):
        await asyncio.to_thread(client.query, sql)
    assert "entries" in {row[0] for row in (await asyncio.to_thread(client.query, "SHOW TABLES")).result_rows}


async def test_unauthenticated_and_unscoped_callers_refused(api: Api) -> None:
    base = f"http://127.0.0.1:{sql_port(api)}/"
    async with httpx.AsyncClient() as http:
        missing = await http.get(base, params={"query": "SELECT 1"})
        assert missing.status_code == 401
        assert missing.headers["X-ClickHouse-Exception-Code"] == "516"
        wrong = await http.get(base, params={"query": "SELECT 1"}, auth=("analyst", "not-a-key"))
        assert wrong.status_code == 401
        reader = token(api, frozenset({SCOPE_READ}))
        unscoped = await http.get(base, params={"query": "SELECT 1"}, headers={"Authorization": f"Bearer {reader}"})
        assert unscoped.status_code == 403
        # The ledger.read API key of the test settings: authenticated, but no audit scope.
        keyed = await http.get(base, params={"query": "SELECT 1"}, auth=("x", f"reader-1.{API_KEY_SECRET}"))
        assert keyed.status_code == 403
    with pytest.raises(DatabaseError):
        await connect(api, password="")
    with pytest.raises(DatabaseError):
        await connect(api, password=token(api, frozenset({SCOPE_READ})))


async def test_raw_http_ping_formats_and_compression(api: Api) -> None:
    base = f"http://127.0.0.1:{sql_port(api)}"
    headers = {"X-ClickHouse-User": "analyst", "X-ClickHouse-Key": token(api)}
    async with httpx.AsyncClient() as http:
        ping = await http.get(f"{base}/ping")
        assert ping.status_code == 200 and ping.text == "Ok.\n"
        posted = await http.post(
            f"{base}/", content=b"SELECT number AS n FROM numbers(3) FORMAT JSONEachRow", headers=headers
        )
        assert posted.status_code == 200, posted.text
        assert [json.loads(line) for line in posted.text.splitlines()] == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert posted.headers["X-ClickHouse-Format"] == "JSONEachRow"
        for name in ("X-ClickHouse-Query-Id", "X-ClickHouse-Timezone", "X-ClickHouse-Summary"):
            assert name in posted.headers
        csv = await http.get(
            f"{base}/",
            params={"query": "SELECT 1, 'a'", "default_format": "CSV", "database": "ledger"},
            headers=headers,
        )
        assert csv.text == '1,"a"\n'
        zipped = await http.get(
            f"{base}/",
            params={"query": "SELECT number FROM numbers(1000)", "enable_http_compression": "1"},
            headers=headers | {"Accept-Encoding": "gzip"},
        )
        assert zipped.headers["Content-Encoding"] == "gzip"
        assert zipped.text.splitlines() == [str(n) for n in range(1000)]  # httpx inflates it.
        async with http.stream(
            "GET",
            f"{base}/",
            params={"query": "SELECT 42", "enable_http_compression": "1"},
            headers=headers | {"Accept-Encoding": "gzip"},
        ) as raw:
            assert gzip.decompress(b"".join([chunk async for chunk in raw.aiter_raw()])) == b"42\n"
        unknown = await http.get(f"{base}/", params={"query": "SELECT 1", "database": "other"}, headers=headers)
        assert unknown.status_code == 404


def test_statement_check() -> None:
    assert checked_statement("SELECT 1;").sql == "SELECT 1"
    assert checked_statement("select ';' FORMAT JSON").format == "JSON"
    assert checked_statement("-- note; here\nWITH 1 AS x SELECT x").format is None
    for refused in ("SELECT 1; SELECT 2", "OPTIMIZE TABLE entries", "SELECT 1 /* open", "SELECT 'open", ""):
        with pytest.raises(Exception, match=r".+"):
            checked_statement(refused)


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE stolen (a UInt8) ENGINE = Memory",
        "INSERT INTO entries (event_id) SELECT 'x'",
        "SELECT * FROM url('http://127.0.0.1:1/x')",
        "SELECT 1 SETTINGS max_threads = 1",
    ],
)
async def test_chdb_itself_refuses_writes_under_the_endpoint_settings(api: Api, sql: str) -> None:
    """The second layer alone (the statement check bypassed): readonly=1 makes ClickHouse refuse."""
    read_model = api.server.read_model
    assert read_model is not None
    with pytest.raises(ClickHouseError, match="READONLY"):
        await read_model.query(lambda client: run_limited(client, sql, "TabSeparated", {}))
    count = await read_model.query(lambda client: client.query_rows("SELECT count() AS n FROM entries"))
    assert count in ([[0]], [["0"]])  # Nothing was written (JSONCompact; 64-bit integers may be quoted).


async def test_service_starts_when_the_sql_port_is_taken(tmp_path: Path) -> None:
    """An analysts' port already in use is logged; the ledger serves without it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        instance = await open_api(tmp_path, history=True, sql_port=taken.getsockname()[1])
        try:
            assert instance.server.sql is None
            await instance.account("alice")
        finally:
            await instance.channel.close()
            await instance.server.stop()


async def test_sql_port_is_behind_tls_when_tls_is_configured(tmp_path: Path) -> None:
    """TLS on one edge means TLS on every edge: plaintext fails, clickhouse-connect over https works."""
    certificates = write_dev_certs(tmp_path / "certs")
    settings = make_settings(tmp_path, history=True, sql_port=0)
    settings.auth.tls_cert_file = certificates.server_cert_file
    settings.auth.tls_key_file = certificates.server_key_file
    running = await start(settings)
    try:
        assert running.sql is not None
        port = running.sql.port
        async with httpx.AsyncClient() as http:
            with pytest.raises(httpx.HTTPError):
                await http.get(f"http://localhost:{port}/ping")
        client = await asyncio.to_thread(
            clickhouse_connect.get_client,
            host="localhost",
            port=port,
            interface="https",
            ca_cert=str(certificates.ca_file),
            password=issue_token(settings.auth, "analyst", frozenset({SCOPE_AUDIT})),
        )
        assert await asyncio.to_thread(client.command, "SELECT 6 * 7") == 42
    finally:
        await running.stop()


@pytest.mark.parametrize("compress", ["lz4", "zstd", "gzip", True, False])
async def test_clickhouse_connect_compression(api: Api, compress: str | bool) -> None:
    """clickhouse-connect's own compression choices (compress=True negotiates: lz4 first) get correct rows;
    the endpoint answers with the encoding the client's exact Accept-Encoding header picks (the client's
    own negotiate_compression builds it), in that format."""
    client = await connect(api, compress=compress)
    result = await asyncio.to_thread(client.query, "SELECT number, toString(number) FROM numbers(200000)")
    assert len(result.result_rows) == 200_000 and result.result_rows[-1] == (199_999, "199999")

    accept, _ = negotiate_compression(compress)
    headers = {"X-ClickHouse-User": "analyst", "X-ClickHouse-Key": token(api), "Accept-Encoding": accept or "identity"}
    async with (
        httpx.AsyncClient() as http,
        http.stream(
            "GET",
            f"http://127.0.0.1:{sql_port(api)}/",
            params={"query": "SELECT number FROM numbers(100000)"},
            headers=headers,
        ) as raw,
    ):
        body = b"".join([chunk async for chunk in raw.aiter_raw()])
        encoding = raw.headers.get("Content-Encoding")
    expected = {"lz4": "lz4", "zstd": "zstd", "gzip": "gzip", True: "lz4", False: None}[compress]
    assert encoding == expected
    plain = {
        None: lambda data: data,
        "lz4": lz4.frame.decompress,
        "zstd": zstd.decompress,
        "gzip": gzip.decompress,
    }[encoding](body)
    assert plain.decode().splitlines() == [str(n) for n in range(100_000)]
    assert encoding is None or len(body) < len(plain)


async def test_compression_off_by_request(api: Api) -> None:
    headers = {"X-ClickHouse-User": "analyst", "X-ClickHouse-Key": token(api), "Accept-Encoding": "zstd"}
    params = {"query": "SELECT 1", "enable_http_compression": "0"}
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{sql_port(api)}/", params=params, headers=headers)
    assert "Content-Encoding" not in response.headers and response.content == b"1\n"
