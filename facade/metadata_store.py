"""The façade's durable store for what does not fit the engine: metadata, idempotency, accounts.

SQLite in WAL mode with synchronous=FULL: a commit returns only once it is on disk. Writes are batched
by the group committer (one SQLite transaction, so one fsync, per engine batch, never per item). All
calls run on one dedicated thread: SQLite connections are not shared across threads and the event
loop never blocks on disk.

Protocol per batch, following TigerBeetle's "write last, read first":
1. `record_intents`: each transaction's key, fingerprint, metadata and exact transfers, state
   'intent'. Durable before the engine sees the transfers, so no transfer can exist without its
   metadata, and a crash between 1 and 3 is repaired by the retry (same transfers → `exists`).
2. The engine batch (durable).
3. `record_outcomes`: 'committed' or 'failed' with the outcome. Durable before the client's ack, so a
   retry of a failed transaction gets the original failure, never TigerBeetle's `id_already_failed`.

In production with several façade processes, point them at their own store each (idempotency is
scoped per client and the transfer ids make engine writes idempotent across processes), or replace
this module's SQL with a shared database; the interface is what the service depends on.
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

from facade.api.gen.ledger.v1 import entries_pb2
from facade.domain.mapping import Kind, LegSpec, MappedTransaction, Metadata, TransactionType
from facade.engine.types import Transfer

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
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
CREATE TABLE IF NOT EXISTS transactions (
    transaction_id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('intent', 'committed', 'failed')),
    outcome TEXT,
    UNIQUE (client_id, idempotency_key)
);
CREATE TABLE IF NOT EXISTS transfers (
    transfer_id TEXT PRIMARY KEY,
    transaction_id TEXT NOT NULL,
    leg_index INTEGER NOT NULL
);
"""

QUERY_VARIABLES_MAX = 500
"""Ids per `IN (...)` query (SQLite's default limit is 999 variables)."""

_P = ParamSpec("_P")
_R = TypeVar("_R")


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
class TransactionRecord:
    transaction: MappedTransaction
    state: str
    outcome: dict[str, object] | None


def _encode_transaction(t: MappedTransaction) -> str:
    return json.dumps(
        {
            "kind": str(t.kind),
            "currency": t.currency,
            "authorization_id": str(t.authorization_id),
            "metadata": t.metadata.as_dict(),
            "legs": [
                [int(leg.type), str(leg.debit_account_id), str(leg.credit_account_id), str(leg.amount)]
                for leg in t.legs
            ],
            "transfers": [
                [str(x.id), str(x.debit_account_id), str(x.credit_account_id), str(x.amount), str(x.pending_id),
                 str(x.user_data_128), x.user_data_64, x.user_data_32, x.timeout, x.ledger, x.code, x.flags]
                for x in t.transfers
            ],
        },
        separators=(",", ":"),
    )  # fmt: skip


def _decode_transaction(
    client_id: str, key: str, transaction_id: str, fingerprint: str, body: str
) -> MappedTransaction:
    data = json.loads(body)
    m = data["metadata"]
    return MappedTransaction(
        client_id=client_id,
        idempotency_key=key,
        transaction_id=int(transaction_id),
        kind=Kind(data["kind"]),
        currency=data["currency"],
        legs=tuple(LegSpec(TransactionType(t), int(d), int(c), int(a)) for t, d, c, a in data["legs"]),
        metadata=Metadata(m["source"], m["correlation_id"], m["description"], m["labels"], m["occurred_at_ns"]),
        fingerprint=fingerprint,
        transfers=tuple(
            Transfer(int(i), int(d), int(c), int(a), int(p), int(u128), u64, u32, timeout, ledger, code, flags)
            for i, d, c, a, p, u128, u64, u32, timeout, ledger, code, flags in data["transfers"]
        ),
        authorization_id=int(data["authorization_id"]),
    )


class MetadataStore:
    def __init__(self, connection: sqlite3.Connection, executor: ThreadPoolExecutor) -> None:
        self._db = connection
        self._executor = executor

    @classmethod
    async def open(cls, path: Path) -> MetadataStore:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metadata-store")

        def connect() -> sqlite3.Connection:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            return db

        connection = await asyncio.get_running_loop().run_in_executor(executor, connect)
        return cls(connection, executor)

    async def _run(self, function: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: function(*args, **kwargs))

    async def close(self) -> None:
        await self._run(self._db.close)
        self._executor.shutdown(wait=True)

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

    async def list_accounts(self, client_id: str, after: str, limit: int, currency: str) -> list[AccountRecord]:
        def query() -> list[AccountRecord]:
            rows = self._db.execute(
                "SELECT * FROM accounts WHERE client_id = ? AND account_id > ? AND (? = '' OR currency = ?) "
                "ORDER BY account_id LIMIT ?",
                (client_id, after, currency, currency, limit),
            ).fetchall()
            return [_account(row) for row in rows]

        return await self._run(query)

    # Transactions.

    async def find_transactions(self, client_id: str, keys: Sequence[str]) -> dict[str, TransactionRecord]:
        def query() -> dict[str, TransactionRecord]:
            found: dict[str, TransactionRecord] = {}
            for start in range(0, len(keys), QUERY_VARIABLES_MAX):
                chunk = keys[start : start + QUERY_VARIABLES_MAX]
                rows = self._db.execute(
                    "SELECT transaction_id, client_id, idempotency_key, fingerprint, body, state, outcome "
                    f"FROM transactions WHERE client_id = ? AND idempotency_key IN ({','.join('?' * len(chunk))})",
                    (client_id, *chunk),
                ).fetchall()
                for row in rows:
                    found[row[2]] = _transaction(row)
            return found

        return await self._run(query)

    async def get_transaction(self, transaction_id: int) -> TransactionRecord | None:
        def query() -> TransactionRecord | None:
            row = self._db.execute(
                "SELECT transaction_id, client_id, idempotency_key, fingerprint, body, state, outcome "
                "FROM transactions WHERE transaction_id = ?",
                (str(transaction_id),),
            ).fetchone()
            return _transaction(row) if row else None

        return await self._run(query)

    async def record_intents(self, transactions: Sequence[MappedTransaction]) -> None:
        """One durable SQLite transaction for the whole batch. Existing rows are kept as they are."""

        def write() -> None:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR IGNORE INTO transactions VALUES (?, ?, ?, ?, ?, 'intent', NULL)",
                    [(str(t.transaction_id), t.client_id, t.idempotency_key, t.fingerprint, _encode_transaction(t))
                     for t in transactions],
                )  # fmt: skip
                self._db.executemany(
                    "INSERT OR IGNORE INTO transfers VALUES (?, ?, ?)",
                    [
                        (str(x.id), str(t.transaction_id), index)
                        for t in transactions
                        for index, x in enumerate(t.transfers)
                    ],
                )

        await self._run(write)

    async def record_outcomes(self, outcomes: Sequence[tuple[int, str, dict[str, object]]]) -> None:
        """(transaction id, 'committed' | 'failed', outcome): one durable SQLite transaction."""

        def write() -> None:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "UPDATE transactions SET state = ?, outcome = ? WHERE transaction_id = ? AND state = 'intent'",
                    [(state, json.dumps(outcome), str(tx_id)) for tx_id, state, outcome in outcomes],
                )

        await self._run(write)

    async def metadata_for(self, transfer_ids: Sequence[int]) -> Mapping[int, entries_pb2.EntryMetadata]:
        """Change capture's MetadataSource: the domain metadata of each transfer that has any."""

        def query() -> dict[int, entries_pb2.EntryMetadata]:
            found: dict[int, entries_pb2.EntryMetadata] = {}
            ids = [str(i) for i in transfer_ids]
            for start in range(0, len(ids), QUERY_VARIABLES_MAX):
                chunk = ids[start : start + QUERY_VARIABLES_MAX]
                rows = self._db.execute(
                    "SELECT x.transfer_id, x.leg_index, t.transaction_id, t.client_id, t.idempotency_key, t.body "
                    "FROM transfers x JOIN transactions t ON t.transaction_id = x.transaction_id "
                    f"WHERE x.transfer_id IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                for transfer_id, leg_index, tx_id, client_id, key, body in rows:
                    data = json.loads(body)
                    m = data["metadata"]
                    found[int(transfer_id)] = entries_pb2.EntryMetadata(
                        transaction_id=format(int(tx_id), "032x"),
                        idempotency_key=key,
                        client_id=client_id,
                        transaction_type=data["kind"],
                        source=m["source"],
                        correlation_id=m["correlation_id"],
                        description=m["description"],
                        labels=m["labels"],
                        currency=data["currency"],
                        leg_index=leg_index,
                    )
            return found

        return await self._run(query)


def _account(row: tuple[str, str, str, str, str, int, str, str]) -> AccountRecord:
    account_id, client_id, reference, currency, owner, type_, metadata, fingerprint = row
    return AccountRecord(
        int(account_id), client_id, reference, currency, owner, type_, json.loads(metadata), fingerprint
    )


def _transaction(row: tuple[str, str, str, str, str, str, str | None]) -> TransactionRecord:
    transaction_id, client_id, key, fingerprint, body, state, outcome = row
    return TransactionRecord(
        _decode_transaction(client_id, key, transaction_id, fingerprint, body),
        state,
        json.loads(outcome) if outcome else None,
    )
