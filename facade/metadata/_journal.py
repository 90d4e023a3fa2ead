"""The metadata store of the embedded engine: transaction metadata in the engine's own journal.

Why: the SQLite store made every batch pay a second durable write (intents before the engine, failures
after it): random-key B-tree inserts, ~24 KB written and ~46 µs of CPU per transaction. Here a batch's
intents, fingerprints, canonical bodies and outcomes travel in the same journal record as its
transfers (facade.engine.intents: one record kind, `CREATE_TRANSACTIONS`), so one append and one
fdatasync make the batch and its metadata durable together, and a refused transaction's failure is
durable before its caller is answered because it is in that very record. The journal's hash chain,
redundant headers, mirror and `ledger doctor` cover it like every other record.

The index is not stored anywhere: the engine rebuilds it in memory from the journal at every start
(memory bound: facade.engine.intents), so there is no index file that could be lost or stale, and a
deleted metadata file cannot lose a transaction's metadata. Accounts' attributes and the instance
marker stay in the SQLite file (written before the engine, synchronous=FULL, as before): accounts are
created rarely, and the start-up consistency check still refuses a deleted or older SQLite file,
because account attributes live only there.

Crash windows (the batcher's fast path, `submit`): before the append is durable nothing of the batch
exists, so a retry runs it anew; after it, the intent and the outcome exist together, so a retry gets
the original outcome (committed: the engine's `exists` with the original timestamp; refused: the
recorded failure). There is no "intent without outcome" window and so no IDEMPOTENCY_KEY_FAILED
placeholder on this path. The protocol's generic `prepare` and `record_failures` (used by tests and
tools, not by the batcher here) append stand-alone METADATA records.

Transactions recorded by an older build in the SQLite file (before this store existed) are still
found there: read-only, looked up only for ids the journal does not know, and only if any exist.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from operator import attrgetter
from pathlib import Path

from facade.domain.errors import LedgerError, transfer_status_error
from facade.domain.transactions import Kind, LegSpec, MappedTransaction, Metadata, TransactionType, parse_body_summary
from facade.engine.embedded import EmbeddedEngine
from facade.engine.intents import LEG_BITS, IndexEntry, OutcomeKind, TransactionIntent
from facade.engine.types import CreateTransferResult, CreateTransferStatus
from facade.metadata_store import AccountRecord, Prior, StoredTransaction
from facade.metadata_store import MetadataStore as SqliteMetadataStore
from ledger_events.gen.ledger.v1 import entries_pb2

__all__ = ["JournalMetadataStore"]

PLACEHOLDER_REASON = "IDEMPOTENCY_KEY_FAILED"
"""The engine's answer for a burned id whose reason was not recorded: a later original reason replaces it."""
LEG_MASK = (1 << LEG_BITS) - 1
_TYPE_NAMES = {leg_type: leg_type.name.lower() for leg_type in TransactionType}
"""A post leg's transaction_type as parse_body_summary names it (credit, debit, transfer)."""
METADATA_CHUNK = 512
"""Transfers whose metadata `metadata_for` builds per event-loop turn (a few ms)."""
_ENTRY_METADATA = entries_pb2.EntryMetadata
_TRANSACTION_ID = attrgetter("transaction_id")
RECENT_TRANSACTIONS_MAX = 16_384
"""Transactions last submitted whose metadata change capture reads from memory (`metadata_for`): ~1.6 s
at 10,000 tx/s, several capture polls. Older ones are read back from the journal and parsed, as before."""


@dataclass(slots=True)
class _Recent:
    """What change capture's metadata needs of a transaction just made durable: exactly the fields its
    canonical body holds (the body is the MappedTransaction's `body`, encoded from these very values).
    A copy, not the MappedTransaction: its transfers and body would outlive the call by ~16,384
    transactions, three more objects each for the cyclic collector to traverse. Not frozen (written
    once, here, and read only by `metadata_for`): a frozen dataclass's __init__ cost ~0.5 µs each."""

    client_id: str
    idempotency_key: str
    kind: Kind
    currency: str
    legs: tuple[LegSpec, ...]
    metadata: Metadata


def _failure_json(entry: IndexEntry) -> str | None:
    failure = entry.failure
    if failure is None or isinstance(failure, str):
        return failure
    status, leg_index = failure
    return transfer_status_error(CreateTransferStatus(status), leg_index).to_json()


class JournalMetadataStore:
    """Transactions in the embedded engine's journal (in-memory index rebuilt at start); accounts and
    the instance marker in SQLite. Implements facade.metadata.MetadataStore."""

    def __init__(self, sqlite: SqliteMetadataStore, engine: EmbeddedEngine, *, owns_engine: bool, legacy: bool):
        self._sqlite = sqlite
        self.engine = engine
        self._owns_engine = owns_engine
        self._legacy = legacy
        """The SQLite file holds transactions of an older build: ids unknown to the journal are looked up there."""
        self._recent: dict[int, _Recent] = {}
        """Transaction id → its metadata, for the newest RECENT_TRANSACTIONS_MAX durable ones (oldest
        first): change capture reads a change's metadata within a poll or two of its commit, and reading
        it back from the journal and parsing the body JSON cost ~10 µs per transfer on the write path's
        interpreter."""

    @classmethod
    async def open(cls, path: Path, engine: EmbeddedEngine, *, owns_engine: bool = False) -> JournalMetadataStore:
        try:
            sqlite = await SqliteMetadataStore.open(path)
        except BaseException:
            if owns_engine:
                await engine.close()
            raise
        return cls(sqlite, engine, owns_engine=owns_engine, legacy=await sqlite.has_transactions())

    async def close(self) -> None:
        await self._sqlite.close()
        if self._owns_engine:
            await self.engine.close()

    # The instance marker and consistency checks.

    async def instance_marker(self) -> tuple[str, int] | None:
        return await self._sqlite.instance_marker()

    async def put_instance_marker(self, name: str, instance_id: int) -> None:
        await self._sqlite.put_instance_marker(name, instance_id)

    async def has_data(self) -> bool:
        """Whether the SQLite file holds data (accounts, or an older build's transactions). The journal's
        transactions do not count: they cannot be missing apart from the engine's data (they are in the
        same records), and start-up consistency asks this to find a lost or replaced SQLite file."""
        return await self._sqlite.has_data()

    async def known_transfers(self, transfer_ids: Sequence[int]) -> set[int]:
        transfers = self.engine.index.transfers
        found = {i for i in transfer_ids if i in transfers}
        if self._legacy and len(found) < len(transfer_ids):
            found |= await self._sqlite.known_transfers([i for i in transfer_ids if i not in found])
        return found

    # Accounts: SQLite, durable before the engine (as the SQLite store).

    async def put_account(self, record: AccountRecord) -> AccountRecord:
        return await self._sqlite.put_account(record)

    async def get_account(self, account_id: int) -> AccountRecord | None:
        return await self._sqlite.get_account(account_id)

    async def account_owners(self, account_ids: Sequence[int]) -> dict[int, str]:
        return await self._sqlite.account_owners(account_ids)

    async def list_accounts(self, client_id: str, after: str, limit: int, currency: str) -> list[AccountRecord]:
        return await self._sqlite.list_accounts(client_id, after, limit, currency)

    async def accounts_after(self, after: str, limit: int) -> list[AccountRecord]:
        return await self._sqlite.accounts_after(after, limit)

    # Transactions.

    async def priors(self, transactions: Sequence[MappedTransaction]) -> dict[int, Prior]:
        """What is recorded for these transaction ids (no write): the batcher's step 1 on this store."""
        index = self.engine.index.transactions
        found: dict[int, Prior] = {}
        missing: list[MappedTransaction] = []
        for transaction in transactions:
            entry = index.get(transaction.transaction_id)
            if entry is None:
                missing.append(transaction)
            else:
                found[transaction.transaction_id] = Prior(entry.fingerprint, _failure_json(entry))
        if self._legacy and missing:
            found.update(await self._sqlite.lookup_transactions([t.transaction_id for t in missing]))
        assert len(found) <= len(transactions)
        return found

    async def submit(self, transactions: Sequence[MappedTransaction]) -> list[CreateTransferResult]:
        """The batch and the metadata of its transactions without a recorded outcome, in one journal
        append (one fdatasync); each outcome is durable when this returns."""
        # Over C-level iterators (map): a Python comprehension here cost ~0.1 µs a transaction, for each check.
        assert transactions and len(set(map(_TRANSACTION_ID, transactions))) == len(transactions)
        index = self.engine.index.transactions
        transfers = [transfer for t in transactions for transfer in t.transfers]
        intents: list[TransactionIntent] = []
        position = 0
        for transaction in transactions:
            entry = index.get(transaction.transaction_id)
            if entry is None or entry.kind == OutcomeKind.INTENT:
                intents.append(_intent(transaction, transfer_index=position))
            position += len(transaction.transfers)
        results = await self.engine.create_transfers(transfers, intents)
        assert len(results) == len(transfers)
        assert all(map(index.__contains__, map(_TRANSACTION_ID, transactions))), "an outcome not in the index"
        # Durable now. A transaction already recorded has the same body (the batcher submits it only
        # with an equal fingerprint), so its metadata is the journal's either way.
        recent = self._recent
        for start in range(0, len(transactions), METADATA_CHUNK):
            if start:
                await asyncio.sleep(0)  # Durable already; a transaction not yet here is read from the journal.
            for t in transactions[start : start + METADATA_CHUNK]:
                recent[t.transaction_id] = _Recent(
                    t.client_id, t.idempotency_key, t.kind, t.currency, t.legs, t.metadata
                )
        excess = len(recent) - RECENT_TRANSACTIONS_MAX
        if excess > 0:
            for transaction_id in list(islice(recent, excess)):
                del recent[transaction_id]
        assert len(recent) <= RECENT_TRANSACTIONS_MAX
        return results

    async def prepare(self, transactions: Sequence[MappedTransaction]) -> dict[int, Prior]:
        """The protocol's step 1 on its own: priors, and a stand-alone durable intent (a METADATA record)
        for each new transaction. The batcher uses `priors` + `submit` instead (one append)."""
        ids = [t.transaction_id for t in transactions]
        assert len(set(ids)) == len(ids), "transaction ids in one prepare must be distinct"
        found = await self.priors(transactions)
        new = [_intent(t, transfer_index=0, with_ids=True) for t in transactions if t.transaction_id not in found]
        await self.engine.record_metadata(new)
        index = self.engine.index.transactions
        assert all(t.transaction_id in index or t.transaction_id in found for t in transactions)
        return found

    async def record_failures(self, failures: Sequence[tuple[int, str]]) -> None:
        """Failures recorded after the fact (a METADATA record). Final, except the engine's placeholder
        (IDEMPOTENCY_KEY_FAILED), which an original reason replaces: decided here, before writing, so
        replaying the journal gives the same result."""
        assert all(failure for _, failure in failures)
        index = self.engine.index.transactions
        intents: list[TransactionIntent] = []
        legacy: list[tuple[int, str]] = []
        for transaction_id, failure in failures:
            entry = index.get(transaction_id)
            if entry is None:
                legacy.append((transaction_id, failure))
                continue
            current = _failure_json(entry)
            if current is None or (_reason(current) == PLACEHOLDER_REASON and _reason(failure) != PLACEHOLDER_REASON):
                kind = OutcomeKind.FAILURE_TEXT
                intents.append(TransactionIntent(transaction_id, entry.fingerprint, "", "", failure, 0, kind=kind))
        await self.engine.record_metadata(intents)
        assert all(index[intent.transaction_id].failure == intent.text for intent in intents)
        if self._legacy and legacy:
            await self._sqlite.record_failures(legacy)

    async def get_transaction(self, transaction_id: int) -> StoredTransaction | None:
        entry = self.engine.index.transactions.get(transaction_id)
        if entry is None:
            return await self._sqlite.get_transaction(transaction_id) if self._legacy else None
        intent = (await self.engine.read_intents([entry.location]))[entry.location]
        return StoredTransaction(intent.client_id, intent.idempotency_key, intent.text, _failure_json(entry))

    async def metadata_for(self, transfer_ids: Sequence[int]) -> Mapping[int, entries_pb2.EntryMetadata]:
        """Change capture's MetadataSource, from the journal's entries."""
        index = self.engine.index
        recent_get, packed_get, entry_metadata, post = self._recent.get, index.transfers.get, _ENTRY_METADATA, Kind.POST
        legs: list[tuple[int, int, int]] = []  # (transfer id, transaction id, leg index), not in memory
        found: dict[int, entries_pb2.EntryMetadata] = {}
        for position, transfer_id in enumerate(transfer_ids):
            if position and not position % METADATA_CHUNK:
                # Let the calls in flight run: a capture batch's messages built at once held the event loop
                # for tens of ms. What is read stays valid across the yield: the index only grows, and a
                # transaction evicted from `recent` meanwhile is read back from the journal below.
                await asyncio.sleep(0)
            packed = packed_get(transfer_id)
            if packed is None:
                continue
            tx_id, leg_index = packed >> LEG_BITS, packed & LEG_MASK
            known = recent_get(tx_id)
            if known is None:
                legs.append((transfer_id, tx_id, leg_index))
                continue
            metadata = known.metadata
            # Field by field, not keyword arguments: the same message (proto3 strings and ints have no
            # presence: an empty one set or not is the same), ~0.3 µs a change cheaper with upb.
            found[transfer_id] = described = entry_metadata()
            described.transaction_id = tx_id.to_bytes(16, "big").hex()
            described.idempotency_key = known.idempotency_key
            described.client_id = known.client_id
            # As parse_body_summary reads it from the body: the leg's type for posts, else the kind.
            kind = known.kind
            described.transaction_type = _TYPE_NAMES[known.legs[leg_index].type] if kind is post else kind.value
            described.source = metadata.source
            described.correlation_id = metadata.correlation_id
            described.description = metadata.description
            described.currency = known.currency
            described.leg_index = leg_index
            if metadata.labels:  # A map given to the constructor goes through Python's MutableMapping.update.
                described.labels.update(metadata.labels)
        locations = {tx_id: index.transactions[tx_id].location for _, tx_id, _ in legs}
        intents = await self.engine.read_intents(list(locations.values())) if locations else {}
        for position, (transfer_id, tx_id, leg_index) in enumerate(legs):
            if position and not position % METADATA_CHUNK:
                await asyncio.sleep(0)
            intent = intents[locations[tx_id]]
            assert intent.transaction_id == tx_id
            summary = parse_body_summary(intent.text, leg_index)
            metadata = summary.metadata
            found[transfer_id] = described = entries_pb2.EntryMetadata(
                transaction_id=tx_id.to_bytes(16, "big").hex(),
                idempotency_key=intent.idempotency_key,
                client_id=intent.client_id,
                transaction_type=summary.transaction_type,
                source=metadata.source,
                correlation_id=metadata.correlation_id,
                description=metadata.description,
                currency=summary.currency,
                leg_index=leg_index,
            )
            if metadata.labels:
                described.labels.update(metadata.labels)
        if self._legacy and len(found) < len(transfer_ids):
            found.update(await self._sqlite.metadata_for([i for i in transfer_ids if i not in found]))
        return found


def _intent(transaction: MappedTransaction, *, transfer_index: int, with_ids: bool = False) -> TransactionIntent:
    transfers = transaction.transfers
    return TransactionIntent(
        transaction.transaction_id,
        transaction.fingerprint,
        transaction.client_id,
        transaction.idempotency_key,
        transaction.body,
        len(transfers),
        transfer_index,
        tuple(transfer.id for transfer in transfers) if with_ids else (),
    )


def _reason(failure: str) -> str:
    return LedgerError.from_json(failure).reason
