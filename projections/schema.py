"""The read model's DDL: the one definition of its tables, used by both ClickHouse backends.

The tables; all but `accounts` fed by the projector from `ledger.v1.LedgerEntry` events:

- `entries`: one row per account side of every change (the event itself). Ordered by
  (account_id, engine_timestamp): statements and as-of queries read one account's contiguous range.
- `transactions`: one row per change (transfer or expiry) with its metadata and audit chain link:
  the chain rows, one per chain sequence, ordered by engine timestamp (= chain order).
- `accounts`: each customer account's own attributes and labels (not from the events: from the
  metadata store, projections.accounts), ordered by account id.
- `balances`: the balance time series, one row per account per change, from the entry's
  balance_after (absent on the TigerBeetle backend, whose client cannot read balances as of a change).
  A view over `entries` (its rows with a balance_after, the `_after` columns renamed), not a table: its
  rows are exactly those, so a separate table only cost a part written and merged per batch (~12-20% of
  a small batch's CPU in the read model's process). Read models from before keep their `balances` table
  until `create_tables` replaces it (`_migrate_balances`).

Types: ids and money UInt128 (never floats), sums in UInt256/Int256 so no total can wrap;
timestamps UInt64 ns, with a DateTime64(9) column materialized for date functions; chain hashes as
lowercase hex (what exports carry and what the canonical bytes of `ledger_events.chain` hash).

Idempotency: every table is a ReplacingMergeTree keyed on its event identity, so duplicates that
ever reach it collapse on merge; and the projector inserts only rows whose key is not yet present,
so queries never see a duplicate, without FINAL.
"""

from __future__ import annotations

import enum
import logging

from projections.client import ClickHouseClient

log = logging.getLogger(__name__)


class BalancesMigration(enum.Enum):
    """What `create_tables` did with an old read model's `balances` table."""

    NONE = "none"
    """No old table: a new read model, or one already migrated."""
    REPLACED = "replaced"
    """The table held exactly the view's rows: dropped, the view took its name."""
    KEPT_DISAGREEING = "kept_disagreeing"
    """The table disagreed with `entries`: renamed to BALANCES_UNMIGRATED_TABLE, the view took its name."""


CHANGE_ENUM = (
    "Enum8('SINGLE_PHASE' = 1, 'TWO_PHASE_PENDING' = 2, 'TWO_PHASE_POSTED' = 3, "
    "'TWO_PHASE_VOIDED' = 4, 'TWO_PHASE_EXPIRED' = 5)"
)
"""ledger.v1.EntryChange, values identical (the chain hashes the numeric value)."""
SIDE_ENUM = "Enum8('DEBIT' = 1, 'CREDIT' = 2)"

_METADATA_COLUMNS: tuple[tuple[str, str], ...] = (
    ("has_metadata", "Bool"),
    ("transaction_id", "String"),
    ("idempotency_key", "String"),
    ("client_id", "String"),
    ("transaction_type", "LowCardinality(String)"),
    ("source", "LowCardinality(String)"),
    ("correlation_id", "String"),
    ("description", "String"),
    ("labels", "Map(String, String)"),
    ("currency", "LowCardinality(String)"),
    ("leg_index", "UInt32"),
)
_TRANSFER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("transfer_id", "UInt128"),
    ("pending_id", "UInt128"),
    ("ledger", "UInt32"),
    ("code", "UInt16"),
    ("transfer_flags", "UInt16"),
    ("user_data_128", "UInt128"),
    ("user_data_64", "UInt64"),
    ("user_data_32", "UInt32"),
    ("timeout_seconds", "UInt32"),
    ("transfer_timestamp", "UInt64"),
)
_CHAIN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("chain_sequence", "UInt64"),
    ("chain_previous_hash", "FixedString(64)"),
    ("chain_hash", "FixedString(64)"),
)
_BALANCE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("debits_pending", "UInt128"),
    ("debits_posted", "UInt128"),
    ("credits_pending", "UInt128"),
    ("credits_posted", "UInt128"),
)

METADATA_COLUMNS = _METADATA_COLUMNS
"""The domain metadata's columns, in every table that carries them (entries, transactions)."""
BALANCE_FIELDS = _BALANCE_COLUMNS
"""An account's balances (`balances`' columns; `entries` has them with an `_after` suffix)."""
CHAIN_COLUMNS = _CHAIN_COLUMNS
"""The audit chain link's columns (entries, transactions)."""

ENTRIES_COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_id", "String"),
    ("engine_timestamp", "UInt64"),
    ("change", CHANGE_ENUM),
    ("side", SIDE_ENUM),
    ("account_id", "UInt128"),
    ("counterparty_account_id", "UInt128"),
    ("amount", "UInt128"),
    # The posted effect on this account's credits_posted - debits_posted: +amount for a credit,
    # -amount for a debit, 0 for reservations and releases (they move pending balances only).
    ("signed_amount", "Int256"),
    *_TRANSFER_COLUMNS,
    ("has_balance_after", "Bool"),
    *((f"{name}_after", kind) for name, kind in _BALANCE_COLUMNS),
    *_CHAIN_COLUMNS,
    *_METADATA_COLUMNS,
)
TRANSACTIONS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("engine_timestamp", "UInt64"),
    ("change", CHANGE_ENUM),
    ("debit_account_id", "UInt128"),
    ("credit_account_id", "UInt128"),
    ("amount", "UInt128"),
    *_TRANSFER_COLUMNS,
    *_CHAIN_COLUMNS,
    *_METADATA_COLUMNS,
)
BALANCES_COLUMNS: tuple[tuple[str, str], ...] = (
    ("account_id", "UInt128"),
    ("engine_timestamp", "UInt64"),
    ("ledger", "UInt32"),
    *_BALANCE_COLUMNS,
)

RECONCILIATION_RUNS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("run_id", "String"),
    ("account_id", "UInt128"),
    ("created_timestamp", "UInt64"),
    ("statement_format", "LowCardinality(String)"),
    ("statement_sha256", "FixedString(64)"),
    ("currency", "LowCardinality(String)"),
    ("date_from", "Date32"),
    ("date_to", "Date32"),
    ("date_window_days", "UInt16"),
    ("tolerance", "UInt128"),
    ("inverted", "Bool"),
    ("statement_lines", "UInt32"),
    ("ledger_entries", "UInt32"),
    ("matched", "UInt32"),
    ("unmatched_statement", "UInt32"),
    ("unmatched_ledger", "UInt32"),
    ("duplicates", "UInt32"),
    ("reversals", "UInt32"),
    ("amount_discrepancies", "UInt32"),
    ("date_discrepancies", "UInt32"),
)
"""One row per statement reconciliation run (projections.statements): its inputs and counts."""
RECONCILIATION_RESULTS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("run_id", "String"),
    ("result_index", "UInt32"),
    ("kind", "LowCardinality(String)"),
    ("rule", "LowCardinality(String)"),
    ("line_numbers", "Array(UInt32)"),
    ("event_ids", "Array(String)"),
    ("transfer_ids", "Array(UInt128)"),
    ("statement_amount", "Int256"),
    ("ledger_amount", "Int256"),
    ("amount_difference", "Int256"),
    ("date_difference_days", "Int32"),
    ("reference", "String"),
    ("note", "String"),
)
"""One row per result of a run: a match, a duplicate or reversal, or what is unmatched on each side."""

ACCOUNTS_TABLE = "accounts"
ACCOUNTS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("account_id", "UInt128"),
    ("client_id", "String"),
    ("currency", "LowCardinality(String)"),
    ("account_type", "Enum8('NO_OVERDRAFT' = 1, 'OVERDRAFT_ALLOWED' = 2)"),
    ("external_reference", "String"),
    ("owner", "String"),
    ("labels", "Map(String, String)"),
    ("created_timestamp", "UInt64"),
)
"""Each customer account's own attributes, labels included (projections.accounts; fed from the metadata store)."""
_ACCOUNTS_COLUMNS_TEXT = ",\n    ".join(f"{name} {kind}" for name, kind in ACCOUNTS_COLUMNS)
_ACCOUNTS_DDL = f"""CREATE TABLE IF NOT EXISTS {ACCOUNTS_TABLE} (
    {_ACCOUNTS_COLUMNS_TEXT},
    created_time DateTime64(9, 'UTC') MATERIALIZED fromUnixTimestamp64Nano(toInt64(created_timestamp), 'UTC'),
    INDEX client_bloom client_id TYPE bloom_filter GRANULARITY 4,
    INDEX label_keys_bloom mapKeys(labels) TYPE bloom_filter GRANULARITY 4,
    INDEX label_values_bloom mapValues(labels) TYPE bloom_filter GRANULARITY 4
) ENGINE = ReplacingMergeTree ORDER BY account_id"""
# The label blooms let `labels['k'] = 'v'` skip granules: measured on chDB over 2M accounts (loaded host,
# query condition cache off), a selective pair 56 ms without them, 5 ms with; a common one ~4 ms either way.

_ENGINE_TIME = "engine_time DateTime64(9, 'UTC') MATERIALIZED fromUnixTimestamp64Nano(toInt64(engine_timestamp), 'UTC')"


_SOURCE_INDEX_SPEC = ("source_bloom", "source", "bloom_filter", 4)
"""ListTransactions by source skips the granules without it (labels have the transaction_labels table)."""


def _index(name: str, expression: str, kind: str, granularity: int) -> str:
    return f"INDEX {name} {expression} TYPE {kind} GRANULARITY {granularity}"


_SOURCE_INDEX = _index(*_SOURCE_INDEX_SPEC)

LABELS_TABLE = "transaction_labels"
LABELLED_COLUMNS = (
    "engine_timestamp",
    "change",
    "debit_account_id",
    "credit_account_id",
    "amount",
    "transfer_id",
    "pending_id",
    "ledger",
    "code",
    "chain_sequence",
    "transaction_id",
    "transaction_type",
    "source",
    "correlation_id",
    "description",
    "labels",
    "currency",
    "leg_index",
    "client_id",
)
"""The columns of `transactions` the label index carries (what ListTransactions answers and filters on)."""
_TRANSACTION_KINDS = dict(TRANSACTIONS_COLUMNS)
TRANSACTION_LABELS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("label_key", "String"),
    ("label_value", "String"),
    *((name, _TRANSACTION_KINDS[name]) for name in LABELLED_COLUMNS),
)
_LABELS_SELECT = (
    f"SELECT pair.1 AS label_key, pair.2 AS label_value, {', '.join(LABELLED_COLUMNS)} FROM transactions "
    "ARRAY JOIN arrayZip(mapKeys(labels), mapValues(labels)) AS pair"
)
"""Every label of every change with the change's columns: what the materialized view adds on each insert
into transactions."""


def _columns(columns: tuple[tuple[str, str], ...]) -> str:
    return ",\n    ".join(f"{name} {kind}" for name, kind in columns)


BALANCES_TABLE = "balances"
_BALANCES_SELECT = (
    "SELECT account_id, engine_timestamp, ledger, "
    + ", ".join(f"{name}_after AS {name}" for name, _ in _BALANCE_COLUMNS)
    + ", engine_time FROM entries WHERE has_balance_after"
)
"""`balances`' rows from `entries`: the sides that carry a balance_after (what both insert paths wrote
into the old table, keyed the same: account_id, engine_timestamp). `engine_time` comes along as the last
column: the old table had it (materialized, so it was left out of `SELECT *`; a view cannot hide one)."""
_BALANCES_VIEW = f"CREATE VIEW IF NOT EXISTS {BALANCES_TABLE} AS {_BALANCES_SELECT}"
_BALANCES_CHECKSUM = f"count(), sum(cityHash64({', '.join(name for name, _ in BALANCES_COLUMNS)}))"
_BALANCES_TABLE_CHECK = f"SELECT {_BALANCES_CHECKSUM} FROM {BALANCES_TABLE}"
_BALANCES_VIEW_CHECK = f"SELECT {_BALANCES_CHECKSUM} FROM ({_BALANCES_SELECT})"
"""Rows and a checksum of every column: an old `balances` table and the view must agree on both before
the table goes (the sum wraps alike on both sides and ignores order, as the tables' parts do)."""
BALANCES_UNMIGRATED_TABLE = "balances_unmigrated"
"""Where an old `balances` table that disagreed with `entries` is kept (renamed, never dropped)."""


DDL: tuple[str, ...] = (
    f"""CREATE TABLE IF NOT EXISTS entries (
    {_columns(ENTRIES_COLUMNS)},
    {_ENGINE_TIME},
    INDEX engine_timestamp_minmax engine_timestamp TYPE minmax GRANULARITY 1,
    INDEX correlation_bloom correlation_id TYPE bloom_filter GRANULARITY 4
) ENGINE = ReplacingMergeTree ORDER BY (account_id, engine_timestamp)""",
    f"""CREATE TABLE IF NOT EXISTS transactions (
    {_columns(TRANSACTIONS_COLUMNS)},
    {_ENGINE_TIME},
    INDEX chain_sequence_minmax chain_sequence TYPE minmax GRANULARITY 1,
    INDEX correlation_bloom correlation_id TYPE bloom_filter GRANULARITY 4,
    INDEX transfer_bloom transfer_id TYPE bloom_filter GRANULARITY 4,
    {_SOURCE_INDEX}
) ENGINE = ReplacingMergeTree ORDER BY engine_timestamp""",
    # The label index of `transactions`: one row per label of every change, carrying the change's columns
    # and ordered so that one key = value pair is a contiguous range in engine-timestamp order: a page of
    # a label filter is a few consecutive granules (projections.metadata_queries).
    f"""CREATE TABLE IF NOT EXISTS {LABELS_TABLE} (
    {_columns(TRANSACTION_LABELS_COLUMNS)}
) ENGINE = ReplacingMergeTree ORDER BY (label_key, label_value, engine_timestamp)""",
    _BALANCES_VIEW,
    # Statement reconciliation (projections.statements): written once per run id, never updated.
    f"""CREATE TABLE IF NOT EXISTS reconciliation_runs (
    {_columns(RECONCILIATION_RUNS_COLUMNS)}
) ENGINE = ReplacingMergeTree ORDER BY run_id""",
    _ACCOUNTS_DDL,
    f"""CREATE TABLE IF NOT EXISTS reconciliation_results (
    {_columns(RECONCILIATION_RESULTS_COLUMNS)}
) ENGINE = ReplacingMergeTree ORDER BY (run_id, result_index)""",
)

# Added after the first release: tables created before get the indexes here (new parts are indexed as they
# are written and merged; `ALTER TABLE ... MATERIALIZE INDEX` indexes the old ones when wanted).
DDL_ADDED: tuple[str, ...] = (f"ALTER TABLE transactions ADD INDEX IF NOT EXISTS {_SOURCE_INDEX[len('INDEX ') :]}",)
_LABELS_FEED = f"CREATE MATERIALIZED VIEW IF NOT EXISTS {LABELS_TABLE}_feed TO {LABELS_TABLE} AS {_LABELS_SELECT}"
_LABELS_BACKFILL = f"INSERT INTO {LABELS_TABLE} {_LABELS_SELECT}"


def _table_engine(client: ClickHouseClient, name: str) -> str | None:
    found = client.query_rows(
        "SELECT engine FROM system.tables WHERE database = currentDatabase() AND name = {name:String}",
        {"name": name},
    )
    return None if not found else str(found[0][0])


def _migrate_balances(client: ClickHouseClient) -> BalancesMigration:
    """Replaces an old read model's `balances` table (written beside `entries` by older code) by the view.
    The view answers from `entries`, so the table goes only if it holds exactly the view's rows (count and
    checksum); if not, it is renamed to BALANCES_UNMIGRATED_TABLE (kept for whoever looks into why) and the
    view takes the name all the same: nothing writes the table any more, so keeping it would only go stale."""
    engine = _table_engine(client, BALANCES_TABLE)
    if engine is None or engine == "View":
        return BalancesMigration.NONE
    assert _table_engine(client, "entries") is not None, "an old balances table without entries"
    table = [int(str(value)) for value in client.query_rows(_BALANCES_TABLE_CHECK)[0]]
    view = [int(str(value)) for value in client.query_rows(_BALANCES_VIEW_CHECK)[0]]
    if table == view:
        client.command(f"DROP TABLE {BALANCES_TABLE}")
        outcome = BalancesMigration.REPLACED
    else:
        assert _table_engine(client, BALANCES_UNMIGRATED_TABLE) is None, f"{BALANCES_UNMIGRATED_TABLE} exists"
        client.command(f"RENAME TABLE {BALANCES_TABLE} TO {BALANCES_UNMIGRATED_TABLE}")
        log.warning(
            "read model: the old balances table (%s rows) disagreed with entries' balance columns (%s rows): "
            "kept as %s, balances is now the view over entries",
            table[0],
            view[0],
            BALANCES_UNMIGRATED_TABLE,
        )
        outcome = BalancesMigration.KEPT_DISAGREEING
    client.command(_BALANCES_VIEW)
    assert _table_engine(client, BALANCES_TABLE) == "View"
    return outcome


def create_tables(client: ClickHouseClient) -> BalancesMigration:
    """Idempotent: creates whatever is missing, touches nothing that exists, except an old read model's
    `balances` table, which it replaces by the view (_migrate_balances; returns what it did)."""
    migration = _migrate_balances(client)
    labels_existed = bool(
        client.query_rows(
            "SELECT 1 FROM system.tables WHERE database = currentDatabase() AND name = {name:String}",
            {"name": LABELS_TABLE},
        )
    )
    for statement in (*DDL, *DDL_ADDED):
        client.command(statement)
    if not labels_existed:
        # A read model from before the label index: index the changes it holds, once, before the view
        # feeds new ones (the callers create the tables before the projector inserts anything).
        client.command(_LABELS_BACKFILL)
    client.command(_LABELS_FEED)
    return migration
