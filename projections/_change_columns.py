"""Engine changes → the read model's rows as ClickHouse Native blocks: column by column, no SQL to derive them.

The read model's process (projections._process) receives changes in the engine's 128-byte layouts
(facade.engine.codec): TigerBeetle's layouts are ClickHouse's binary forms already (a u128 is 16
little-endian bytes in both, the narrow fields follow in the same widths), so most of a column is a slice of
every change's bytes, taken for the whole batch at once (numpy) rather than change by change. Python walks the
changes once, for what is sequential or variable: the audit chain (sha256 over the previous hash), the
metadata's canonical bytes and strings, the event ids. Each table gets one `INSERT INTO t (columns)` with its
block streamed in (ChdbClient.insert_binary).

Why Native rather than rows: ClickHouse parses a RowBinary row value by value (an entry is ~40 of them), ~11
ms of all threads for 3,000 changes' entries against ~4 for the same rows as Native columns (chDB 4.4, merges
stopped); and before that, one record per change staged in a file with both tables' rows derived in SQL
(`INSERT ... SELECT ... FROM file(...) ARRAY JOIN`) cost ~18 ms a batch of the calling thread in analysis
alone, whatever the batch's size. The values are the ones projections._change_rows prints, column for column:
tests/projections/test_change_records.py asserts the tables equal to the text path's.

Entries are written all debit sides, then all credit sides (a table sorts each insert by its key anyway), so an
entries column is its debit half then its credit half, and the metadata's columns are the changes' column
twice. LowCardinality columns are sent as String (ClickHouse converts them on insert).

This is the in-order path only: the batch must lie entirely above every table's high-water mark (no row of
it can be there already). A batch reaching below one (a replay after a restart) goes through
projections._change_rows and the projector's key-by-key de-duplication.
"""

from __future__ import annotations

import hashlib
import operator
from binascii import hexlify
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring as _json
from typing import NamedTuple

import numpy as np
import numpy.typing as npt  # numpy: a dependency of chDB's (pandas, pyarrow); declared in pyproject.toml too.

from facade.engine.codec import EVENT_SIZE
from facade.engine.types import ChangeEventType
from ledger_events.chain import Link, canonical_bytes_encoded
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

RECORDS_CHANGES_MIN = 1
"""The smallest in-order batch that goes as Native blocks: any. The file-and-SQL form this replaced paid more
per statement than a TabSeparated insert and took only batches of 1,024 changes or more; Native blocks cost less
at every size measured (scripts/bench_read_model_process.py, µs CPU a change, text against Native: 20-change
batches 1,191 / 1,154, 200: 167 / 129, 700 at 1,400 changes/s: 71-72 / 50-51; chDB 4.4)."""

INSERT_SETTINGS = "max_threads = 1, max_insert_threads = 1, optimize_on_insert = 0"
"""One thread: a batch is a few thousand rows; a parallel pipeline's threads cost more to start and join
than they save (measured: ~25 ms of ThreadPool CPU per batch at 350 changes without this).
optimize_on_insert off: ReplacingMergeTree otherwise sorts and collapses each inserted block by key, and an
in-order batch has no two rows with one key (strictly increasing timestamps, debit != credit: asserted in
`change_records`), so that pass could only cost (entries, 3,000 changes, all threads: ~32 -> ~23 ms)."""

ENTRIES_INSERT_COLUMNS: tuple[str, ...] = tuple(name for name, _ in schema.ENTRIES_COLUMNS)
TRANSACTIONS_INSERT_COLUMNS: tuple[str, ...] = tuple(name for name, _ in schema.TRANSACTIONS_COLUMNS)
"""The columns of each table's block, in the tables' own order."""

_CHANGES: Mapping[int, int] = {kind.value: ENTRY_CHANGES[kind] for kind in ChangeEventType}
"""Engine change type → EntryChange value (the chain hashes it; the tables' Enum8 has the same values)."""
_POSTING = [ENTRY_CHANGES[kind] for kind in (ChangeEventType.SINGLE_PHASE, ChangeEventType.TWO_PHASE_POSTED)]
"""Changes that move posted balances: their entries carry ∓amount as signed_amount, others 0."""
_DEBIT_SIDE = 1
_CREDIT_SIDE = 2

_TRANSFER_FIELDS: Mapping[str, tuple[int, int]] = {
    "transfer_id": (0, 16),
    "debit_account_id": (16, 32),
    "credit_account_id": (32, 48),
    "amount": (48, 64),
    "pending_id": (64, 80),
    "user_data_128": (80, 96),
    "user_data_64": (96, 104),
    "user_data_32": (104, 108),
    "timeout_seconds": (108, 112),
    "ledger": (112, 116),
    "code": (116, 118),
    "transfer_flags": (118, 120),
    "transfer_timestamp": (120, 128),
}
"""Byte ranges of a transfer's 128 bytes (facade.engine.codec's layout), by column name."""
_ACCOUNT_ID = (0, 16)
_BALANCE_RANGES: Mapping[str, tuple[int, int]] = {
    "debits_pending": (16, 32),
    "debits_posted": (32, 48),
    "credits_pending": (48, 64),
    "credits_posted": (64, 80),
}
"""Byte ranges of an account's balances in its 128 bytes."""
assert tuple(_BALANCE_RANGES) == tuple(name for name, _ in schema.BALANCE_FIELDS)

_STRING_FIELDS = (
    "transaction_id",
    "idempotency_key",
    "client_id",
    "transaction_type",
    "source",
    "correlation_id",
    "description",
    "currency",
)
"""The metadata's string columns (schema.METADATA_COLUMNS' strings), in `_MetadataValues`' order."""
assert set(_STRING_FIELDS) | {"has_metadata", "labels", "leg_index"} == {name for name, _ in schema.METADATA_COLUMNS}

_BYTES = tuple(bytes((value,)) for value in range(0x80))
_EMPTY_STRING = b"\x00"


def _varint(value: int) -> bytes:
    """A length prefix (unsigned LEB128), as Native strings and block headers carry it."""
    if value < 0x80:
        return _BYTES[value]
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(value: str) -> bytes:
    data = value.encode()
    size = len(data)
    return (_BYTES[size] if size < 0x80 else _varint(size)) + data


class _MetadataValues(NamedTuple):
    """A change's metadata as its columns' values (a NamedTuple: one is built per change, and a frozen
    dataclass's construction cost as much as reading the message's fields)."""

    has: int
    strings: tuple[str, ...]
    """One per _STRING_FIELDS, as they are (encoded column by column: `_strings_column`)."""
    labels_count: int
    label_keys: bytes
    """The map's keys as a Native String column's values, in the map's order; `label_values` likewise."""
    label_values: bytes
    leg_index: int


_NO_METADATA = (b"", _MetadataValues(0, ("",) * len(_STRING_FIELDS), 0, b"", b"", 0))
"""No canonical bytes (the chain hashes size 0), has_metadata false, empty strings and map, leg_index 0."""


def _metadata_encoded(metadata: entries_pb2.EntryMetadata) -> tuple[bytes, _MetadataValues]:
    """The metadata's canonical bytes (what the chain hashes: ledger_events.entries.metadata_bytes, byte for
    byte) and its columns' values, from one read of its fields: reading a field of a parsed message costs about
    as much as encoding it, and both forms need every field (tests/projections/test_change_records.py asserts
    the chain and the rows against their definitions)."""
    m = metadata
    transaction_id, idempotency_key, client_id = m.transaction_id, m.idempotency_key, m.client_id
    transaction_type, source, correlation_id = m.transaction_type, m.source, m.correlation_id
    description, currency, leg_index, labels = m.description, m.currency, m.leg_index, m.labels
    if labels:
        # The chain hashes the labels sorted by key; the map keeps its own order (the text path's).
        pairs = list(labels.items())
        labels_json = "{" + ",".join(f"{_json(key)}:{_json(value)}" for key, value in sorted(pairs)) + "}"
        keys = b"".join(_string(key) for key, _ in pairs)
        values = b"".join(_string(value) for _, value in pairs)
    else:
        pairs, labels_json, keys, values = [], "{}", b"", b""
    canonical = (
        f'{{"client_id":{_json(client_id)},"correlation_id":{_json(correlation_id)},'
        f'"currency":{_json(currency)},"description":{_json(description)},'
        f'"idempotency_key":{_json(idempotency_key)},"labels":{labels_json},"leg_index":{leg_index},'
        f'"source":{_json(source)},"transaction_id":{_json(transaction_id)},'
        f'"transaction_type":{_json(transaction_type)}}}'
    ).encode()
    strings = (
        transaction_id,
        idempotency_key,
        client_id,
        transaction_type,
        source,
        correlation_id,
        description,
        currency,
    )
    return canonical, _MetadataValues(1, strings, len(pairs), keys, values, leg_index)


_DISTINCT_SHARE_MAX = 4
"""A column with at most one distinct value in this many (a client, a type, a source, a currency) is encoded
once per distinct value: a set and a lookup per value cost less than encoding every value."""


def _strings_column(values: Sequence[str]) -> bytes:
    """A Native String column: each value's UTF-8 length (LEB128) and bytes. Built with C-level maps over
    the whole column: a Python call per value cost ~3x as much."""
    distinct = set(values)
    if len(distinct) * _DISTINCT_SHARE_MAX <= len(values):
        encoded_distinct = {value: _string(value) for value in distinct}
        return b"".join(map(encoded_distinct.__getitem__, values))
    encoded = list(map(str.encode, values))
    try:
        prefixes = list(map(_BYTES.__getitem__, map(len, encoded)))
    except IndexError:  # A value of 128 bytes or more: its length takes more than one byte.
        prefixes = list(map(_varint, map(len, encoded)))
    return b"".join(map(operator.add, prefixes, encoded))


@dataclass(frozen=True, slots=True)
class ChangeRecords:
    """A batch of changes as one Native block of `entries` (two rows a change) and one of `transactions`
    (one a change), with what the projector keeps about it."""

    entries: bytes
    transactions: bytes
    count: int
    timestamp_min: int
    timestamp_max: int


_Bytes2D = npt.NDArray[np.uint8]


def _block(columns: Sequence[tuple[str, str, Sequence[bytes]]], rows: int) -> bytes:
    """A Native block: column and row counts, then each column's name, type and data (its pieces, joined
    once here: a column of entries is often the same piece twice, and copying it into one first cost ~5%)."""
    parts = [_varint(len(columns)), _varint(rows)]
    for name, kind, pieces in columns:
        parts.append(_string(name))
        parts.append(_string(kind))
        parts.extend(pieces)
    return b"".join(parts)


def _native_type(kind: str) -> str:
    """The type a column's data is sent as: LowCardinality's own serialization is a dictionary; its
    values as String convert on insert."""
    return "String" if kind == "LowCardinality(String)" else kind


def _int256_signed(amounts: _Bytes2D, posting: npt.NDArray[np.bool_], *, negative: bool) -> bytes:
    """Int256 little-endian of +amount or -amount (two's complement) where `posting`, 0 elsewhere."""
    limbs = np.ascontiguousarray(amounts).view("<u8").reshape(-1, 2)
    low, high = limbs[:, 0], limbs[:, 1]
    out = np.zeros((len(limbs), 4), dtype="<u8")
    if negative:
        # -x = ~x + 1 across the four 64-bit limbs of (low, high, 0, 0); the carry moves up while limbs are 0.
        low_zero = low == 0
        both_zero = low_zero & (high == 0)
        out[:, 0] = ~low + np.uint64(1)
        out[:, 1] = ~high + low_zero.astype("<u8")
        out[:, 2] = np.where(both_zero, np.uint64(0), np.uint64(0xFFFF_FFFF_FFFF_FFFF))
        out[:, 3] = out[:, 2]
    else:
        out[:, 0], out[:, 1] = low, high
    out[~posting] = 0
    return out.tobytes()


def change_records(  # noqa: PLR0913  The columns of a batch as the read model's process receives them.
    timestamps: Sequence[int],
    kinds: Sequence[int],
    transfers: bytes,
    accounts: bytes,
    metadata: Mapping[int, entries_pb2.EntryMetadata],
    previous: Link,
) -> tuple[ChangeRecords, Link]:
    """The batch's blocks (in commit order) and the chain's new head: the same link as
    projections._change_rows computes (ledger_events.chain over the transfer's bytes as they came)."""
    count = len(timestamps)
    assert count > 0
    assert len(kinds) == count and len(transfers) == EVENT_SIZE * count and len(accounts) == 2 * EVENT_SIZE * count
    transfer_bytes: _Bytes2D = np.frombuffer(transfers, dtype=np.uint8).reshape(count, EVENT_SIZE)
    account_bytes: _Bytes2D = np.frombuffer(accounts, dtype=np.uint8).reshape(count, 2, EVENT_SIZE)
    timestamp_array = np.array(timestamps, dtype="<u8")
    assert timestamp_array[0] > 0 and bool(np.all(timestamp_array[1:] > timestamp_array[:-1])), "commit order"
    debit_ids = transfer_bytes[:, 16:32]
    credit_ids = transfer_bytes[:, 32:48]
    # TigerBeetle's rule (accounts_must_be_different): an entry's key (account, timestamp) is unique.
    assert not bool(np.any(np.all(debit_ids == credit_ids, axis=1))), "debit = credit account"

    encoded = {transfer_id: _metadata_encoded(described) for transfer_id, described in metadata.items()}
    ids = np.ascontiguousarray(transfer_bytes[:, 0:16]).view("<u8").reshape(count, 2)
    transfer_ids = [int(low) | int(high) << 64 for low, high in ids.tolist()] if encoded else None
    # The chain (ledger_events.chain.next_link_encoded) folded here without a Link per change: the hash of
    # each change over the previous one's, the same canonical bytes (canonical_bytes_encoded).
    sequence, previous_hash, hash_last = previous.sequence, previous.previous_hash, previous.hash
    hexes = [hexlify(hash_last)]
    described_rows: list[_MetadataValues] = []
    debit_events: list[bytes] = []
    credit_events: list[bytes] = []
    change_values: list[int] = []
    sha256, canonical_bytes, changes, no_metadata = hashlib.sha256, canonical_bytes_encoded, _CHANGES, _NO_METADATA
    for index, (timestamp, kind) in enumerate(zip(timestamps, kinds, strict=True)):
        canonical, values = encoded.get(transfer_ids[index], no_metadata) if transfer_ids is not None else no_metadata
        change = changes[kind]
        change_values.append(change)
        sequence += 1
        offset = index * EVENT_SIZE
        transfer = transfers[offset : offset + EVENT_SIZE]
        previous_hash = hash_last
        hash_last = sha256(previous_hash + canonical_bytes(sequence, timestamp, change, transfer, canonical)).digest()
        hexes.append(hexlify(hash_last))
        described_rows.append(values)
        event = b"%d" % timestamp
        size = _BYTES[len(event) + 2]  # `<timestamp>:D` is at most 22 bytes: a one-byte length.
        debit_events.append(size + event + b":D")
        credit_events.append(size + event + b":C")
    link = Link(sequence, previous_hash, hash_last)
    assert link.sequence == previous.sequence + count

    # The columns every table shares, for one row per change.
    changes_array = np.array(change_values, dtype="<i1")
    shared: dict[str, bytes] = {
        "engine_timestamp": timestamp_array.tobytes(),
        "change": changes_array.tobytes(),
        "chain_sequence": np.arange(previous.sequence + 1, sequence + 1, dtype="<u8").tobytes(),
        "chain_previous_hash": b"".join(hexes[:-1]),
        "chain_hash": b"".join(hexes[1:]),
        "has_metadata": bytes(values.has for values in described_rows),
        "leg_index": np.array([values.leg_index for values in described_rows], dtype="<u4").tobytes(),
    }
    for name, column in zip(
        _STRING_FIELDS, zip(*[values.strings for values in described_rows], strict=True), strict=True
    ):
        shared[name] = _strings_column(column)
    labels_offsets = np.cumsum([values.labels_count for values in described_rows], dtype="<u8")
    label_keys = b"".join([values.label_keys for values in described_rows])
    label_values = b"".join([values.label_values for values in described_rows])
    shared["labels"] = labels_offsets.tobytes() + label_keys + label_values
    for name, (start, end) in _TRANSFER_FIELDS.items():
        shared[name] = transfer_bytes[:, start:end].tobytes()

    transactions = _block(
        [(name, _native_type(column_kind), (shared[name],)) for name, column_kind in schema.TRANSACTIONS_COLUMNS],
        count,
    )

    # Entries: the debit sides, then the credit sides.
    posting = np.isin(changes_array, _POSTING)
    amounts = transfer_bytes[:, 48:64]
    debit_accounts, credit_accounts = account_bytes[:, 0, :], account_bytes[:, 1, :]
    labels_total = labels_offsets[-1] if count else np.uint64(0)
    entries_data: dict[str, bytes] = {
        "event_id": b"".join(debit_events) + b"".join(credit_events),
        "side": bytes([_DEBIT_SIDE]) * count + bytes([_CREDIT_SIDE]) * count,
        "account_id": debit_ids.tobytes() + credit_ids.tobytes(),
        "counterparty_account_id": credit_ids.tobytes() + debit_ids.tobytes(),
        "signed_amount": _int256_signed(amounts, posting, negative=True)
        + _int256_signed(amounts, posting, negative=False),
        "has_balance_after": (
            np.any(debit_accounts[:, slice(*_ACCOUNT_ID)] != 0, axis=1).astype(np.uint8).tobytes()
            + np.any(credit_accounts[:, slice(*_ACCOUNT_ID)] != 0, axis=1).astype(np.uint8).tobytes()
        ),
        "labels": labels_offsets.tobytes()
        + (labels_offsets + labels_total).tobytes()
        + label_keys
        + label_keys
        + label_values
        + label_values,
    }
    for name, (start, end) in _BALANCE_RANGES.items():
        entries_data[f"{name}_after"] = debit_accounts[:, start:end].tobytes() + credit_accounts[:, start:end].tobytes()
    columns: list[tuple[str, str, Sequence[bytes]]] = []
    for name, column_kind in schema.ENTRIES_COLUMNS:
        data = entries_data.get(name)
        # Else the same value on both sides of a change.
        pieces = (data,) if data is not None else (shared[name], shared[name])
        columns.append((name, _native_type(column_kind), pieces))
    entries = _block(columns, 2 * count)
    batch = ChangeRecords(entries, transactions, count, timestamps[0], timestamps[-1])
    return batch, link
