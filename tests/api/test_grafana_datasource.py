"""Grafana's ClickHouse data source against the SQL endpoint: the requests its driver (clickhouse-go v2
over HTTP: POST with the query as the body, `default_format=Native`, `database`, settings such as
`max_execution_time` as URL parameters, basic auth) sends for connecting (`SELECT timeZone()`), the
health check (`SELECT 1`, whose column must be named "1"), schema browsing, and every query of the
provisioned dashboard (infra/grafana/dashboards/read-model.json) with its macros expanded as the
plugin expands them."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from facade.auth import SCOPE_AUDIT, issue_token
from tests.api.conftest import Api, open_api, transfer

DASHBOARD = Path(__file__).resolve().parents[2] / "infra" / "grafana" / "dashboards" / "read-model.json"
INTERVAL_SECONDS = 60
DAY_SECONDS = 86_400


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    instance = await open_api(tmp_path, history=True, sql_port=0)
    try:
        yield instance
    finally:
        await instance.channel.close()
        await instance.server.stop()


def expand_macros(sql: str, start: int, end: int) -> str:
    """The plugin's macros (v4): $__timeFilter(c) and $__timeInterval(c), in their expanded SQL."""
    sql = re.sub(r"\$__timeFilter\((\w+)\)", rf"\1 >= toDateTime({start}) AND \1 <= toDateTime({end})", sql)
    return re.sub(
        r"\$__timeInterval\((\w+)\)", rf"toStartOfInterval(toDateTime(\1), INTERVAL {INTERVAL_SECONDS} second)", sql
    )


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["rawSql"] for panel in dashboard["panels"] for target in panel["targets"]]


async def test_grafana_driver_requests(api: Api) -> None:
    source, destination = await api.account("alice", no_overdraft=False), await api.account("bob")
    await api.post("g-1", transfer(source, destination, 1234))
    assert api.server.sql is not None
    base = f"http://127.0.0.1:{api.server.sql.port}/"
    password = issue_token(api.settings.auth, "grafana", frozenset({SCOPE_AUDIT}))
    settings = {"database": "ledger", "default_format": "Native", "max_execution_time": "60"}
    async with httpx.AsyncClient(auth=("grafana", password)) as http:

        async def send(sql: str, **extra: str) -> httpx.Response:
            response = await http.post(base, params=settings | {"query_id": "grafana-test"} | extra, content=sql)
            assert response.status_code == 200, f"{sql!r}: {response.text}"
            return response

        assert (await send("SELECT 1")).content == b"\x01\x01\x011\x05UInt8\x01"  # Native: 1 column, 1 row.
        zone = (await send("SELECT timeZone()")).content  # Native String: a length, then the zone's name.
        assert zone.startswith(b"\x01\x01\ntimeZone()\x06String") and zone.endswith(b"UTC")  # Go loads it.
        for browsing in (
            "SELECT name FROM system.databases",
            "SELECT name FROM system.tables WHERE database = 'ledger'",
            "DESC TABLE ledger.transactions",
        ):
            await send(browsing)
        for _ in range(400):  # Bounded wait for the projector (nothing timed).
            counted = await send("SELECT count() FROM ledger.transactions", default_format="TabSeparated")
            if counted.text.strip() == "1":
                break
        now = int(time.time())
        queries = dashboard_queries()
        assert len(queries) == 3
        for sql in queries:
            expanded = expand_macros(sql, now - DAY_SECONDS, now + DAY_SECONDS)
            assert "$__" not in expanded
            await send(expanded)  # Native, as the plugin reads it.
            rows = await send(expanded, default_format="JSONEachRow")
            assert rows.text.strip(), sql
        amounts = await send(
            expand_macros(queries[0], now - DAY_SECONDS, now + DAY_SECONDS), default_format="JSONEachRow"
        )
        assert [json.loads(line)["amount"] for line in amounts.text.splitlines()] == [1234]
    # Without the audit scope the data source is refused, as any other client.
    async with httpx.AsyncClient(auth=("grafana", issue_token(api.settings.auth, "grafana", frozenset()))) as http:
        refused = await http.post(base, params=settings, content="SELECT 1")
        assert refused.status_code in (401, 403)
