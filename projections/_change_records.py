"""Engine changes → the read model's rows as RowBinary, inserted without SQL to derive them.

The read model's process (projections._process) receives changes in the engine's 128-byte layouts. Printing
five TabSeparated rows per change (~110 columns, a dozen u128s as decimal text) cost ~13 µs a change in Python
and ~15 µs in ClickHouse parsing them back. TigerBeetle's layouts are RowBinary already: a u128 is 16
little-endian bytes in both, and the narrow fields follow in the same widths, so a row is mostly the change's
bytes as they came, concatenated, not formatted.

The rows are in the tables' own columns, in an order chosen so that a transfer's 128 bytes are one run of
columns: `transfer_id, account_id, counterparty_account_id, amount, pending_id, ...` for a debit entry (the
transfer's id, debit, credit, amount, ... as they came), the two account ids swapped for a credit entry, and
`transfer_id, debit_account_id, credit_account_id, ...` for a transaction; an account's balances are its bytes
16-80. Each table gets one `INSERT INTO t (columns) FORMAT RowBinary` with the bytes streamed in
(ChdbClient.insert_binary). An earlier form wrote one record per change to a file and derived both tables' rows
in SQL (`INSERT ... SELECT ... FROM file(...) ARRAY JOIN ...`): ClickHouse's analysis of those two statements
alone took ~18 ms of the calling thread a batch whatever its size, and their pipelines ~55 ms of all threads
for 3,000 changes, against ~2 and ~35-40 ms for these inserts (chDB 4.4, merges stopped). The rows are the
same values as projections._change_rows prints, column for column; tests/projections/test_change_records.py
asserts the tables equal to the text path's.

This is the in-order path only: the batch must lie entirely above every table's high-water mark (no row of
it can be there already). A batch reaching below one (a replay after a restart) goes through
projections._change_rows and the projector's key-by-key de-duplication.
"""

from __future__ import annotations

import hashlib
import struct
from binascii import hexlify
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
    "ENTRIES_INSERT_COLUMNS",
    "INSERT_SETTINGS",
    "RECORDS_CHANGES_MIN",
    "TRANSACTIONS_INSERT_COLUMNS",
    "ChangeRecords",
    "change_records",
]

RECORDS_CHANGES_MIN = 1024
"""The smallest batch that goes as records (the crossover measured above is ~1,200 changes)."""

_HEAD = struct.Struct("<QB")
"""engine_timestamp UInt64, change Enum8 (ledger.v1.EntryChange's value)."""
_LEG_INDEX = struct.Struct("<I")
_TRANSFER_ID = struct.Struct("<QQ112x")
"""A transfer's id (its first 16 bytes, two little-endian u64 halves), for the metadata lookup."""
_SIDES = struct.Struct("<16x16s16s80x")
"""A transfer's debit and credit account ids (bytes 16-48), compared as they came."""
assert _TRANSFER_ID.size == _SIDES.size == EVENT_SIZE

_CHANGES: Mapping[int, int] = {kind.value: ENTRY_CHANGES[kind] for kind in ChangeEventType}
"""Engine change type → EntryChange value (the chain hashes it; the tables' Enum8 has the same values)."""

_TRANSFER_TAIL = (
    "amount", "pending_id", "user_data_128", "user_data_64", "user_data_32", "timeout_seconds", "ledger", "code",
    "transfer_flags", "transfer_timestamp",
)  # fmt: skip
"""A transfer's fields after its id and two account ids, in its 128-byte layout's order (facade.engine.codec)."""
_CHAIN_NAMES = tuple(name for name, _ in schema.CHAIN_COLUMNS)
_METADATA_NAMES = tuple(name for name, _ in schema.METADATA_COLUMNS)
ENTRIES_INSERT_COLUMNS: tuple[str, ...] = (
    "event_id", "engine_timestamp", "change", "side",
    "transfer_id", "account_id", "counterparty_account_id", *_TRANSFER_TAIL,
    "signed_amount", "has_balance_after", *(f"{name}_after" for name, _ in schema.BALANCE_FIELDS),
    *_CHAIN_NAMES, *_METADATA_NAMES,
)  # fmt: skip
"""`entries`' columns in the order of an entry's RowBinary row (`change_records`)."""
TRANSACTIONS_INSERT_COLUMNS: tuple[str, ...] = (
    "engine_timestamp", "change", "transfer_id", "debit_account_id", "credit_account_id", *_TRANSFER_TAIL,
    *_CHAIN_NAMES, *_METADATA_NAMES,
)  # fmt: skip
"""`transactions`' columns in the order of a transaction's RowBinary row."""
assert sorted(ENTRIES_INSERT_COLUMNS) == sorted(name for name, _ in schema.ENTRIES_COLUMNS)
assert sorted(TRANSACTIONS_INSERT_COLUMNS) == sorted(name for name, _ in schema.TRANSACTIONS_COLUMNS)

_ENTRY_HEAD = struct.Struct("<QBB")
"""engine_timestamp UInt64, change Enum8 (ledger.v1.EntryChange's value), side Enum8 (DEBIT 1, CREDIT 2)."""
_DEBIT_SIDE = 1
_CREDIT_SIDE = 2
_CHAIN = struct.Struct(f"<Q{2 * HASH_SIZE}s{2 * HASH_SIZE}s")
"""chain_sequence UInt64, chain_previous_hash and chain_hash FixedString(64): lowercase hex."""
_BALANCES = struct.Struct("<16s64s48x")
"""An account's id and its four balances (debits pending, posted, credits pending, posted) as they came."""
_NO_ID = bytes(16)
_INT256_SIZE = 32
_ZERO_INT256 = bytes(_INT256_SIZE)
_ZERO_INT128 = bytes(_INT256_SIZE - 16)
"""The high half of a non-negative Int256 (a credit's signed_amount: the amount's own 16 bytes, then these)."""
_POSTING = frozenset(ENTRY_CHANGES[kind] for kind in (ChangeEventType.SINGLE_PHASE, ChangeEventType.TWO_PHASE_POSTED))
"""Changes that move posted balances: their entries carry ∓amount as signed_amount, others 0."""
_U128_SIZE = 16
_ID_END = _U128_SIZE
_CREDIT_END = 3 * _U128_SIZE
_AMOUNT_END = 4 * _U128_SIZE


INSERT_SETTINGS = "max_threads = 1, max_insert_threads = 1, optimize_on_insert = 0"
"""One thread: a batch is a few thousand rows; a parallel pipeline's threads cost more to start and join
than they save (measured: ~25 ms of ThreadPool CPU per batch at 350 changes without this).
optimize_on_insert off: ReplacingMergeTree otherwise sorts and collapses each inserted block by key, and an
in-order batch has no two rows with one key (strictly increasing timestamps, debit != credit: asserted in
`change_records`), so that pass could only cost (entries, 3,000 changes, all threads: ~32 -> ~23 ms)."""


@dataclass(frozen=True, slots=True)
class ChangeRecords:
    """A batch of changes as RowBinary rows of `entries` (ENTRIES_INSERT_COLUMNS, two a change) and of
    `transactions` (TRANSACTIONS_INSERT_COLUMNS, one a change), with what the projector keeps about it."""

    entries: bytes
    transactions: bytes
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
    entries: list[bytes] = []
    transactions: list[bytes] = []
    entries_extend, transactions_extend = entries.extend, transactions.extend
    # The chain (ledger_events.chain.next_link_encoded) folded here without a Link per change: the hash of
    # each change over the previous one's, the same canonical bytes (canonical_bytes_encoded).
    sequence, previous_hash, hash_last = previous.sequence, previous.previous_hash, previous.hash
    hex_last = hexlify(hash_last)
    timestamp_last = 0
    entry_head, transaction_head, chain, changes = _ENTRY_HEAD.pack, _HEAD.pack, _CHAIN.pack, _CHANGES
    sha256, canonical_bytes = hashlib.sha256, canonical_bytes_encoded
    encoded: dict[int, tuple[bytes, bytes]] = {
        transfer_id: _metadata_encoded(described) for transfer_id, described in metadata.items()
    }
    no_metadata = (b"", _NO_METADATA)
    transfer_ids = [low | high << 64 for low, high in _TRANSFER_ID.iter_unpack(transfers)] if encoded else None
    sides = _SIDES.iter_unpack(transfers)
    balances = _BALANCES.iter_unpack(accounts)
    posting, one, zero, no_id = _POSTING, b"\x01", b"\x00", _NO_ID
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
        previous_hash, previous_hex = hash_last, hex_last
        hash_last = sha256(previous_hash + canonical_bytes(sequence, timestamp, change, transfer, canonical)).digest()
        hex_last = hexlify(hash_last)
        chained = chain(sequence, previous_hex, hex_last)
        if change in posting:
            amount = int.from_bytes(transfer[_CREDIT_END:_AMOUNT_END], "little")
            debit_signed = (-amount).to_bytes(_INT256_SIZE, "little", signed=True)
            credit_signed = transfer[_CREDIT_END:_AMOUNT_END] + _ZERO_INT128
        else:
            debit_signed = credit_signed = _ZERO_INT256
        event = b"%d" % timestamp
        event_size = _BYTES[len(event) + 2]  # The event id is `<timestamp>:D` or `:C` (below 128 bytes).
        debit_account, debit_balances = next(balances)
        credit_account, credit_balances = next(balances)
        entries_extend(
            (
                event_size,
                event,
                b":D",
                entry_head(timestamp, change, _DEBIT_SIDE),
                transfer,
                debit_signed,
                zero if debit_account == no_id else one,
                debit_balances,
                chained,
                metadata_record,
                event_size,
                event,
                b":C",
                entry_head(timestamp, change, _CREDIT_SIDE),
                transfer[:_ID_END],
                credit_id,
                debit_id,
                transfer[_CREDIT_END:],
                credit_signed,
                zero if credit_account == no_id else one,
                credit_balances,
                chained,
                metadata_record,
            )
        )
        transactions_extend((transaction_head(timestamp, change), transfer, chained, metadata_record))
        offset += EVENT_SIZE
    link = Link(sequence, previous_hash, hash_last)
    assert link.sequence == previous.sequence + count
    batch = ChangeRecords(b"".join(entries), b"".join(transactions), count, timestamps[0], timestamp_last)
    return batch, link
