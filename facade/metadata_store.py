"""The façade's durable store for what does not fit the engine: metadata, idempotency, accounts.

SQLite in WAL mode with synchronous=FULL: a commit returns only once it is on disk. Writes are batched
by the group committer (one SQLite transaction, so one fsync, per engine batch, never per item). All
calls run on one dedicated thread: SQLite connections are not shared across threads and the event
loop never blocks on disk.

Protocol per batch, following TigerBeetle's "write last, read first":
1. `prepare`: in one SQLite transaction, look up every transaction of the batch by id and insert an
   intent (client, idempotency key, fingerprint, canonical body) for each new one. Durable before the
   engine sees the transfers, so no transfer can exist without its metadata.
2. The engine batch (durable). Success is recorded there and only there: the engine is the system of
   record, so "committed, at timestamp T" is read back from it (`lookup_transfers`), never duplicated.
3. `record_failures`: the outcome of each transaction the engine refused. Durable before those
   callers are answered, so a retry of a failed transaction gets the original failure, never
   TigerBeetle's `id_already_failed` (the engine burns the ids of transient failures).

A crash between 1 and 2 leaves an intent without transfers: a retry submits it again. A crash between
2 and 3 leaves an intent whose transfers exist (the retry's `exists` proves the commit) or failed (the
retry sees `id_already_failed`, reported as IDEMPOTENCY_KEY_FAILED: the original reason is lost with
the crash, never the money).

Ids are stored as 16-byte big-endian BLOBs in WITHOUT ROWID tables: one B-tree insert per row.

This is the per-façade backend of the protocol in facade/metadata/_protocol.py. On the embedded engine
the service uses facade/metadata/_journal.py instead, which keeps only accounts and the instance
marker in this file (transactions travel in the engine's journal records). Several façades on
one TigerBeetle cluster share facade/metadata/_postgres.py instead (api.metadata_backend=postgres), so
a retry through any of them sees every recorded outcome.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from facade.background import single_thread_executor
from facade.domain.transactions import MappedTransaction, parse_body_summary
from ledger_events.gen.ledger.v1 import entries_pb2

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE accounts (
    account_id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    external_reference TEXT NOT NULL,
    currency TEXT NOT NULL,
    owner TEXT NOT NULL,
    type INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    UNIQUE (client_id, external_reference)
);
CREATE TABLE transactions (
    transaction_id BLOB PRIMARY KEY,
    client_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    body TEXT NOT NULL,
    failure TEXT
) WITHOUT ROWID;
CREATE TABLE transfers (
    transfer_id BLOB PRIMARY KEY,
    transaction_id BLOB NOT NULL,
    leg_index INTEGER NOT NULL
) WITHOUT ROWID;
"""

INSTANCE_SCHEMA = """
CREATE TABLE IF NOT EXISTS instance (
    name TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL
);
"""
"""The start-up consistency marker (facade.consistency): which engine instance this store belongs to.
Added without a schema version bump: an older store simply has no marker yet (an upgrade)."""

QUERY_VARIABLES_MAX = 500
"""Ids per `IN (...)` query (SQLite's default limit is 999 variables)."""

_P = ParamSpec("_P")
_R = TypeVar("_R")


def id_bytes(value: int) -> bytes:
    return value.to_bytes(16, "big")


@dataclass(frozen=True, slots=True)
class AccountRecord:
    account_id: int
    client_id: str
    external_reference: str
    currency: str
    owner: str
    type: int
    metadata: dict[str, str]
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Prior:
    """What the store already held for a transaction id when a batch was prepared."""

    fingerprint: bytes
    failure: str | None
    """The recorded failure (LedgerError.to_json), or None: an intent, committed iff the engine has it."""


@dataclass(frozen=True, slots=True)
class StoredTransaction:
    client_id: str
    idempotency_key: str
    body: str
    failure: str | None


class MetadataStore:
    def __init__(self, connection: sqlite3.Connection, executor: ThreadPoolExecutor) -> None:
        self._db = connection
        self._executor = executor

    @classmethod
    async def open(cls, path: Path) -> MetadataStore:
        executor = single_thread_executor("metadata-store")

        def connect() -> sqlite3.Connection:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            [version] = db.execute("PRAGMA user_version").fetchone()
            if version == 0 and db.execute("SELECT 1 FROM sqlite_master WHERE name = 'transactions'").fetchone():
                version = 1  # The first layout, which never set user_version.
            if version == 0:
                with db:
                    db.execute("BEGIN")
                    db.executescript(SCHEMA.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS"))
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                db.close()
                raise RuntimeError(f"{path}: metadata schema version {version}, this build reads {SCHEMA_VERSION}")
            db.executescript(INSTANCE_SCHEMA)
            return db

        try:
            connection = await asyncio.get_running_loop().run_in_executor(executor, connect)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(connection, executor)

    async def _run(self, function: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: function(*args, **kwargs))

    async def close(self) -> None:
        await self._run(self._db.close)
        self._executor.shutdown(wait=True)

    # The instance marker and consistency checks (facade.consistency).

    async def instance_marker(self) -> tuple[str, int] | None:
        """(façade name, instance id) of the engine instance this store belongs to; None if unmarked."""

        def query() -> tuple[str, int] | None:
            row = self._db.execute("SELECT name, instance_id FROM instance").fetchone()
            return (row[0], int(row[1])) if row else None

        return await self._run(query)

    async def put_instance_marker(self, name: str, instance_id: int) -> None:
        """Durably records the marker (once: a store belongs to one instance for good)."""

        def write() -> None:
            with self._db:
                self._db.execute("BEGIN")
                assert self._db.execute("SELECT COUNT(*) FROM instance").fetchone()[0] == 0
                self._db.execute("INSERT INTO instance VALUES (?, ?)", (name, str(instance_id)))

        await self._run(write)

    async def has_data(self) -> bool:
        """Whether any account or transaction was ever recorded here."""

        def query() -> bool:
            return any(
                self._db.execute(statement).fetchone()
                for statement in ("SELECT 1 FROM accounts LIMIT 1", "SELECT 1 FROM transactions LIMIT 1")
            )

        return await self._run(query)

    async def has_transactions(self) -> bool:
        """Whether any transaction was recorded here (the journal store reads an older build's rows)."""

        def query() -> bool:
            return self._db.execute("SELECT 1 FROM transactions LIMIT 1").fetchone() is not None

        return await self._run(query)

    async def lookup_transactions(self, transaction_ids: Sequence[int]) -> dict[int, Prior]:
        """What is stored for these transaction ids, without writing anything."""

        def query() -> dict[int, Prior]:
            found: dict[int, Prior] = {}
            keys = [id_bytes(i) for i in transaction_ids]
            for start in range(0, len(keys), QUERY_VARIABLES_MAX):
                chunk = keys[start : start + QUERY_VARIABLES_MAX]
                rows = self._db.execute(
                    "SELECT transaction_id, fingerprint, failure FROM transactions "
                    f"WHERE transaction_id IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                for key, stored_fingerprint, failure in rows:
                    found[int.from_bytes(key, "big")] = Prior(stored_fingerprint, failure)
            return found

        return await self._run(query)

    async def known_transfers(self, transfer_ids: Sequence[int]) -> set[int]:
        """The transfers among `transfer_ids` whose transaction intent this store holds."""

        def query() -> set[int]:
            found: set[int] = set()
            ids = [id_bytes(i) for i in transfer_ids]
            for start in range(0, len(ids), QUERY_VARIABLES_MAX):
                chunk = ids[start : start + QUERY_VARIABLES_MAX]
                rows = self._db.execute(
                    f"SELECT transfer_id FROM transfers WHERE transfer_id IN ({','.join('?' * len(chunk))})", chunk
                )
                found.update(int.from_bytes(transfer_id, "big") for (transfer_id,) in rows)
            return found

        return await self._run(query)

    # Accounts.

    async def put_account(self, record: AccountRecord) -> AccountRecord:
        """Inserts the account, or returns the one already stored under its (client, reference)."""
        return await self._run(self._put_account, record)

    def _put_account(self, record: AccountRecord) -> AccountRecord:
        self._db.execute(
            "INSERT OR IGNORE INTO accounts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (str(record.account_id), record.client_id, record.external_reference, record.currency, record.owner,
             record.type, json.dumps(record.metadata, sort_keys=True), record.fingerprint),
        )  # fmt: skip
        stored = self._get_account(record.account_id)
        assert stored is not None
        return stored

    async def get_account(self, account_id: int) -> AccountRecord | None:
        return await self._run(self._get_account, account_id)

    def _get_account(self, account_id: int) -> AccountRecord | None:
        row = self._db.execute("SELECT * FROM accounts WHERE account_id = ?", (str(account_id),)).fetchone()
        return _account(row) if row else None

    async def account_owners(self, account_ids: Sequence[int]) -> dict[int, str]:
        """The owning client of each known account among `account_ids` (one query)."""

        def query() -> dict[int, str]:
            found: dict[int, str] = {}
            ids = [str(a) for a in account_ids]
            for start in range(0, len(ids), QUERY_VARIABLES_MAX):
                chunk = ids[start : start + QUERY_VARIABLES_MAX]
                rows = self._db.execute(
                    f"SELECT account_id, client_id FROM accounts WHERE account_id IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
                found.update((int(account_id), client_id) for account_id, client_id in rows)
            return found

        return await self._run(query)

    async def list_accounts(self, client_id: str, after: str, limit: int, currency: str) -> list[AccountRecord]:
        def query() -> list[AccountRecord]:
            rows = self._db.execute(
                "SELECT * FROM accounts WHERE client_id = ? AND account_id > ? AND (? = '' OR currency = ?) "
                "ORDER BY account_id LIMIT ?",
                (client_id, after, currency, currency, limit),
            ).fetchall()
            return [_account(row) for row in rows]

        return await self._run(query)

    async def accounts_after(self, after: str, limit: int) -> list[AccountRecord]:
        """Every client's accounts whose id (decimal text, byte order) follows `after`, in that order."""
        assert limit > 0

        def query() -> list[AccountRecord]:
            rows = self._db.execute(
                "SELECT * FROM accounts WHERE account_id > ? ORDER BY account_id LIMIT ?", (after, limit)
            ).fetchall()
            return [_account(row) for row in rows]

        found = await self._run(query)
        assert len(found) <= limit
        return found

    # Transactions.

    async def prepare(self, transactions: Sequence[MappedTransaction]) -> dict[int, Prior]:
        """Step 1 of a batch: returns what is already stored for these transaction ids, and durably
        records an intent for every other one, in one SQLite transaction (none if nothing is new).
        The ids must be distinct (the committer folds repeats within a batch)."""
        return await self._run(self._prepare, transactions)

    def _prepare(self, transactions: Sequence[MappedTransaction]) -> dict[int, Prior]:
        keys = [id_bytes(t.transaction_id) for t in transactions]
        assert len(set(keys)) == len(keys), "transaction ids in one prepare must be distinct"
        found: dict[int, Prior] = {}
        for start in range(0, len(keys), QUERY_VARIABLES_MAX):
            chunk = keys[start : start + QUERY_VARIABLES_MAX]
            rows = self._db.execute(
                "SELECT transaction_id, fingerprint, failure FROM transactions "
                f"WHERE transaction_id IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            for key, stored_fingerprint, failure in rows:
                found[int.from_bytes(key, "big")] = Prior(stored_fingerprint, failure)
        new = [(t, key) for t, key in zip(transactions, keys, strict=True) if t.transaction_id not in found]
        if new:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT INTO transactions VALUES (?, ?, ?, ?, ?, NULL)",
                    [(key, t.client_id, t.idempotency_key, t.fingerprint, t.body) for t, key in new],
                )
                self._db.executemany(
                    "INSERT OR IGNORE INTO transfers VALUES (?, ?, ?)",
                    [(id_bytes(x.id), key, index) for t, key in new for index, x in enumerate(t.transfers)],
                )
        return found

    async def record_failures(self, failures: Sequence[tuple[int, str]]) -> None:
        """Step 3 of a batch: (transaction id, LedgerError.to_json()) for each refused transaction, in
        one durable SQLite transaction. A recorded failure is final for its idempotency key, except
        IDEMPOTENCY_KEY_FAILED (a retry that met the engine's burned id), which the original reason
        replaces if it is recorded later (façades sharing a store: the retry raced the first façade)."""

        def write() -> None:
            with self._db:
                self._db.execute("BEGIN")
                # The engine's placeholder (a retry met the burned id first) yields to the original reason.
                self._db.executemany(
                    "UPDATE transactions SET failure = ? WHERE transaction_id = ? AND (failure IS NULL OR "
                    "(json_extract(failure, '$[1]') = 'IDEMPOTENCY_KEY_FAILED' "
                    "AND json_extract(?, '$[1]') <> 'IDEMPOTENCY_KEY_FAILED'))",
                    [(failure, id_bytes(tx_id), failure) for tx_id, failure in failures],
                )

        if failures:
            await self._run(write)

    async def get_transaction(self, transaction_id: int) -> StoredTransaction | None:
        def query() -> StoredTransaction | None:
            row = self._db.execute(
                "SELECT client_id, idempotency_key, body, failure FROM transactions WHERE transaction_id = ?",
                (id_bytes(transaction_id),),
            ).fetchone()
            return StoredTransaction(*row) if row else None

        return await self._run(query)

    async def metadata_for(self, transfer_ids: Sequence[int]) -> Mapping[int, entries_pb2.EntryMetadata]:
        """Change capture's MetadataSource: the domain metadata of each transfer that has any."""

        def query() -> dict[int, entries_pb2.EntryMetadata]:
            found: dict[int, entries_pb2.EntryMetadata] = {}
            ids = [id_bytes(i) for i in transfer_ids]
            for start in range(0, len(ids), QUERY_VARIABLES_MAX):
                chunk = ids[start : start + QUERY_VARIABLES_MAX]
                rows = self._db.execute(
                    "SELECT x.transfer_id, x.leg_index, t.transaction_id, t.client_id, t.idempotency_key, t.body "
                    "FROM transfers x JOIN transactions t ON t.transaction_id = x.transaction_id "
                    f"WHERE x.transfer_id IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                for transfer_id, leg_index, tx_id, client_id, key, body in rows:
                    summary = parse_body_summary(body, leg_index)
                    metadata = summary.metadata
                    found[int.from_bytes(transfer_id, "big")] = entries_pb2.EntryMetadata(
                        transaction_id=tx_id.hex(),
                        idempotency_key=key,
                        client_id=client_id,
                        transaction_type=summary.transaction_type,
                        source=metadata.source,
                        correlation_id=metadata.correlation_id,
                        description=metadata.description,
                        labels=metadata.labels,
                        currency=summary.currency,
                        leg_index=leg_index,
                    )
            return found

        return await self._run(query)


def _account(row: tuple[str, str, str, str, str, int, str, str]) -> AccountRecord:
    account_id, client_id, reference, currency, owner, type_, metadata, fingerprint = row
    return AccountRecord(
        int(account_id), client_id, reference, currency, owner, type_, json.loads(metadata), fingerprint
    )
