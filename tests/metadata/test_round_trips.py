"""One round trip per batch on the shared store, counted on the wire: libpq's protocol trace of the
pooled connection shows one Sync (one request-response exchange) per `prepare` of 100 or 8189
transactions and per `record_failures`, in steady state (psycopg prepares a statement server-side once,
on its sixth use: that one call takes two exchanges, and it happens before the counting starts)."""

from __future__ import annotations

from pathlib import Path

from psycopg import pq

from facade.engine.types import BATCH_EVENTS_MAX
from facade.metadata import PostgresMetadataStore
from tests.metadata.test_store import refusal, transaction

WARM_UP_CALLS = 6


def exchanges(trace: str) -> int:
    """Client Sync messages: each ends one request the client then waits on."""
    return sum(1 for line in trace.splitlines() if line.split("\t")[:1] == ["F"] and line.split("\t")[2:3] == ["Sync"])


async def test_one_round_trip_per_prepare_and_per_failure_record(tmp_path: Path, postgres_dsn: str) -> None:
    store = await PostgresMetadataStore.open(postgres_dsn, pool_size=1)  # One connection: the one traced.
    try:
        for index in range(WARM_UP_CALLS):
            await store.prepare([transaction(f"warm-{index}")])
            await store.record_failures([(transaction(f"warm-{index}").transaction_id, refusal())])
        path = tmp_path / "libpq.trace"
        with path.open("w") as trace:
            async with store._pool.connection() as connection:
                connection.pgconn.trace(trace.fileno())
                connection.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
            small = [transaction(f"small-{i}") for i in range(100)]
            large = [transaction(f"large-{i}") for i in range(BATCH_EVENTS_MAX)]
            assert await store.prepare(small) == {}
            assert await store.prepare(large) == {}
            assert len(await store.prepare(large)) == BATCH_EVENTS_MAX  # All priors: still one exchange.
            await store.record_failures([(t.transaction_id, refusal()) for t in small])
            async with store._pool.connection() as connection:
                connection.pgconn.untrace()
        assert exchanges(path.read_text(errors="replace")) == 4
        assert (await store.prepare(small[:1]))[small[0].transaction_id].failure == refusal()
    finally:
        await store.close()
