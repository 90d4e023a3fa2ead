"""scripts/bench_api.py's engine note (ledger_testkit.engine_counters: transfers per engine batch, mean
journal append) read from a real service's /metrics over loopback: a benchmark row's explanation is only as
good as the series it reads, and a renamed metric would otherwise turn the note into "no batch" unnoticed."""

from __future__ import annotations

import httpx

from ledger_testkit.engine_counters import EngineCounters
from tests.api.conftest import Api, credit

POSTS = 3


async def _counters(api: Api) -> EngineCounters:
    assert api.server.ops is not None
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{api.server.ops.port}/metrics")
    assert response.status_code == 200
    return EngineCounters.parse(response.text)


async def test_the_note_counts_the_batches_and_appends_of_the_posts_between_two_scrapes(api: Api) -> None:
    alice = await api.account("alice")
    before = await _counters(api)
    # One at a time: each post is its own engine batch and journal append, durable before its answer.
    for number in range(POSTS):
        await api.post(f"note-{number}", credit(alice, 5))
    after = await _counters(api)
    assert after.batches - before.batches == POSTS
    assert after.appends - before.appends == POSTS
    assert after.transfers - before.transfers >= POSTS  # A credit is at least its own transfer.
    assert after.append_seconds > before.append_seconds
    assert after.batch_seconds - before.batch_seconds >= after.append_seconds - before.append_seconds  # Within it.
    note = after.note(before)
    assert note.startswith("engine: ") and "transfers/batch" in note and "round trip" in note and "append" in note, note
    assert after.note(after) == "engine: no batch"
