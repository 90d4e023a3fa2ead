"""Large in-order batches go to ClickHouse as binary records and become rows there
(projections._change_records): the tables must hold exactly what the TabSeparated path writes, and a
replay over them must still be de-duplicated key by key."""

from __future__ import annotations

from pathlib import Path

from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import ChangeEventsFilter
from ledger_events.chain import GENESIS
from ledger_events.gen.ledger.v1 import entries_pb2
from projections._change_records import change_records
from projections._change_rows import change_rows
from projections._process import _Changes, _encode_changes, _project_changes
from projections.client import ChdbClient
from projections.projector import MERGE_SELECTOR_BASE, Projector
from tests.projections.conftest import Metadata, Workload

TABLES = (
    "SELECT * FROM entries ORDER BY account_id, engine_timestamp",
    "SELECT * FROM balances ORDER BY account_id, engine_timestamp",
    "SELECT * FROM transactions ORDER BY engine_timestamp",
    "SELECT * FROM transaction_labels ORDER BY label_key, label_value, engine_timestamp",
)
COUNTS = "SELECT (SELECT count() FROM entries), (SELECT count() FROM transactions), (SELECT count() FROM balances)"
ROUNDS = 3
CHANGES_PER_ROUND = 8


async def feed(engine: EmbeddedEngine, metadata: Metadata) -> tuple[_Changes, dict[int, entries_pb2.EntryMetadata]]:
    """Every change of the engine as the read model's process receives them, and their metadata."""
    events = await engine.get_change_events(ChangeEventsFilter(timestamp_min=1, limit=ROUNDS * CHANGES_PER_ROUND))
    assert len(events) == ROUNDS * CHANGES_PER_ROUND
    found = await metadata.metadata_for([event.transfer.id for event in events])
    return _encode_changes(events, found), found


def without_last_accounts(changes: _Changes) -> _Changes:
    """The last change as the TigerBeetle backend reports an expiry: no accounts (id 0, no balances)."""
    accounts = changes.accounts[: -2 * 128] + bytes(2 * 128)
    return _Changes(changes.timestamps, changes.types, changes.transfers, accounts, changes.metadata)


def tables(client: ChdbClient) -> list[list[list[object]]]:
    return [client.query_rows(sql) for sql in TABLES]


async def test_records_make_the_rows_the_text_path_makes(
    tmp_path: Path, engine: EmbeddedEngine, metadata: Metadata, workload: Workload
) -> None:
    for number in range(ROUNDS):
        await workload.round(number)
    changes, found = await feed(engine, metadata)
    changes = without_last_accounts(changes)
    arguments = (changes.timestamps, changes.types, changes.transfers, changes.accounts, found, GENESIS)
    client = ChdbClient(tmp_path / "records", "ledger")
    try:
        projector = Projector(client)
        records, records_link = change_records(*arguments)
        assert projector.appends(records.timestamp_min)
        assert projector.project_records(records) == 2 * 24 + 24  # Entries, transactions: balances is a view.
        from_records = tables(client)
        records_counts = client.query_rows(COUNTS)
    finally:
        client.close()
    client = ChdbClient(tmp_path / "rows", "ledger")
    try:
        rows, rows_link = change_rows(*arguments)
        Projector(client).project_tables(rows, len(changes.timestamps))
        assert from_records == tables(client)
    finally:
        client.close()
    assert records_link == rows_link and records_link.sequence == 24
    assert all(from_records) and records_counts == [[48, 24, 46]]
    labelled = from_records[3]
    assert any(row[0] == "we'ird\tkey" and row[1] == "va\\lue" for row in labelled)  # Raw bytes, not escapes.


async def test_a_replay_over_records_is_deduplicated(
    tmp_path: Path,
    engine: EmbeddedEngine,
    metadata: Metadata,
    workload: Workload,
) -> None:
    for number in range(ROUNDS):
        await workload.round(number)
    changes, _ = await feed(engine, metadata)
    half = 2 * CHANGES_PER_ROUND

    def part(start: int, end: int) -> _Changes:
        return _Changes(
            changes.timestamps[start:end],
            changes.types[start:end],
            changes.transfers[start * 128 : end * 128],
            changes.accounts[start * 256 : end * 256],
            changes.metadata,
        )

    client = ChdbClient(tmp_path / "clickhouse", "ledger")
    try:
        projector = Projector(client)
        # Small batches take the records path too here.
        assert _project_changes(projector, part(0, half), GENESIS, records_changes_min=1).sequence == half
        assert projector.stats.batches == 1 and projector.stats.rows_inserted == 3 * half  # Records: no key read.
        assert projector.stats.dedup_queries == 0
        # A restart replays from before the high-water mark: a batch overlapping what the tables hold.
        first = part(0, CHANGES_PER_ROUND)
        _, before_replay = change_rows(
            first.timestamps, first.types, first.transfers, first.accounts, metadata.by_transfer, GENESIS
        )
        replay = part(CHANGES_PER_ROUND, len(changes.timestamps))
        replayed = _project_changes(projector, replay, before_replay, records_changes_min=1)
        assert projector.stats.dedup_queries == 2 and projector.stats.rows_duplicate == 8 * 3
        assert client.query_rows(COUNTS) == [[48, 24, 48]]
        chain = client.query_rows("SELECT count(), uniqExact(chain_sequence), max(chain_sequence) FROM transactions")
        assert chain == [[24, 24, 24]]
        assert replayed.sequence == 24
        # In order again: records, no key read.
        assert projector.appends(changes.timestamps[-1] + 1)
    finally:
        client.close()


def test_chdb_tables_merge_for_append(tmp_path: Path) -> None:
    """The projector's chDB tables carry the append-friendly merge setting (projections.projector)."""
    client = ChdbClient(tmp_path / "clickhouse", "ledger")
    try:
        Projector(client)
        for table in ("entries", "transactions"):
            [[ddl]] = client.query_rows(
                "SELECT create_table_query FROM system.tables "
                "WHERE database = currentDatabase() AND name = {name:String}",
                {"name": table},
            )
            assert f"merge_selector_base = {MERGE_SELECTOR_BASE}" in str(ddl)
    finally:
        client.close()
