"""Projection from the real engine's change feed into chDB: contents, restart catch-up, redelivery."""

from __future__ import annotations

import time
import types
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from facade.changes.entries import build_entries
from facade.changes.into_read_model import (
    PROJECTION_POLL_INTERVAL_SECONDS,
    PROJECTION_QUIET_WAIT_SECONDS,
    change_capture,
)
from facade.changes.replay import replay
from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import ChangeEventsFilter
from ledger_events.chain import GENESIS
from ledger_events.gen.ledger.v1 import entries_pb2
from projections.client import ChdbClient
from projections.projector import Projector
from tests.projections.conftest import Metadata, Workload, drain


def counts(client: ChdbClient) -> tuple[int, int, int]:
    found = client.query_rows(
        "SELECT (SELECT count() FROM entries), (SELECT count() FROM transactions), (SELECT count() FROM balances)"
    )
    return int(str(found[0][0])), int(str(found[0][1])), int(str(found[0][2]))


async def test_projects_every_change_with_metadata(
    tmp_path: Path, engine: EmbeddedEngine, client: ChdbClient, metadata: Metadata, workload: Workload
) -> None:
    for number in range(3):
        await workload.round(number)
    capture = change_capture(engine, Projector(client), tmp_path / "cp.json", metadata)
    changes = await drain(capture)
    assert changes == 3 * 8
    assert counts(client) == (2 * changes, changes, 2 * changes)
    found = client.query_rows(
        "SELECT transaction_type, description, labels, count() FROM transactions WHERE has_metadata "
        "GROUP BY transaction_type, description, labels ORDER BY transaction_type LIMIT 1"
    )
    assert found[0][1] == "tab\there, quote ' and \\ backslash,\nnewline, ünïcode"
    labels = found[0][2]
    assert isinstance(labels, dict)
    assert labels["we'ird\tkey"] == "va\\lue"
    sequences = client.query_rows(
        "SELECT min(chain_sequence), max(chain_sequence), uniqExact(chain_sequence) FROM transactions"
    )
    assert sequences == [[1, changes, changes]]


async def test_catches_up_after_restart(
    tmp_path: Path, engine: EmbeddedEngine, client: ChdbClient, metadata: Metadata, workload: Workload
) -> None:
    """Projector and chDB stop; the engine moves on; a new projector on the reopened directory
    resumes from what ClickHouse holds and catches up, chain continuous, nothing doubled."""
    checkpoint = tmp_path / "cp.json"
    await workload.round(0)
    assert await drain(change_capture(engine, Projector(client), checkpoint, metadata)) == 8
    client.close()
    await workload.round(1)
    await workload.round(2)
    checkpoint.unlink()  # The read model, not the file, decides where to resume.
    reopened = ChdbClient(tmp_path / "clickhouse", "ledger")
    try:
        projector = Projector(reopened)
        assert projector.last_engine_timestamp > 0
        assert await drain(change_capture(engine, projector, checkpoint, metadata)) == 16
        assert counts(reopened) == (48, 24, 48)
        assert projector.stats.rows_duplicate == 0
        sequences = reopened.query_rows(
            "SELECT groupArray(chain_sequence) FROM (SELECT chain_sequence FROM transactions ORDER BY engine_timestamp)"
        )
        assert sequences == [[list(range(1, 25))]]
    finally:
        reopened.close()


async def test_redelivery_never_double_counts(
    tmp_path: Path, engine: EmbeddedEngine, client: ChdbClient, metadata: Metadata, workload: Workload
) -> None:
    """A full replay (every event again), a stale checkpoint (a batch re-emitted) and a batch
    delivered twice: the tables, and every sum over them, are unchanged."""
    for number in range(4):
        await workload.round(number)
    projector = Projector(client)
    await drain(change_capture(engine, projector, tmp_path / "cp.json", metadata))
    before = counts(client)
    sums = client.query_rows("SELECT sum(toUInt256(amount)) FROM entries")
    assert await replay(engine, projector, metadata=metadata, progress=False) == 32
    assert counts(client) == before
    assert projector.stats.rows_duplicate == before[0] + before[1]  # Written rows (balances is a view over entries).
    # Mid-stream: replay from the middle of the feed, in the projector's own batches.
    events = await engine.get_change_events(ChangeEventsFilter())
    middle = events[len(events) // 2].timestamp
    assert await replay(engine, projector, timestamp_from=middle, metadata=metadata, progress=False) == 16
    assert counts(client) == before
    assert client.query_rows("SELECT sum(toUInt256(amount)) FROM entries") == sums


async def test_records_lag_and_rejects_what_it_cannot_project(
    engine: EmbeddedEngine, client: ChdbClient, workload: Workload
) -> None:
    await workload.round(0)
    events = await engine.get_change_events(ChangeEventsFilter())
    debit, credit, _ = build_entries(events[0], None, GENESIS)
    projector = Projector(client)
    rejections = (
        ("schema_version", 2, "schema_version"),
        ("event_id", "1:D", "event id"),
        ("account_id", "1\t2", "invalid literal"),
        ("amount", str(1 << 128), "out of range"),
    )
    for field, value, message in rejections:
        bad = entries_pb2.LedgerEntry()
        bad.CopyFrom(debit)
        setattr(bad, field, value)
        with pytest.raises(ValueError, match=message):  # EntryError is a ValueError, as is int("1\t2").
            projector.project([credit, bad])
    assert counts(client) == (0, 0, 0)
    assert projector.project([debit, credit]) == 2 + 1  # Entries and the transaction: balances is a view.
    assert counts(client) == (2, 1, 2)
    lag = REGISTRY.get_sample_value("ledger_projection_lag_seconds")
    assert lag is not None and 0 < lag < 60
    assert projector.lag_seconds > 0


async def test_a_quiet_feed_waits_longer_and_a_full_batch_not_at_all(
    tmp_path: Path,
    engine: EmbeddedEngine,
    client: ChdbClient,
    metadata: Metadata,
    workload: Workload,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The read model's pacing: a batch below PROJECTION_QUIET_BATCH_CHANGES (a quiet feed) waits the
    longer interval before the next read (fewer, larger batches: the process pays per batch), a full batch
    reads again at once. The clock stands still, so the wait is the configured one exactly."""
    # The poller's clock only (the event loop's stays real).
    still = types.SimpleNamespace(monotonic=lambda: 100.0, time_ns=time.time_ns)
    monkeypatch.setattr("facade.changes.poller.time", still)
    await workload.round(0)  # 8 changes
    quiet = change_capture(engine, Projector(client), tmp_path / "cp.json", metadata)
    assert await quiet._poll() == PROJECTION_QUIET_WAIT_SECONDS
    assert PROJECTION_QUIET_WAIT_SECONDS > PROJECTION_POLL_INTERVAL_SECONDS
    await workload.round(1)
    full = change_capture(engine, Projector(client), tmp_path / "cp.json", metadata, batch_changes_max=8)
    assert await full._poll() == 0.0  # 8 of 8: catching up.
    assert await full._poll() == PROJECTION_QUIET_WAIT_SECONDS  # Nothing new: quiet.
    assert counts(client) == (32, 16, 32)
