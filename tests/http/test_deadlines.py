"""The caller's deadline on reads too: X-Request-Timeout-Ms bounds a GET as gRPC's deadline bounds a call
(facade.http.admission hands it to the operation, facade.operations cuts the read off at it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from facade.domain.errors import ErrorKind, LedgerError
from facade.operations._deadline import within
from tests.http.test_gateway import Http, close_http, open_http


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[Http]:
    instance = await open_http(tmp_path)
    try:
        yield instance
    finally:
        await close_http(instance)


async def test_a_read_takes_the_callers_deadline(http: Http) -> None:
    alice = await http.account("alice")
    path = f"/v1/accounts/{alice}/balance"
    answered = await http.call("GET", path, headers={**http.auth(), "X-Request-Timeout-Ms": "30000"})
    assert answered["available"] == "0"
    for bad in ("soon", "0", "-1", "3600001"):
        refused = await http.error(
            "GET", path, None, 400, "INVALID_ARGUMENT", "INVALID_TIMEOUT",
            headers={**http.auth(), "X-Request-Timeout-Ms": bad},
        )  # fmt: skip
        assert refused["metadata"] == {"field": "X-Request-Timeout-Ms"}


async def test_work_past_its_deadline_is_cut_off() -> None:
    assert await within(None, asyncio.sleep(0, result="done")) == "done"
    assert await within(time.monotonic() + 30, asyncio.sleep(0, result="done")) == "done"
    with pytest.raises(LedgerError) as late:
        await within(time.monotonic() + 0.01, asyncio.sleep(30))
    assert (late.value.kind, late.value.reason) == (ErrorKind.DEADLINE, "DEADLINE_EXCEEDED")
