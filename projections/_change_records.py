"""Engine changes → one RowBinary record per change, fanned out into the read model's tables by ClickHouse.

The read model's process (projections._process) receives changes in the engine's 128-byte layouts. Printing
five TabSeparated rows per change (two entries, two balances, a transaction: ~110 columns, a dozen u128s as
decimal text) cost ~13 µs a change in Python and ~15 µs in ClickHouse parsing them back (measured in that
process, chDB 4.4, 2,000 changes a batch); together about half of the process's CPU. TigerBeetle's layouts
are RowBinary already: a u128 is 16 little-endian bytes in both, and the narrow fields follow in the same
widths. So a change's record is its timestamp and change type, the transfer's 128 bytes and the two
accounts' 128 bytes as they came, the chain link (raw hashes) and the metadata strings: concatenated, not
formatted. ClickHouse reads the batch once per table (`INSERT ... SELECT ... FROM file(...)`, RowBinary:
~1 µs a change) and derives the rows in SQL (`_ENTRIES_SELECT` and the rest), the same values as
projections._change_rows prints, column for column; tests/projections/test_process.py asserts the tables
equal to the LedgerEntry path's.

Large batches only (RECORDS_CHANGES_MIN): ClickHouse's fixed cost per statement is higher for an
`INSERT ... SELECT` over a file than for an inline TabSeparated insert (~24 against ~18 ms a batch of ten
changes, all threads), so below ~1,200 changes the text path costs less in all (350 changes: 50 against
33 ms a batch; 4,000: 115 against 172 ms; chDB 4.4 in the read model's process, merges included).

This is the in-order path only: the batch must lie entirely above every table's high-water mark (no row of
it can be there already). A batch reaching below one (a replay after a restart) goes through
projections._change_rows and the projector's key-by-key de-duplication.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring as _json

from facade.engine.codec import EVENT_SIZE
from facade.engine.types import ChangeEventType
from ledger_events.chain import HASH_SIZE, Link, canonical_bytes_encoded
from ledger_events.entries import ENTRY_CHANGES
from ledger_events.gen.ledger.v1 import entries_pb2
from projections import schema

__all__ = [
    "ENTRIES_INSERT",
    "RECORDS_CHANGES_MIN",
    "STRUCTURE",
    "TRANSACTIONS_INSERT",
    "ChangeRecords",
    "change_records",
]

RECORDS_CHANGES_MIN = 1024
"""The smallest batch that goes as records (the crossover measured above is ~1,200 changes)."""

_HEAD = struct.Struct("<QB")
"""engine_timestamp UInt64, change Enum8 (ledger.v1.EntryChange's value)."""
_CHAIN = struct.Struct(f"<Q{HASH_SIZE}s{HASH_SIZE}s")
_LEG_INDEX = struct.Struct("<I")
_TRANSFER_ID = struct.Struct("<QQ112x")
"""A transfer's id (its first 16 bytes, two little-endian u64 halves), for the metadata lookup."""
_SIDES = struct.Struct("<16x16s16s80x")
"""A transfer's debit and credit account ids (bytes 16-48), compared as they came."""
assert _TRANSFER_ID.size == _SIDES.size == EVENT_SIZE

_CHANGES: Mapping[int, int] = {kind.value: ENTRY_CHANGES[kind] for kind in ChangeEventType}
"""Engine change type → EntryChange value (the chain hashes it; the tables' Enum8 has the same values)."""

_FIXED_FIELDS = (
    "transfer_id UInt128, debit_account_id UInt128, credit_account_id UInt128, amount UInt128, pending_id UInt128, "
    "user_data_128 UInt128, user_data_64 UInt64, user_data_32 UInt32, timeout_seconds UInt32, ledger UInt32, "
    "code UInt16, transfer_flags UInt16, transfer_timestamp UInt64"
)
"""The transfer's 128 bytes (facade.engine.codec's layout) read as RowBinary."""


def _account_fields(prefix: str) -> str:
    """An account's 128 bytes read as RowBinary (only the id and the four balances are used)."""
    return (
        f"{prefix}_id UInt128, {prefix}_debits_pending UInt128, {prefix}_debits_posted UInt128, "
        f"{prefix}_credits_pending UInt128, {prefix}_credits_posted UInt128, {prefix}_user_data_128 UInt128, "
        f"{prefix}_user_data_64 UInt64, {prefix}_user_data_32 UInt32, {prefix}_reserved UInt32, "
        f"{prefix}_ledger UInt32, {prefix}_code UInt16, {prefix}_flags UInt16, {prefix}_timestamp UInt64"
    )


_METADATA_STRUCTURE = ", ".join(f"{name} {kind}" for name, kind in schema.METADATA_COLUMNS).replace(
    "LowCardinality(String)", "String"
)
STRUCTURE = (
    f"engine_timestamp UInt64, change {schema.CHANGE_ENUM}, {_FIXED_FIELDS}, {_account_fields('d')}, "
    f"{_account_fields('c')}, chain_sequence UInt64, chain_previous_raw FixedString({HASH_SIZE}), "
    f"chain_raw FixedString({HASH_SIZE}), {_METADATA_STRUCTURE}"
)
"""One change's record, in `change_records`' byte order."""

_SOURCE = "file({path:String}, 'RowBinary', {structure:String})"
"""The batch's file, bound as parameters (the path comes from the settings, the structure is STRUCTURE)."""
_TRANSFER = (
    "transfer_id, pending_id, ledger, code, transfer_flags, user_data_128, user_data_64, user_data_32, "
    "timeout_seconds, transfer_timestamp"
)
_CHAIN_SELECT = "chain_sequence, lower(hex(chain_previous_raw)), lower(hex(chain_raw))"
_METADATA_SELECT = ", ".join(name for name, _ in schema.METADATA_COLUMNS)
_DEBIT_SIDE = "side_number = 1"
_POSTING = "change IN ('SINGLE_PHASE', 'TWO_PHASE_POSTED')"


def _side(debit: str, credit: str) -> str:
    return f"if({_DEBIT_SIDE}, {debit}, {credit})"


_ENTRIES_SELECT = (
    f"SELECT concat(toString(engine_timestamp), if({_DEBIT_SIDE}, ':D', ':C')), engine_timestamp, change, "
    f"if({_DEBIT_SIDE}, 'DEBIT', 'CREDIT'), {_side('debit_account_id', 'credit_account_id')}, "
    f"{_side('credit_account_id', 'debit_account_id')}, amount, "
    f"if({_POSTING}, if({_DEBIT_SIDE}, -toInt256(amount), toInt256(amount)), toInt256(0)), {_TRANSFER}, "
    f"{_side('d_id', 'c_id')} != 0, "
    + ", ".join(_side(f"d_{name}", f"c_{name}") for name, _ in schema.BALANCE_FIELDS)
    + f", {_CHAIN_SELECT}, {_METADATA_SELECT} FROM {_SOURCE} ARRAY JOIN [1, 2] AS side_number"
)
_TRANSACTIONS_SELECT = (
    f"SELECT engine_timestamp, change, debit_account_id, credit_account_id, amount, {_TRANSFER}, {_CHAIN_SELECT}, "
    f"{_METADATA_SELECT} FROM {_SOURCE}"
)


_INSERT_SETTINGS = "max_threads = 1, max_insert_threads = 1, optimize_on_insert = 0"
"""One thread: a batch is a few thousand rows; a parallel pipeline's threads cost more to start and join
than they save (measured: ~25 ms of ThreadPool CPU per batch at 350 changes without this).
optimize_on_insert off: ReplacingMergeTree otherwise sorts and collapses each inserted block by key, and an
in-order batch has no two rows with one key (strictly increasing timestamps, debit != credit: asserted in
`change_records`), so that pass could only cost (entries, 3,000 changes, all threads: ~32 -> ~23 ms)."""


def _insert(table: str, columns: tuple[tuple[str, str], ...], select: str) -> str:
    return f"INSERT INTO {table} ({', '.join(name for name, _ in columns)}) {select} SETTINGS {_INSERT_SETTINGS}"


ENTRIES_INSERT = _insert("entries", schema.ENTRIES_COLUMNS, _ENTRIES_SELECT)
TRANSACTIONS_INSERT = _insert("transactions", schema.TRANSACTIONS_COLUMNS, _TRANSACTIONS_SELECT)
"""Entries, transactions: the projector's insert order (transactions last: resume_checkpoint); `balances` is
a view over entries (projections.schema)."""


@dataclass(frozen=True, slots=True)
class ChangeRecords:
    """A batch of changes as RowBinary records (STRUCTURE), with what the projector keeps about it."""

    data: bytes
    count: int
    timestamp_min: int
    timestamp_max: int


def _varint(value: int) -> bytes:
    """RowBinary's length prefix (unsigned LEB128)."""
    if value < 0x80:
        return _BYTES[value]
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_BYTES = tuple(bytes((value,)) for value in range(0x80))


def _string(value: str) -> bytes:
    data = value.encode()
    size = len(data)
    return (_BYTES[size] if size < 0x80 else _varint(size)) + data


_NO_METADATA = b"\x00" + b"\x00" * 7 + b"\x00" + b"\x00" + _LEG_INDEX.pack(0)
"""has_metadata false, seven empty strings, an empty map, an empty currency, leg_index 0."""
_EMPTY_MAP = b"\x00"
_HAS_METADATA = b"\x01"


def _metadata_encoded(metadata: entries_pb2.EntryMetadata) -> tuple[bytes, bytes]:
    """The metadata's canonical bytes (what the chain hashes: ledger_events.entries.metadata_bytes, byte for
    byte) and its RowBinary record, from one read of its fields: reading a field of a parsed message costs
    about as much as encoding it, and both forms need every field (tests/projections/test_change_records.py
    asserts both against their definitions)."""
    m = metadata
    transaction_id, idempotency_key, client_id = m.transaction_id, m.idempotency_key, m.client_id
    transaction_type, source, correlation_id = m.transaction_type, m.source, m.correlation_id
    description, currency, leg_index, labels = m.description, m.currency, m.leg_index, m.labels
    if labels:
        # The chain hashes the labels sorted by key; the record keeps the map's own order (the text path's).
        pairs = list(labels.items())
        labels_json = "{" + ",".join(f"{_json(key)}:{_json(value)}" for key, value in sorted(pairs)) + "}"
        labels_record = _varint(len(pairs)) + b"".join(_string(key) + _string(value) for key, value in pairs)
    else:
        labels_json, labels_record = "{}", _EMPTY_MAP
    canonical = (
        f'{{"client_id":{_json(client_id)},"correlation_id":{_json(correlation_id)},'
        f'"currency":{_json(currency)},"description":{_json(description)},'
        f'"idempotency_key":{_json(idempotency_key)},"labels":{labels_json},"leg_index":{leg_index},'
        f'"source":{_json(source)},"transaction_id":{_json(transaction_id)},'
        f'"transaction_type":{_json(transaction_type)}}}'
    ).encode()
    string = _string
    record = b"".join(
        (
            _HAS_METADATA,
            string(transaction_id),
            string(idempotency_key),
            string(client_id),
            string(transaction_type),
            string(source),
            string(correlation_id),
            string(description),
            labels_record,
            string(currency),
            _LEG_INDEX.pack(leg_index),
        )
    )
    return canonical, record


def change_records(  # noqa: PLR0913  The columns of a batch as the read model's process receives them.
    timestamps: Sequence[int],
    kinds: Sequence[int],
    transfers: bytes,
    accounts: bytes,
    metadata: Mapping[int, entries_pb2.EntryMetadata],
    previous: Link,
) -> tuple[ChangeRecords, Link]:
    """The batch's records (in commit order) and the chain's new head: the same link as
    projections._change_rows computes (ledger_events.chain over the transfer's bytes as they came)."""
    count = len(timestamps)
    assert count > 0
    assert len(kinds) == count and len(transfers) == EVENT_SIZE * count and len(accounts) == 2 * EVENT_SIZE * count
    records: list[bytes] = []
    append = records.append
    # The chain (ledger_events.chain.next_link_encoded) folded here without a Link per change: the hash of
    # each change over the previous one's, the same canonical bytes (canonical_bytes_encoded).
    sequence, previous_hash, hash_last = previous.sequence, previous.previous_hash, previous.hash
    timestamp_last = 0
    head, chain, changes, sha256, canonical_bytes = (
        _HEAD.pack,
        _CHAIN.pack,
        _CHANGES,
        hashlib.sha256,
        canonical_bytes_encoded,
    )
    encoded: dict[int, tuple[bytes, bytes]] = {
        transfer_id: _metadata_encoded(described) for transfer_id, described in metadata.items()
    }
    no_metadata = (b"", _NO_METADATA)
    transfer_ids = [low | high << 64 for low, high in _TRANSFER_ID.iter_unpack(transfers)] if encoded else None
    sides = _SIDES.iter_unpack(transfers)
    offset = 0
    for index, (timestamp, kind) in enumerate(zip(timestamps, kinds, strict=True)):
        assert timestamp > timestamp_last, "changes in commit order"
        timestamp_last = timestamp
        debit_id, credit_id = next(sides)
        # TigerBeetle's rule (accounts_must_be_different): an entry's key (account, timestamp) is unique.
        assert debit_id != credit_id, "debit = credit account"
        transfer = transfers[offset : offset + EVENT_SIZE]
        canonical, metadata_record = (
            encoded.get(transfer_ids[index], no_metadata) if transfer_ids is not None else no_metadata
        )
        change = changes[kind]
        sequence += 1
        previous_hash = hash_last
        hash_last = sha256(previous_hash + canonical_bytes(sequence, timestamp, change, transfer, canonical)).digest()
        append(head(timestamp, change))
        append(transfer)
        append(accounts[2 * offset : 2 * offset + 2 * EVENT_SIZE])  # The debit then the credit account.
        append(chain(sequence, previous_hash, hash_last))
        append(metadata_record)
        offset += EVENT_SIZE
    link = Link(sequence, previous_hash, hash_last)
    assert link.sequence == previous.sequence + count
    batch = ChangeRecords(b"".join(records), count, timestamps[0], timestamp_last)
    return batch, link
