"""`balances` is a view over `entries` (projections.schema): a read model created by older code, whose
`balances` was a table the projector wrote beside `entries`, is migrated on open and answers the same rows;
an old table that disagrees with `entries` is kept under another name, never dropped."""

from __future__ import annotations

from pathlib import Path

from facade.changes.into_read_model import change_capture
from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import ChangeEventsFilter
from projections import schema
from projections.client import ChdbClient
from projections.projector import Projector
from projections.reconcile import reconcile
from tests.projections.conftest import Metadata, Workload, drain

ROUNDS = 3
OLD_BALANCES_DDL = """CREATE TABLE balances (
    account_id UInt128,
    engine_timestamp UInt64,
    ledger UInt32,
    debits_pending UInt128,
    debits_posted UInt128,
    credits_pending UInt128,
    credits_posted UInt128,
    engine_time DateTime64(9, 'UTC') MATERIALIZED fromUnixTimestamp64Nano(toInt64(engine_timestamp), 'UTC'),
    INDEX engine_timestamp_minmax engine_timestamp TYPE minmax GRANULARITY 1
) ENGINE = ReplacingMergeTree ORDER BY (account_id, engine_timestamp)"""
"""The `balances` DDL of every read model before the view (projections/schema.py at 3bd7363)."""
OLD_COLUMNS = tuple(name for name, _ in schema.BALANCES_COLUMNS)
BALANCES = (
    "SELECT account_id, engine_timestamp, ledger, debits_pending, debits_posted, credits_pending, credits_posted, "
    "engine_time FROM balances ORDER BY account_id, engine_timestamp"
)
ENGINE = "SELECT engine FROM system.tables WHERE database = currentDatabase() AND name = {name:String}"


async def old_read_model(tmp_path: Path, engine: EmbeddedEngine, client: ChdbClient, metadata: Metadata) -> int:
    """The read model as older code left it: entries and transactions projected, `balances` a table holding
    each change's account snapshots (written as the old projector did, from the engine's change events, not
    from entries). Returns how many balances rows it holds."""
    await drain(change_capture(engine, Projector(client), tmp_path / "cp.json", metadata))
    client.command("DROP VIEW balances")
    client.command(OLD_BALANCES_DDL)
    rows: list[str] = []
    for event in await engine.get_change_events(ChangeEventsFilter(timestamp_min=1)):
        for account in (event.debit_account, event.credit_account):
            assert account is not None
            rows.append(
                f"{account.id}\t{event.timestamp}\t{event.transfer.ledger}\t{account.debits_pending}\t"
                f"{account.debits_posted}\t{account.credits_pending}\t{account.credits_posted}\n"
            )
    client.insert_tsv("balances", OLD_COLUMNS, "".join(rows))
    assert client.query_rows(ENGINE, {"name": "balances"}) == [["ReplacingMergeTree"]]
    return len(rows)


async def test_an_old_balances_table_becomes_the_view_with_the_same_rows(
    tmp_path: Path, engine: EmbeddedEngine, client: ChdbClient, metadata: Metadata, workload: Workload
) -> None:
    for number in range(ROUNDS):
        await workload.round(number)
    count = await old_read_model(tmp_path, engine, client, metadata)
    before = client.query_rows(BALANCES)
    assert len(before) == count > 0

    assert schema.create_tables(client) == schema.BalancesMigration.REPLACED
    assert client.query_rows(ENGINE, {"name": "balances"}) == [["View"]]
    assert client.query_rows(BALANCES) == before
    assert client.query_rows(ENGINE, {"name": schema.BALANCES_UNMIGRATED_TABLE}) == []
    # Idempotent, and the projector opens on it: new changes reach the view through entries.
    assert schema.create_tables(client) == schema.BalancesMigration.NONE
    await workload.round(ROUNDS)
    await drain(change_capture(engine, Projector(client), tmp_path / "cp.json", metadata))
    grown = client.query_rows(BALANCES)
    assert len(grown) > len(before)
    assert {tuple(map(str, row)) for row in before} <= {tuple(map(str, row)) for row in grown}
    assert (await reconcile(engine, client)).ok


async def test_an_old_balances_table_that_disagrees_is_kept(
    tmp_path: Path, engine: EmbeddedEngine, client: ChdbClient, metadata: Metadata, workload: Workload
) -> None:
    for number in range(ROUNDS):
        await workload.round(number)
    await old_read_model(tmp_path, engine, client, metadata)
    derived = client.query_rows(BALANCES)  # Entries' balance columns (the test above).
    # Old rows altered: the table no longer holds exactly entries' balance columns.
    client.command(
        "ALTER TABLE balances UPDATE credits_pending = credits_pending + 1 WHERE account_id = 5 "
        "SETTINGS mutations_sync = 2"
    )
    old = client.query_rows(BALANCES)
    assert old != derived

    assert schema.create_tables(client) == schema.BalancesMigration.KEPT_DISAGREEING
    assert client.query_rows(ENGINE, {"name": "balances"}) == [["View"]]
    assert client.query_rows(BALANCES) == derived
    unmigrated = BALANCES.replace("FROM balances", f"FROM {schema.BALANCES_UNMIGRATED_TABLE}")
    assert client.query_rows(unmigrated) == old


def test_a_new_read_model_has_the_view(tmp_path: Path) -> None:
    client = ChdbClient(tmp_path / "clickhouse", "ledger")
    try:
        assert schema.create_tables(client) == schema.BalancesMigration.NONE
        assert client.query_rows(ENGINE, {"name": "balances"}) == [["View"]]
        assert schema.create_tables(client) == schema.BalancesMigration.NONE
    finally:
        client.close()
