"""/docs (Swagger UI) and /redoc render in a real headless browser with no internet: Debian's chromium
(scripts/install_test_tools.sh) loads them from the loopback gateway with every other host name made
unresolvable, so an asset fetched from a CDN would leave the page blank and the operations missing.

Both pages render client-side from /openapi.json; `--virtual-time-budget` lets the page's scripts run
(fetch the document, render) before `--dump-dom` prints the DOM."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.http.test_gateway import Http, close_http, open_http

BROWSER_SECONDS_MAX = 120.0
"""A bound on one browser run (a hang fails the test instead of the suite), not a performance assertion."""
VIRTUAL_TIME_BUDGET_MS = 20_000
"""Virtual time the page's scripts get before the DOM is dumped (virtual: not wall-clock)."""
OPERATIONS_MIN = 19
"""The gateway's routes with the History queries and the audit evidence (facade.http.gateway)."""
_SWAGGER_OPERATION = re.compile(r'id="operations-(?!tag-)[^"-]+-([A-Za-z]+)"')
_REDOC_OPERATION = re.compile(r'id="operation/([A-Za-z]+)"')


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[Http]:
    instance = await open_http(tmp_path, history=True)
    try:
        yield instance
    finally:
        await close_http(instance)


async def rendered(url: str, profile: Path) -> str:
    """The page's DOM once its scripts have run, from chromium in headless mode, offline but for loopback."""
    browser = shutil.which("chromium")
    assert browser, "chromium is installed by scripts/install_test_tools.sh"
    process = await asyncio.create_subprocess_exec(
        browser,
        "--headless",
        "--no-sandbox",  # Tests may run as root, where chromium's sandbox refuses to start.
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # No internet: a CDN never resolves.
        f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
        "--dump-dom",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), BROWSER_SECONDS_MAX)
    assert process.returncode == 0 and stdout, stderr.decode(errors="replace")[-2000:]
    return stdout.decode()


def page_url(http: Http, path: str) -> str:
    return f"http://127.0.0.1:{http.api.server.http_port}{path}"


async def documented(http: Http) -> dict[str, tuple[str, str]]:
    """operationId → (METHOD, path) for every operation in the gateway's OpenAPI document."""
    document = (await http.client.get("/openapi.json")).json()
    found = {
        operation["operationId"]: (method.upper(), path)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }
    assert len(found) >= OPERATIONS_MIN, sorted(found)
    return found


async def test_swagger_ui_lists_every_operation_offline(http: Http, tmp_path: Path) -> None:
    operations = await documented(http)
    page = (await http.client.get("/docs")).text
    assert "cdn." not in page and "https://" not in page, "the page names no outside asset"
    dom = await rendered(page_url(http, "/docs"), tmp_path / "profile")
    assert set(_SWAGGER_OPERATION.findall(dom)) == set(operations), "every operation is rendered, none else"
    for operation_id, (method, path) in operations.items():
        paths = re.findall(rf'id="operations-[^"-]+-{operation_id}".*?data-path="([^"]+)"', dom, re.DOTALL)
        assert paths and paths[0] == path, (operation_id, path)
        assert f'opblock-summary-method">{method}<' in dom
    assert 'data-path="/v1/accounts/{account_id}/statement"' in dom and "GetDailyTotals" in dom


async def test_redoc_lists_every_operation_offline(http: Http, tmp_path: Path) -> None:
    operations = await documented(http)
    page = (await http.client.get("/redoc")).text
    assert "cdn." not in page and "fonts.googleapis" not in page, "the page names no outside asset"
    dom = await rendered(page_url(http, "/redoc"), tmp_path / "profile")
    assert set(_REDOC_OPERATION.findall(dom)) == set(operations)


async def test_assets_come_from_the_gateway(http: Http) -> None:
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        response = await http.client.get(f"/static-offline-docs/{asset}")
        assert response.status_code == 200 and len(response.content) > 10_000, asset
