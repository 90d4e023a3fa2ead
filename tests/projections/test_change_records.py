"""Large in-order batches go to ClickHouse as Native blocks (projections._change_columns): the tables must
hold exactly what the TabSeparated path writes, and a replay over them must still be de-duplicated key by key."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facade.engine.codec import encode_accounts, encode_transfers
from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import Account, ChangeEventsFilter, ChangeEventType, Transfer
from ledger_events.chain import GENESIS
from ledger_events.gen.ledger.v1 import entries_pb2
from projections._change_columns import _int256_signed, change_records
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


def edge_changes() -> tuple[_Changes, dict[int, entries_pb2.EntryMetadata]]:
    """Changes whose values cross every encoding boundary of a Native block: amounts at and beyond 2^64 and the
    u128 maximum (signed_amount's two's complement carries), zero amounts, every change type, strings of 127,
    128 and 300 bytes (one- and two-byte lengths), multi-byte UTF-8, many labels, changes without metadata."""
    u128_max = (1 << 128) - 1
    amounts = (1, 0, 1 << 64, (1 << 64) - 1, 1 << 127, u128_max, 12345, (1 << 64) + 1, 7, 0)
    kinds = [kind.value for kind in ChangeEventType] * 2
    transfers: list[Transfer] = []
    accounts: list[Account] = []
    found: dict[int, entries_pb2.EntryMetadata] = {}
    timestamp_first = 1_700_000_000_000_000_000
    for index, amount in enumerate(amounts):
        transfer_id = (1 << 100) + index
        debit, credit = u128_max - index, index + 1
        transfers.append(
            Transfer(
                id=transfer_id,
                debit_account_id=debit,
                credit_account_id=credit,
                amount=amount,
                pending_id=index * (1 << 70),
                user_data_128=u128_max - 1,
                user_data_64=(1 << 64) - 1,
                user_data_32=(1 << 32) - 1,
                timeout=index,
                ledger=840,
                code=65535,
                timestamp=timestamp_first + index,
            )
        )
        balance = amount if index % 3 else u128_max
        accounts.append(Account(id=debit, ledger=840, code=1, debits_posted=balance, credits_pending=index))
        # An expiry on the TigerBeetle backend carries no accounts: id 0, no balances.
        accounts.append(Account() if index == 4 else Account(id=credit, ledger=840, code=1, credits_posted=balance))
        if index % 4 == 3:
            continue  # No metadata.
        found[transfer_id] = entries_pb2.EntryMetadata(
            transaction_id="t" * (127 + index % 3),
            idempotency_key=f"ключ-{index}-" + "ü" * (index * 20),
            client_id="client-€",
            transaction_type="transfer" if index % 2 else "authorize",
            source="" if index == 5 else "api",
            correlation_id="c\tq\n'\"\\" * index,
            description="d" * 300 if index == 2 else "",
            labels={f"k{n}\t'": "v" * n for n in range(index * 3)},
            currency="USD" if index % 2 else "EUR",
            leg_index=index,
        )
    changes = _Changes(
        timestamps=[timestamp_first + index for index in range(len(amounts))],
        types=kinds[: len(amounts)],
        transfers=encode_transfers(transfers),
        accounts=encode_accounts(accounts),
        metadata={transfer_id: described.SerializeToString() for transfer_id, described in found.items()},
    )
    return changes, found


def test_native_blocks_make_the_rows_the_text_path_makes_at_the_edges(tmp_path: Path) -> None:
    changes, found = edge_changes()
    arguments = (changes.timestamps, changes.types, changes.transfers, changes.accounts, found, GENESIS)
    client = ChdbClient(tmp_path / "records", "ledger")
    try:
        records, records_link = change_records(*arguments)
        assert Projector(client).project_records(records) == 3 * len(changes.timestamps)
        from_records = tables(client)
    finally:
        client.close()
    client = ChdbClient(tmp_path / "rows", "ledger")
    try:
        rows, rows_link = change_rows(*arguments)
        Projector(client).project_tables(rows, len(changes.timestamps))
        from_rows = tables(client)
    finally:
        client.close()
    assert records_link == rows_link and records_link.sequence == len(changes.timestamps)
    assert from_records == from_rows
    entries = from_records[0]
    assert len(entries) == 2 * len(changes.timestamps) and len(from_records[3]) == sum(
        len(described.labels) for described in found.values()
    )
    signed = {int(str(row[7])) for row in entries}
    assert -((1 << 128) - 1) in signed and (1 << 64) + 1 in signed and -(1 << 64) in signed


def test_int256_signed_amounts() -> None:
    """signed_amount's Int256, built for a whole column at once, equals Python's own two's complement."""
    values = [0, 1, 2, (1 << 64) - 1, 1 << 64, (1 << 64) + 1, (1 << 127) + 5, (1 << 128) - 1]
    amounts = np.frombuffer(b"".join(value.to_bytes(16, "little") for value in values), dtype=np.uint8)
    amounts = amounts.reshape(len(values), 16)
    posting = np.array([index % 5 != 4 for index in range(len(values))])
    for negative in (True, False):
        built = _int256_signed(amounts, posting, negative=negative)
        expected = b"".join(
            ((-value if negative else value) if posting[index] else 0).to_bytes(32, "little", signed=True)
            for index, value in enumerate(values)
        )
        assert built == expected
