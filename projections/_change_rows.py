"""Engine changes → the read model's TabSeparated rows directly, without LedgerEntry messages.

The read model's own process (projections._process) receives raw changes in the engine's 128-byte
layouts; building two LedgerEntry messages per change only to print them back as rows cost about half
of its time, and so did decoding them into Transfer and Account objects first. This reads the fields
straight from the bytes (struct) and builds the same rows, byte for byte: the same columns as
projections.rows (entry_row, transaction_row), the same escaping (its helpers), the same
chain link (ledger_events.chain.next_link_encoded over ledger_events.entries.metadata_bytes, on the
transfer's bytes as they came). Asserted equal to the LedgerEntry path by tests/projections/test_process.py.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from facade.engine.codec import EVENT_SIZE
from facade.engine.types import ChangeEventType
from ledger_events.chain import Link, next_link_encoded
from ledger_events.entries import ENTRY_CHANGES as _CHANGE
from ledger_events.entries import metadata_bytes
from ledger_events.gen.ledger.v1 import entries_pb2
from projections.rows import _EMPTY_METADATA, _POSTING_CHANGES, CHANGE_NAMES, _labels, _text

__all__ = ["RowTables", "change_rows"]

_LAYOUT = struct.Struct("<12Q Q I I I H H Q")
"""Transfers and accounts alike (facade.engine.codec): six u128 as 12 u64, then the small fields."""
assert _LAYOUT.size == EVENT_SIZE

Key = tuple[int, int]


@dataclass(slots=True)
class RowTables:
    """A batch's rows by table, keyed by row identity (projections.projector's keys), in commit order."""

    entries: dict[Key, str] = field(default_factory=dict)
    transactions: dict[Key, str] = field(default_factory=dict)
    timestamp_max: int = 0


@dataclass(frozen=True, slots=True)
class _Kind:
    change: int
    name: str
    posting: bool


_KINDS: Mapping[int, _Kind] = {
    kind.value: _Kind(_CHANGE[kind], CHANGE_NAMES[_CHANGE[kind]], _CHANGE[kind] in _POSTING_CHANGES)
    for kind in ChangeEventType
}


def _metadata_text(metadata: entries_pb2.EntryMetadata | None) -> str:
    if metadata is None:
        return _EMPTY_METADATA
    m = metadata
    return (
        f"1\t{_text(m.transaction_id)}\t{_text(m.idempotency_key)}\t{_text(m.client_id)}\t"
        f"{_text(m.transaction_type)}\t{_text(m.source)}\t{_text(m.correlation_id)}\t{_text(m.description)}\t"
        f"{_labels(m.labels)}\t{_text(m.currency)}\t{m.leg_index}"
    )


def change_rows(  # noqa: PLR0913  The columns of a batch as the read model's process receives them.
    timestamps: Sequence[int],
    kinds: Sequence[int],
    transfers: bytes,
    accounts: bytes,
    metadata: Mapping[int, entries_pb2.EntryMetadata],
    previous: Link,
) -> tuple[RowTables, Link]:
    """The rows of a batch of changes (in commit order) and the chain's new head. `transfers`: one per
    change; `accounts`: the debit then the credit account of each change, id 0 where there is none."""
    count = len(timestamps)
    assert len(kinds) == count and len(transfers) == EVENT_SIZE * count and len(accounts) == 2 * EVENT_SIZE * count
    tables = RowTables()
    entries, transactions = tables.entries, tables.transactions
    link = previous
    timestamp_last = 0
    account_fields = _LAYOUT.iter_unpack(accounts)
    for index, (timestamp, kind_value, t) in enumerate(
        zip(timestamps, kinds, _LAYOUT.iter_unpack(transfers), strict=True)
    ):
        assert timestamp > timestamp_last, "changes in commit order"
        timestamp_last = timestamp
        (i0, i1, d0, d1, c0, c1, a0, a1, p0, p1, u0, u1, u64, u32, timeout, ledger, code, flags, t_timestamp) = t
        transfer_id = i0 | i1 << 64
        debit, credit, amount = d0 | d1 << 64, c0 | c1 << 64, a0 | a1 << 64
        kind = _KINDS[kind_value]
        described = metadata.get(transfer_id)
        transfer_encoded = transfers[index * EVENT_SIZE : (index + 1) * EVENT_SIZE]
        link = next_link_encoded(link, timestamp, kind.change, transfer_encoded, metadata_bytes(described))
        signed = amount if kind.posting else 0
        head = f"{timestamp}\t{kind.name}"
        # Everything after the balances is shared by both entries and the transaction.
        transfer = (
            f"{transfer_id}\t{p0 | p1 << 64}\t{ledger}\t{code}\t{flags}\t{u0 | u1 << 64}\t{u64}\t{u32}\t"
            f"{timeout}\t{t_timestamp}"
        )
        tail = f"{link.sequence}\t{link.previous_hash.hex()}\t{link.hash.hex()}\t{_metadata_text(described)}\n"
        debit_balances = _balance_text(next(account_fields))
        credit_balances = _balance_text(next(account_fields))
        entries.setdefault(
            (debit, timestamp),
            f"{timestamp}:D\t{head}\tDEBIT\t{debit}\t{credit}\t{amount}\t{-signed}\t{transfer}\t{debit_balances}\t{tail}",
        )
        entries.setdefault(
            (credit, timestamp),
            f"{timestamp}:C\t{head}\tCREDIT\t{credit}\t{debit}\t{amount}\t{signed}\t{transfer}\t{credit_balances}\t{tail}",
        )
        transactions.setdefault((0, timestamp), f"{head}\t{debit}\t{credit}\t{amount}\t{transfer}\t{tail}")
    tables.timestamp_max = timestamp_last
    assert link.sequence == previous.sequence + count
    return tables, link


def _balance_text(fields: tuple[int, ...]) -> str:
    """An account's balances after the change as the entry's columns (has_balance_after 0 and zeros where
    the change carries no account: the TigerBeetle backend's expiries). `balances` is a view over these."""
    (i0, i1, dp0, dp1, dpo0, dpo1, cp0, cp1, cpo0, cpo1) = fields[:10]
    if i0 == 0 and i1 == 0:
        return "0\t0\t0\t0\t0"
    return f"1\t{dp0 | dp1 << 64}\t{dpo0 | dpo1 << 64}\t{cp0 | cp1 << 64}\t{cpo0 | cpo1 << 64}"
