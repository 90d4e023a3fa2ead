"""Transaction metadata in the engine's journal: the section a record carries after its transfers, and
the in-memory index rebuilt from it at every start.

Why here: on the embedded engine, a transaction's idempotency intent (client, key, fingerprint, canonical
body) and its outcome travel in the same journal record as its transfers, so one fdatasync makes both
durable (no separate metadata store write, no random-key B-tree inserts). A record kind either carries
the transfers *and* the metadata of the transactions that were new (`CREATE_TRANSACTIONS`), or only
metadata (`METADATA`: a stand-alone intent or recorded failure, the protocol's generic path).

Section layout (little-endian), after the record's `count * 128` transfer bytes:

    entries u32
    entry*:
        transaction_id u128, fingerprint [16]u8,
        transfer_index u32      first leg's position among the record's transfers (CREATE_TRANSACTIONS)
        transfer_count u32      legs of the transaction
        kind u8, reserved [3]u8 OutcomeKind
        failure_status u32      FAILED: the engine status of the failing leg (CreateTransferStatus)
        failure_index u32       FAILED: that leg's index in the transaction
        client_len u16, key_len u16, text_len u32
        client [client_len]u8, key [key_len]u8, text [text_len]u8 (UTF-8)
        transfer ids [transfer_count]u128   METADATA records only (CREATE_TRANSACTIONS: the transfers
                                            section holds them)

`text` is the canonical body, except for FAILURE_TEXT entries (a failure recorded after the fact:
LedgerError JSON). The outcome of a CREATE_TRANSACTIONS entry is computed by the engine from the
batch's results before the record is encoded, so a refused transaction's failure is as durable as a
committed one's transfers, in the same write.

Index memory (`TransactionIndex`): one entry per transaction (fingerprint, outcome, the byte offset of
its journal entry: client, key and body stay on disk and are read back on demand) and one int per
transfer: about 430 B per two-leg transaction in CPython 3.11 (tracemalloc over 100,000 entries,
including the id ints the dicts keep alive). It grows with the journal, as the engine's own state does
(the embedded engine keeps every account and transfer in memory and replays the whole journal at
start), so the journal's size bounds both; rebuilding it is part of that replay.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from facade.engine.codec import EVENT_SIZE
from facade.engine.types import BATCH_EVENTS_MAX, CreateTransferResult, CreateTransferStatus

__all__ = [
    "ENTRY",
    "LEG_BITS",
    "METADATA_SECTION_SIZE_MAX",
    "READ_SPAN_BYTES_MAX",
    "READ_TAIL_BYTES",
    "TEXT_SIZE_MAX",
    "IndexEntry",
    "OutcomeKind",
    "TransactionIndex",
    "TransactionIntent",
    "decode_section",
    "encode_section",
    "outcomes",
    "read_entries",
    "read_entry",
]

ENTRY = struct.Struct("<16s16sIIB3xIIHHI")
SECTION_HEADER = struct.Struct("<I")
TEXT_SIZE_MAX = 1 << 20
"""Bytes of one entry's text (a canonical body is a few KB at most: 16 legs, 16 labels, 512 B text)."""
LEG_BITS = 8
"""The index packs a transfer's (transaction id, leg index) as `id << LEG_BITS | leg` (LEGS_MAX is 16)."""
METADATA_SECTION_SIZE_MAX = 128 << 20
"""Bytes of one record's metadata section: BATCH_EVENTS_MAX one-leg transactions of maximal bodies (~6 KB:
16 labels of 2 x 128 B, 512 B of description) fit twice over."""


class OutcomeKind(enum.IntEnum):
    INTENT = 0
    """Durable intent, outcome not recorded here: the engine knows whether its transfers committed."""
    COMMITTED = 1
    FAILED = 2
    """Refused by the engine: failure_status of the leg at failure_index."""
    FAILURE_TEXT = 3
    """A failure recorded after the fact (the protocol's record_failures): `text` is the failure."""


@dataclass(slots=True)
class TransactionIntent:
    """One transaction's metadata as the journal records it. Not frozen: one is made per transaction on
    the batch path, and a frozen dataclass's __init__ costs ~1.4 µs more; `outcomes` sets the outcome
    fields in place once the engine has the batch's results."""

    transaction_id: int
    fingerprint: bytes
    client_id: str
    idempotency_key: str
    text: str
    transfer_count: int
    transfer_index: int = 0
    """Position of the first leg among the batch's transfers (CREATE_TRANSACTIONS records)."""
    transfer_ids: tuple[int, ...] = ()
    """The legs' transfer ids: METADATA records only (a CREATE_TRANSACTIONS record holds the transfers)."""
    kind: OutcomeKind = OutcomeKind.INTENT
    failure_status: int = 0
    failure_index: int = 0


_OK_STATUSES = frozenset((CreateTransferStatus.CREATED, CreateTransferStatus.LINKED_EVENT_FAILED))
_EXISTS = CreateTransferStatus.EXISTS
# Members read once: reading one off its enum class is a lookup per use, and these run per transaction.
_INTENT, _COMMITTED, _FAILED, _FAILURE_TEXT = (
    OutcomeKind.INTENT,
    OutcomeKind.COMMITTED,
    OutcomeKind.FAILED,
    OutcomeKind.FAILURE_TEXT,
)


def outcomes(intents: Sequence[TransactionIntent], results: Sequence[CreateTransferResult]) -> None:
    """Sets each intent's outcome from the batch's results (the rules of facade.batcher.judge: the first
    leg `exists` means committed earlier; else the first leg neither created nor broken by the chain is
    the failure)."""
    results_count = len(results)
    decided = 0
    for intent in intents:
        start = intent.transfer_index
        assert start + intent.transfer_count <= results_count
        # Decided here, first: no intent leaves this loop without an outcome (counted below).
        intent.kind, intent.failure_status, intent.failure_index = _COMMITTED, 0, 0
        decided += 1
        if results[start].status == _EXISTS:
            continue
        for leg_index in range(intent.transfer_count):
            status = results[start + leg_index].status
            if status not in _OK_STATUSES:
                intent.kind, intent.failure_status, intent.failure_index = _FAILED, int(status), leg_index
                break
    # Every intent got COMMITTED or FAILED above (a pass over them all again cost ~0.1 µs a transaction).
    assert decided == len(intents)


def encode_section(intents: Sequence[TransactionIntent], *, with_transfer_ids: bool) -> tuple[bytes, list[int]]:
    """The metadata section for `intents` (with_transfer_ids: a METADATA record, which has no transfers)
    and each entry's byte offset in it."""
    assert len(intents) <= BATCH_EVENTS_MAX
    parts = [SECTION_HEADER.pack(len(intents))]
    offsets: list[int] = []
    size = SECTION_HEADER.size
    for intent in intents:
        offsets.append(size)
        client, key, text = intent.client_id.encode(), intent.idempotency_key.encode(), intent.text.encode()
        assert len(intent.fingerprint) == 16 and len(text) <= TEXT_SIZE_MAX
        parts.append(
            ENTRY.pack(
                intent.transaction_id.to_bytes(16, "little"), intent.fingerprint, intent.transfer_index,
                intent.transfer_count, intent.kind, intent.failure_status, intent.failure_index, len(client),
                len(key), len(text),
            )
        )  # fmt: skip
        parts += (client, key, text)
        size += ENTRY.size + len(client) + len(key) + len(text)
        if with_transfer_ids:
            assert len(intent.transfer_ids) == intent.transfer_count
            parts += [transfer_id.to_bytes(16, "little") for transfer_id in intent.transfer_ids]
            size += 16 * intent.transfer_count
    section = b"".join(parts)
    assert len(section) == size <= METADATA_SECTION_SIZE_MAX
    return section, offsets


@dataclass(frozen=True, slots=True)
class _Decoded:
    offset: int
    """The entry's byte offset in the section."""
    intent: TransactionIntent


def decode_section(section: bytes | memoryview, *, transfer_ids: Sequence[int] | None) -> list[_Decoded]:
    """The entries of a section. `transfer_ids`: the record's transfer ids (CREATE_TRANSACTIONS), or None
    when each entry carries its own (METADATA)."""
    (entries,) = SECTION_HEADER.unpack_from(section, 0)
    assert entries <= BATCH_EVENTS_MAX
    offset = SECTION_HEADER.size
    decoded: list[_Decoded] = []
    for _ in range(entries):
        (
            tx_id, fingerprint, transfer_index, transfer_count, kind, failure_status, failure_index, client_len,
            key_len, text_len,
        ) = ENTRY.unpack_from(section, offset)  # fmt: skip
        start = offset
        offset += ENTRY.size
        client = bytes(section[offset : offset + client_len]).decode()
        offset += client_len
        key = bytes(section[offset : offset + key_len]).decode()
        offset += key_len
        text = bytes(section[offset : offset + text_len]).decode()
        offset += text_len
        if transfer_ids is None:
            ids = tuple(
                int.from_bytes(section[start_id : start_id + 16], "little")
                for start_id in range(offset, offset + 16 * transfer_count, 16)
            )
            offset += 16 * transfer_count
        else:
            ids = tuple(transfer_ids[transfer_index : transfer_index + transfer_count])
            assert len(ids) == transfer_count
        intent = TransactionIntent(
            int.from_bytes(tx_id, "little"), fingerprint, client, key, text, transfer_count, transfer_index, ids,
            OutcomeKind(kind), failure_status, failure_index,
        )  # fmt: skip
        decoded.append(_Decoded(start, intent))
    assert offset == len(section), "metadata section has trailing bytes"
    return decoded


class IndexEntry:
    """What the index keeps of one transaction in memory; the rest is read from the journal."""

    __slots__ = ("failure", "fingerprint", "kind", "location")

    def __init__(self, fingerprint: bytes, kind: OutcomeKind, failure: str | tuple[int, int] | None, location: int):
        self.fingerprint = fingerprint
        self.kind = kind
        self.failure = failure
        """FAILED: (CreateTransferStatus, leg index); FAILURE_TEXT: the recorded failure's text."""
        self.location = location
        """Byte offset in the journal file of the entry holding the intent (client, key, body)."""


class TransactionIndex:
    """Transaction id → IndexEntry and transfer id → (transaction id, leg), rebuilt from the journal.
    Written only by the engine's thread, after an append is durable (never ahead of the disk); read
    from any thread (single dict operations are atomic in CPython)."""

    def __init__(self) -> None:
        self.transactions: dict[int, IndexEntry] = {}
        self.transfers: dict[int, int] = {}
        """Transfer id → (transaction id << LEG_BITS) | leg index."""

    def apply(self, section: bytes | memoryview, *, location: int, transfer_ids: Sequence[int] | None) -> None:
        """Folds one record's section (at byte `location` of the journal) into the index."""
        count_before = len(self.transactions)
        for decoded in decode_section(section, transfer_ids=transfer_ids):
            self.add(decoded.intent, location + decoded.offset, decoded.intent.transfer_ids)
        assert len(self.transactions) >= count_before

    def add(self, intent: TransactionIntent, location: int, transfer_ids: Sequence[int]) -> None:
        """One entry (at byte `location` of the journal); `transfer_ids`: its legs' ids."""
        # Every leg index (0 .. count-1) fits LEG_BITS: checked once here, not per leg.
        assert len(transfer_ids) == intent.transfer_count <= 1 << LEG_BITS
        transaction_id, kind = intent.transaction_id, intent.kind
        transactions = self.transactions
        entry = transactions.get(transaction_id)
        failure: str | tuple[int, int] | None = None
        if kind == _FAILED:
            failure = (intent.failure_status, intent.failure_index)
        elif kind == _FAILURE_TEXT:
            failure = intent.text
        if entry is None:
            assert kind != _FAILURE_TEXT, "a failure recorded for an unknown intent"
            transactions[transaction_id] = IndexEntry(intent.fingerprint, kind, failure, location)
            packed, setdefault = transaction_id << LEG_BITS, self.transfers.setdefault
            for leg, transfer_id in enumerate(transfer_ids):
                setdefault(transfer_id, packed | leg)
        elif kind != _INTENT:
            # The writer decided (before writing) that this outcome replaces what was there.
            entry.kind, entry.failure = kind, failure
        assert transaction_id in transactions

    def add_record(
        self, intents: Sequence[TransactionIntent], locations: Sequence[int], transfer_ids: Sequence[int]
    ) -> None:
        """The entries of one CREATE_TRANSACTIONS record: `add` of intent i at byte `locations[i]`, its legs'
        ids the slice of the record's `transfer_ids` it names (transfer_index, transfer_count)."""
        assert len(intents) == len(locations)
        count_before = len(self.transactions)
        add = self.add
        for intent, location in zip(intents, locations, strict=True):
            start = intent.transfer_index
            add(intent, location, transfer_ids[start : start + intent.transfer_count])
        # Each `add` asserted its own entry; the index only grows.
        assert count_before <= len(self.transactions) <= count_before + len(intents)


READ_SPAN_BYTES_MAX = 1 << 20
"""Bytes read at once when fetching many entries (change capture asks for a batch's worth): entries of
one record sit next to each other, so one pread serves them all instead of two per entry."""
READ_TAIL_BYTES = 4096
"""Bytes read past a span's last entry header, enough for a typical entry's client, key and body."""


def read_entries(fd: int, locations: Sequence[int]) -> dict[int, TransactionIntent]:
    """The journal entries at `locations` (durable bytes), by location, reading nearby entries together."""
    ordered = sorted(set(locations))
    found: dict[int, TransactionIntent] = {}
    start = 0
    while start < len(ordered):
        end = start + 1
        while end < len(ordered) and ordered[end] + ENTRY.size - ordered[start] <= READ_SPAN_BYTES_MAX:
            end += 1
        first = ordered[start]
        span = os.pread(fd, ordered[end - 1] - first + ENTRY.size + READ_TAIL_BYTES, first)
        for location in ordered[start:end]:
            offset = location - first
            intent = _parse_entry(span, offset) if offset + ENTRY.size <= len(span) else None
            found[location] = intent if intent is not None else read_entry(fd, location)
        start = end
    assert len(found) == len(ordered)
    return found


def _parse_entry(span: bytes, offset: int) -> TransactionIntent | None:
    """The entry at `offset` of `span`, or None if it runs past the span's end."""
    (
        tx_id, fingerprint, transfer_index, transfer_count, kind, failure_status, failure_index, client_len,
        key_len, text_len,
    ) = ENTRY.unpack_from(span, offset)  # fmt: skip
    offset += ENTRY.size
    if offset + client_len + key_len + text_len > len(span):
        return None
    client = span[offset : offset + client_len].decode()
    offset += client_len
    key = span[offset : offset + key_len].decode()
    offset += key_len
    text = span[offset : offset + text_len].decode()
    return TransactionIntent(
        int.from_bytes(tx_id, "little"), fingerprint, client, key, text, transfer_count, transfer_index, (),
        OutcomeKind(kind), failure_status, failure_index,
    )  # fmt: skip


def read_entry(fd: int, location: int) -> TransactionIntent:
    """The journal entry at `location` (durable bytes: any thread may read them)."""
    fixed = os.pread(fd, ENTRY.size, location)
    assert len(fixed) == ENTRY.size
    (
        tx_id, fingerprint, transfer_index, transfer_count, kind, failure_status, failure_index, client_len,
        key_len, text_len,
    ) = ENTRY.unpack(fixed)  # fmt: skip
    rest = os.pread(fd, client_len + key_len + text_len, location + ENTRY.size)
    assert len(rest) == client_len + key_len + text_len
    client = rest[:client_len].decode()
    key = rest[client_len : client_len + key_len].decode()
    text = rest[client_len + key_len :].decode()
    return TransactionIntent(
        int.from_bytes(tx_id, "little"), fingerprint, client, key, text, transfer_count, transfer_index, (),
        OutcomeKind(kind), failure_status, failure_index,
    )  # fmt: skip


assert ENTRY.size == 60 and EVENT_SIZE == 128
