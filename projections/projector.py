"""The projector: LedgerEntry events → the ClickHouse read model, idempotent on event identity.

`Projector` is an entry sink: `publish` returns once the batch is inserted, so change capture
(facade.changes.into_read_model, handed a projector by the composition root) drives it straight from
the engine's change feed with no Kafka, and the Kafka consumer (projections.kafka_consumer) calls the
same `publish`. This package knows change capture only through the event contract (ledger_events).

Redelivery never double counts, immediately (not after a merge): before inserting, the projector
drops the rows whose key a table already holds. Each table's highest engine timestamp is tracked;
a batch entirely above it cannot hold duplicates (the common, in-order case costs no query), and a
batch reaching below it asks the table which of its keys exist, within the batch's timestamp range.
That is sound because the projector is the tables' only writer (one projector per database). The
ReplacingMergeTree engines collapse anything that slips past that rule on the next merge.

Insert order is entries, transactions (`balances` is a view over entries: projections.schema):
`transactions` is written last, so its newest row
is a change every table holds, and `resume_checkpoint` can restart change capture from ClickHouse's
own contents (a lost checkpoint file, or a lost ClickHouse directory, both resume correctly).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

from facade.observability import metrics
from ledger_events.chain import Link
from ledger_events.checkpoint import START, Checkpoint
from ledger_events.gen.ledger.v1 import entries_pb2
from projections import rows, schema
from projections._change_columns import (
    ENTRIES_INSERT_COLUMNS,
    INSERT_SETTINGS,
    TRANSACTIONS_INSERT_COLUMNS,
    ChangeRecords,
)
from projections._change_rows import RowTables
from projections.client import ChdbClient, ClickHouseClient
from projections.queries import to_int, to_str

BATCH_ENTRIES_MAX = 2 * 8189
"""Most entries per publish: change capture's largest batch (8189 changes, two sides each)."""

MERGE_SELECTOR_BASE = 8
"""chDB only (the read model's process; a 24.8 server may not know the setting): merges wait for more parts
of a size before merging them (ClickHouse's default 5), so each row is rewritten fewer times on its way to
a large part. Measured with scripts/bench_read_model_process.py (600,000 changes in 3,000-change batches):
merges 17.0 -> 10.3 µs a change, the process 45 -> 34 µs; the price is about twice the active parts (entries
5 -> 14, transactions 9 -> 15), and History queries that touch every part ~30% slower (by correlation id
7.6 -> 9.7 ms, balance as of 6.1 -> 8.4 ms)."""

Key = tuple[int, int]
"""A row's identity in its table: (account_id, engine_timestamp); (0, engine_timestamp) for transactions."""


@dataclass(slots=True, frozen=True)
class _Table:
    """A read-model table. `name`, `columns` and `key_sql` are constants spliced into SQL as identifiers;
    values are always bound parameters (projections.client.bind_parameters)."""

    name: str
    columns: tuple[str, ...]
    key_sql: str


_ENTRIES = _Table("entries", tuple(c for c, _ in schema.ENTRIES_COLUMNS), "account_id, engine_timestamp")
_TRANSACTIONS = _Table("transactions", tuple(c for c, _ in schema.TRANSACTIONS_COLUMNS), "0, engine_timestamp")
_INSERT_ORDER = (_ENTRIES, _TRANSACTIONS)


@dataclass(slots=True)
class ProjectorStats:
    batches: int = 0
    entries_received: int = 0
    rows_inserted: int = 0
    rows_duplicate: int = 0
    """Rows dropped because their table already held them (redelivery, replay, restart overlap)."""
    dedup_queries: int = 0
    """Batches that reached below a table's high-water mark and had to ask it which keys exist."""


class Projector:
    """The EntrySink into ClickHouse. One per database: it is the tables' only writer."""

    def __init__(
        self, client: ClickHouseClient, clock_ns: Callable[[], int] = time.time_ns, executor: Executor | None = None
    ) -> None:
        self._client = client
        self._executor = executor
        """Where `publish` runs inserts: the thread that owns the client when queries share it (the service)."""
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._binary = client if isinstance(client, ChdbClient) else None
        """The client when it takes binary batches (`project_records`): chDB, in the read model's process."""
        schema.create_tables(client)
        if self._binary is not None:
            for table in _INSERT_ORDER:  # Constants: the table names and the setting's value.
                client.command(f"ALTER TABLE {table.name} MODIFY SETTING merge_selector_base = {MERGE_SELECTOR_BASE}")
        self._high_water: dict[str, int] = {table.name: self._max_timestamp(table.name) for table in _INSERT_ORDER}
        self.stats = ProjectorStats()
        self.last_engine_timestamp = self._high_water[_TRANSACTIONS.name]
        """Engine timestamp of the newest change projected (0 before the first)."""

    def _max_timestamp(self, table: str) -> int:
        return to_int(self._client.query_rows(f"SELECT max(engine_timestamp) FROM {table}")[0][0])

    @property
    def lag_seconds(self) -> float:
        """Now minus the engine timestamp of the newest change projected (0 before the first)."""
        if self.last_engine_timestamp == 0:
            return 0.0
        return max(0, self._clock_ns() - self.last_engine_timestamp) / 1e9

    async def publish(self, entries: Sequence[entries_pb2.LedgerEntry]) -> None:
        """EntrySink: returns once every entry is inserted (and so visible to every query)."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self.project, entries)

    def project(self, entries: Sequence[entries_pb2.LedgerEntry]) -> int:
        """Inserts the rows of `entries` that are not there yet; returns how many rows it inserted."""
        assert len(entries) <= BATCH_ENTRIES_MAX, f"{len(entries)} entries > BATCH_ENTRIES_MAX"
        if not entries:
            return 0
        batches: dict[str, dict[Key, str]] = {table.name: {} for table in _INSERT_ORDER}
        for entry in entries:
            rows.check(entry)
            timestamp = entry.engine_timestamp
            account = rows.account_id(entry)
            batches[_ENTRIES.name].setdefault((account, timestamp), rows.entry_row(entry))
            if entry.side == entries_pb2.DEBIT:
                batches[_TRANSACTIONS.name].setdefault((0, timestamp), rows.transaction_row(entry))
        newest = max(entry.engine_timestamp for entry in entries)
        return self._insert_batches(batches, newest, len(entries))

    def project_tables(self, tables: RowTables, changes_count: int) -> int:
        """`project` for rows built straight from engine changes (projections._change_rows, the read
        model's own process): the same tables, keys and redelivery rules."""
        assert 2 * changes_count <= BATCH_ENTRIES_MAX, f"{changes_count} changes > BATCH_ENTRIES_MAX / 2"
        assert len(tables.transactions) <= changes_count and len(tables.entries) <= 2 * changes_count
        if not changes_count:
            return 0
        batches = {
            _ENTRIES.name: tables.entries,
            _TRANSACTIONS.name: tables.transactions,
        }
        return self._insert_batches(batches, tables.timestamp_max, 2 * changes_count)

    def appends(self, timestamp_min: int) -> bool:
        """Whether a batch starting at `timestamp_min` lies above every table's high-water mark (none of
        its rows can be there already) and this client takes binary batches: `project_records` may take it."""
        return self._binary is not None and all(timestamp_min > high for high in self._high_water.values())

    def project_records(self, records: ChangeRecords) -> int:
        """`project_tables` for a batch of Native blocks (projections._change_columns), in-order
        batches only (`appends`): nothing to de-duplicate, so no key is read or compared. Same insert
        order and high-water marks as `_insert_batches`: a failure part way
        leaves a batch that reaches below some table's mark, which the retry de-duplicates key by key."""
        assert self.appends(records.timestamp_min)
        assert records.count > 0 and 2 * records.count <= BATCH_ENTRIES_MAX
        binary = self._binary
        assert binary is not None
        inserted = 0
        with self._lock:
            for table, columns, data, rows_count in (
                (_ENTRIES, ENTRIES_INSERT_COLUMNS, records.entries, 2 * records.count),
                (_TRANSACTIONS, TRANSACTIONS_INSERT_COLUMNS, records.transactions, records.count),
            ):
                binary.insert_native(table.name, columns, data, INSERT_SETTINGS)
                self._high_water[table.name] = records.timestamp_max
                self.stats.rows_inserted += rows_count
                inserted += rows_count
            self.last_engine_timestamp = max(self.last_engine_timestamp, records.timestamp_max)
            self.stats.batches += 1
            self.stats.entries_received += 2 * records.count
        metrics.projection_lag_seconds.set(self.lag_seconds)
        assert inserted == 3 * records.count
        return inserted

    def _insert_batches(self, batches: dict[str, dict[Key, str]], newest: int, entries_count: int) -> int:
        inserted = 0
        with self._lock:
            for table in _INSERT_ORDER:
                inserted += self._insert_fresh(table, batches[table.name])
            self.last_engine_timestamp = max(self.last_engine_timestamp, newest)
            self.stats.batches += 1
            self.stats.entries_received += entries_count
        metrics.projection_lag_seconds.set(self.lag_seconds)
        return inserted

    def _insert_fresh(self, table: _Table, batch: dict[Key, str]) -> int:
        if not batch:
            return 0
        timestamp_min = min(timestamp for _, timestamp in batch)
        timestamp_max = max(timestamp for _, timestamp in batch)
        high_water = self._high_water[table.name]
        if timestamp_min <= high_water:
            self.stats.dedup_queries += 1
            existing = self._client.query_rows(
                f"SELECT {table.key_sql} FROM {table.name} "
                "WHERE engine_timestamp BETWEEN {timestamp_min:UInt64} AND {timestamp_max:UInt64}",
                {"timestamp_min": timestamp_min, "timestamp_max": min(timestamp_max, high_water)},
            )
            for row in existing:
                if batch.pop((to_int(row[0]), to_int(row[1])), None) is not None:
                    self.stats.rows_duplicate += 1
        if batch:
            self._client.insert_tsv(table.name, table.columns, "".join(batch.values()))
            self._high_water[table.name] = max(high_water, timestamp_max)
            self.stats.rows_inserted += len(batch)
        return len(batch)

    def resume_checkpoint(self) -> Checkpoint:
        """Where change capture resumes: after the newest change in `transactions` (written last, so
        every table holds it), with that change's chain link. START on an empty read model."""
        found = self._client.query_rows(
            "SELECT engine_timestamp, chain_sequence, chain_previous_hash, chain_hash FROM transactions "
            "ORDER BY engine_timestamp DESC LIMIT 1"
        )
        if not found:
            return START
        timestamp, sequence, previous_hash, hash_hex = found[0]
        link = Link(to_int(sequence), bytes.fromhex(to_str(previous_hash)), bytes.fromhex(to_str(hash_hex)))
        return Checkpoint(timestamp_last=to_int(timestamp), link=link)


class ProjectionSink(Protocol):
    """A projector in this process (Projector) or in the read model's own process (RemoteProjector)."""

    async def publish(self, entries: Sequence[entries_pb2.LedgerEntry]) -> None:
        """Returns once every entry is inserted (and so visible to every query)."""
        ...

    def resume_checkpoint(self) -> Checkpoint: ...
