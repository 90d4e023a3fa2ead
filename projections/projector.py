"""The projector: LedgerEntry events → the ClickHouse read model, idempotent on event identity.

`Projector` is an `EntrySink` (facade.changes.poller): `publish` returns once the batch is inserted,
so `ChangeCapture(engine, projector, checkpoint_path)` drives it straight from the engine's change
feed with no Kafka, and the Kafka consumer (projections.kafka_consumer) calls the same `publish`.

Redelivery never double counts, immediately (not after a merge): before inserting, the projector
drops the rows whose key a table already holds. Each table's highest engine timestamp is tracked;
a batch entirely above it cannot hold duplicates (the common, in-order case costs no query), and a
batch reaching below it asks the table which of its keys exist, within the batch's timestamp range.
That is sound because the projector is the tables' only writer (one projector per database). The
ReplacingMergeTree engines collapse anything that slips past that rule on the next merge.

Insert order is entries, balances, transactions: `transactions` is written last, so its newest row
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
from pathlib import Path
from typing import Protocol

from facade.api.gen.ledger.v1 import entries_pb2
from facade.changes import checkpoint as checkpoints
from facade.changes.chain import Link
from facade.changes.checkpoint import START, Checkpoint
from facade.changes.poller import BATCH_CHANGES_MAX, ChangeCapture, EntrySink, MetadataSource
from facade.engine.protocol import Engine
from facade.observability import metrics
from projections import rows, schema
from projections._change_rows import RowTables
from projections.client import ClickHouseClient
from projections.queries import to_int, to_str

BATCH_ENTRIES_MAX = 2 * 8189
"""Most entries per publish: change capture's largest batch (8189 changes, two sides each)."""
assert BATCH_CHANGES_MAX <= BATCH_ENTRIES_MAX // 2

PROJECTION_POLL_INTERVAL_SECONDS = 0.1
"""How long change capture into the read model waits after a batch that was not full. Each insert
costs per batch (three table inserts, new parts, later merges, hops to the engine's and the metadata
store's threads), so ten batches a second at most instead of a hundred small ones. Measured at ~6-8k
tx/s on 2 cores: 0.25 s gave a lag at insert of 1.2-1.7 s, 0.1 s gave 0.25-0.7 s (scripts/bench_api.py)."""
PROJECTION_BATCH_CHANGES_MAX = BATCH_CHANGES_MAX
"""Changes per batch into the read model: the feed's default. The engine's 8189 cost the read model's
process ~10% less CPU per change, but in bench_api.py (A/B, two pairs, load ~7-8) the service acked
fewer transactions and the lag was no better: a larger batch is a longer burst of encoding and
metadata lookups in the service, and its rows become visible only once the whole batch is in."""
PROJECTION_SMALL_BATCH_CHANGES = 1024
PROJECTION_SMALL_BATCH_WAIT_SECONDS = 0.25
"""A quiet feed (fewer changes than that in a batch) waits longer: at ~1k tx/s ten batches a second
cost the service and the read model's process more CPU per transaction than the transactions did.
It was 0.5 s (two batches a second): with rows built straight from the changes' bytes a batch costs
less, and 0.25 s measured lag p99 0.47-0.64 s against 0.70-1.02 s at 1 tx/RPC x16/x64, with no more
server CPU per transaction (bench_api.py, two A/B pairs, load 7-10)."""

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
_BALANCES = _Table("balances", tuple(c for c, _ in schema.BALANCES_COLUMNS), "account_id, engine_timestamp")
_TRANSACTIONS = _Table("transactions", tuple(c for c, _ in schema.TRANSACTIONS_COLUMNS), "0, engine_timestamp")
_INSERT_ORDER = (_ENTRIES, _BALANCES, _TRANSACTIONS)


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
        schema.create_tables(client)
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
            balance = rows.balance_row(entry)
            if balance is not None:
                batches[_BALANCES.name].setdefault((account, timestamp), balance)
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
            _BALANCES.name: tables.balances,
            _TRANSACTIONS.name: tables.transactions,
        }
        return self._insert_batches(batches, tables.timestamp_max, 2 * changes_count)

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


class ProjectionSink(EntrySink, Protocol):
    """A projector in this process (Projector) or in the read model's own process (RemoteProjector)."""

    def resume_checkpoint(self) -> Checkpoint: ...


def change_capture(
    engine: Engine,
    projector: ProjectionSink,
    checkpoint_path: Path,
    metadata: MetadataSource | None = None,
    batch_changes_max: int | None = None,
) -> ChangeCapture:
    """Change capture from the engine straight into the projector (no Kafka), resuming from what
    ClickHouse holds: the checkpoint file is rewritten from the read model before capture starts, so
    the two can never disagree (the read model is the truth; the file only serves the poller)."""
    checkpoints.save(checkpoint_path, projector.resume_checkpoint())
    return ChangeCapture(
        engine,
        projector,
        checkpoint_path,
        metadata,
        batch_changes_max=PROJECTION_BATCH_CHANGES_MAX if batch_changes_max is None else batch_changes_max,
        poll_interval_seconds=PROJECTION_POLL_INTERVAL_SECONDS,
        small_batch_changes=min(
            PROJECTION_SMALL_BATCH_CHANGES,
            PROJECTION_BATCH_CHANGES_MAX if batch_changes_max is None else batch_changes_max,
        ),
        small_batch_wait_seconds=PROJECTION_SMALL_BATCH_WAIT_SECONDS,
    )
