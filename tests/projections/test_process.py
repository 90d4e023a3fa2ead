"""The read model in its own process (clickhouse.projector_process): the child builds the same rows,
chained the same way, as the in-process projector; a killed child is restarted and catches up."""

from __future__ import annotations

import functools
import os
import signal
from pathlib import Path

import pytest

from facade.changes.into_read_model import change_capture
from facade.changes.poller import ChangeCapture
from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import ChangeEventsFilter
from facade.settings import ClickHouseSettings
from projections.client import ChdbClient, ClickHouseClient, ClickHouseError
from projections.projector import Projector
from projections.queries import projected_timestamp
from projections.read_model import ReadModel
from tests.projections.conftest import Metadata, Workload, drain

ROWS = (
    "SELECT * FROM entries ORDER BY account_id, engine_timestamp",
    "SELECT * FROM balances ORDER BY account_id, engine_timestamp",
    "SELECT * FROM transactions ORDER BY engine_timestamp",
)
"""Every column of every table: the child builds rows straight from changes (projections._change_rows),
the reference from LedgerEntry messages (projections.rows); they must agree byte for byte."""
COUNTS = "SELECT (SELECT count() FROM entries), (SELECT count() FROM transactions), (SELECT count() FROM balances)"


def settings(tmp_path: Path) -> ClickHouseSettings:
    return ClickHouseSettings(chdb_path=tmp_path / "clickhouse", projector_checkpoint=tmp_path / "cp.json")


async def open_projecting(
    tmp_path: Path, engine: EmbeddedEngine, metadata: Metadata
) -> tuple[ReadModel, ChangeCapture]:
    """The read model with change capture into its projector, as the service assembles them."""
    config = settings(tmp_path)
    model = await ReadModel.open(config)
    projector = model.projector
    assert projector is not None
    capture = await model.on_client_thread(
        lambda: change_capture(engine, projector, config.projector_checkpoint, metadata)
    )
    return model, capture


def rows(client: ClickHouseClient, sql: str) -> list[list[object]]:
    return client.query_rows(sql)


async def test_child_projects_what_the_in_process_projector_projects(
    tmp_path: Path, engine: EmbeddedEngine, metadata: Metadata, workload: Workload
) -> None:
    for number in range(3):
        await workload.round(number)
    model, capture = await open_projecting(tmp_path, engine, metadata)
    try:
        assert model.process is not None and model.process.pid not in (None, os.getpid())
        assert await drain(capture) == 3 * 8
        remote = [await model.query(functools.partial(rows, sql=sql)) for sql in ROWS]
        remote_counts = await model.query(lambda client: rows(client, COUNTS))
    finally:
        await model.close()
    # The reference: the same feed projected in this process, into another directory.
    reference = ChdbClient(tmp_path / "reference", "ledger")
    try:
        assert await drain(change_capture(engine, Projector(reference), tmp_path / "ref.json", metadata)) == 3 * 8
        assert remote == [rows(reference, sql) for sql in ROWS]
        assert all(remote)
        assert remote_counts == rows(reference, COUNTS) == [[48, 24, 48]]
    finally:
        reference.close()


async def test_killed_child_is_restarted_and_catches_up(
    tmp_path: Path, engine: EmbeddedEngine, metadata: Metadata, workload: Workload
) -> None:
    await workload.round(0)
    model, capture = await open_projecting(tmp_path, engine, metadata)
    try:
        assert model.process is not None
        assert await drain(capture) == 8
        first = model.process.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await workload.round(1)
        with pytest.raises(ClickHouseError):  # The call that finds the child gone fails; nothing moves.
            await capture.run_once()
        assert await drain(capture) == 8  # A new child, resumed from the checkpoint.
        assert model.process.restarts == 1 and model.process.pid not in (None, first)
        found = await model.query(
            lambda client: rows(
                client, "SELECT count(), uniqExact(chain_sequence), max(chain_sequence) FROM transactions"
            )
        )
        assert found == [[16, 16, 16]]  # Every change once, the chain continuous across the restart.
    finally:
        await model.close()


async def test_projected_until_follows_the_projector_and_any_other_write(
    tmp_path: Path, engine: EmbeddedEngine, metadata: Metadata, workload: Workload
) -> None:
    """The child answers projected_until from its projector's memory between writes of its own: the
    answer must be what ClickHouse holds, after projections and after any other write alike."""

    async def newest_change() -> int:
        events = await engine.get_change_events(ChangeEventsFilter(timestamp_min=1, limit=1000))
        return events[-1].timestamp

    model, capture = await open_projecting(tmp_path, engine, metadata)
    try:
        assert await model.projected_until() == 0  # Empty: asked, learned.
        await workload.round(0)
        assert await drain(capture) == 8
        first = await newest_change()
        assert await model.projected_until() == first
        assert await model.projected_until() == first  # From memory.
        await workload.round(1)
        assert await drain(capture) == 8
        second = await newest_change()
        assert second > first
        assert await model.projected_until() == second  # Moved forward by the projector.
        assert await model.query_in_model(projected_timestamp) == second  # ClickHouse itself agrees.
        assert await model.projected_until() == second
        tampered = second + 1_000
        await model.query(
            lambda client: client.command(
                "INSERT INTO transactions (engine_timestamp) VALUES ({timestamp:UInt64})", {"timestamp": tampered}
            )
        )
        assert await model.projected_until() == tampered  # A write not the projector's: asked again.
    finally:
        await model.close()
