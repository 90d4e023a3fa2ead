"""LedgerEntry events → TabSeparated rows of the read model's tables (column order: projections.schema).

One text format for both backends (chDB takes it inline, a server through clickhouse-connect's raw
insert), so the rows tested on chDB are byte for byte what a server receives.

Every u128 field of the event is a decimal string; it is parsed to an int and printed back, so a
malformed value fails here (ValueError) instead of shifting TSV columns, and every string is escaped
(backslash, tab, newline, carriage return, NUL): no event content can break out of its column.
"""

from __future__ import annotations

from collections.abc import Mapping

from facade.engine.types import U128_MAX
from ledger_events.entries import SCHEMA_VERSION
from ledger_events.gen.ledger.v1 import entries_pb2

CHANGE_NAMES: Mapping[int, str] = {
    entries_pb2.SINGLE_PHASE: "SINGLE_PHASE",
    entries_pb2.TWO_PHASE_PENDING: "TWO_PHASE_PENDING",
    entries_pb2.TWO_PHASE_POSTED: "TWO_PHASE_POSTED",
    entries_pb2.TWO_PHASE_VOIDED: "TWO_PHASE_VOIDED",
    entries_pb2.TWO_PHASE_EXPIRED: "TWO_PHASE_EXPIRED",
}
CHANGE_VALUES: Mapping[str, int] = {name: value for value, name in CHANGE_NAMES.items()}
_POSTING_CHANGES = frozenset({entries_pb2.SINGLE_PHASE, entries_pb2.TWO_PHASE_POSTED})
_SIDE_NAMES: Mapping[int, str] = {entries_pb2.DEBIT: "DEBIT", entries_pb2.CREDIT: "CREDIT"}

_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"})
_QUOTED_ESCAPES = str.maketrans({"\\": "\\\\", "'": "\\'", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"})
_EMPTY_METADATA = "0\t\t\t\t\t\t\t\t{}\t\t0"


class EntryError(ValueError):
    """An event that cannot be projected (unknown schema version, change or side, bad u128)."""


def _u128(text: str) -> int:
    value = int(text)
    if not 0 <= value <= U128_MAX:
        raise EntryError(f"u128 out of range: {text!r}")
    return value


def _text(value: str) -> str:
    return value.translate(_TSV_ESCAPES)


def _labels(labels: Mapping[str, str]) -> str:
    """A Map(String, String) in TSV: quoted keys and values inside braces (ClickHouse reads a map's
    quoted strings as they are, so their escaping alone keeps tabs and newlines out of the row)."""
    if not labels:
        return "{}"
    quoted = ",".join(f"'{k.translate(_QUOTED_ESCAPES)}':'{v.translate(_QUOTED_ESCAPES)}'" for k, v in labels.items())
    return "{" + quoted + "}"


def _metadata(entry: entries_pb2.LedgerEntry) -> str:
    if not entry.HasField("metadata"):
        return _EMPTY_METADATA
    m = entry.metadata
    return (
        f"1\t{_text(m.transaction_id)}\t{_text(m.idempotency_key)}\t{_text(m.client_id)}\t"
        f"{_text(m.transaction_type)}\t{_text(m.source)}\t{_text(m.correlation_id)}\t{_text(m.description)}\t"
        f"{_labels(m.labels)}\t{_text(m.currency)}\t{m.leg_index}"
    )


def check(entry: entries_pb2.LedgerEntry) -> None:
    """Rejects what this projector does not understand rather than projecting it wrongly."""
    if entry.schema_version != SCHEMA_VERSION:
        raise EntryError(f"{entry.event_id}: schema_version {entry.schema_version} not supported")
    if entry.change not in CHANGE_NAMES or entry.side not in _SIDE_NAMES:
        raise EntryError(f"{entry.event_id}: change {entry.change} / side {entry.side} unknown")
    if not entry.HasField("chain") or entry.chain.sequence < 1:
        raise EntryError(f"{entry.event_id}: no chain link")
    expected_id = f"{entry.engine_timestamp}:{'D' if entry.side == entries_pb2.DEBIT else 'C'}"
    if entry.event_id != expected_id:
        raise EntryError(f"{entry.event_id}: event id does not match {expected_id}")


def _transfer(entry: entries_pb2.LedgerEntry) -> str:
    return (
        f"{_u128(entry.transfer_id)}\t{_u128(entry.pending_id)}\t{entry.ledger}\t{entry.code}\t"
        f"{entry.transfer_flags}\t{_u128(entry.user_data_128)}\t{entry.user_data_64}\t{entry.user_data_32}\t"
        f"{entry.timeout_seconds}\t{entry.transfer_timestamp}"
    )


def _chain(entry: entries_pb2.LedgerEntry) -> str:
    return f"{entry.chain.sequence}\t{entry.chain.previous_hash.hex()}\t{entry.chain.hash.hex()}"


def account_id(entry: entries_pb2.LedgerEntry) -> int:
    return _u128(entry.account_id)


def entry_row(entry: entries_pb2.LedgerEntry) -> str:
    """The `entries` row (schema.ENTRIES_COLUMNS order), newline-terminated."""
    amount = _u128(entry.amount)
    signed = 0
    if entry.change in _POSTING_CHANGES:
        signed = amount if entry.side == entries_pb2.CREDIT else -amount
    if entry.HasField("balance_after"):
        b = entry.balance_after
        balances = (
            f"1\t{_u128(b.debits_pending)}\t{_u128(b.debits_posted)}\t"
            f"{_u128(b.credits_pending)}\t{_u128(b.credits_posted)}"
        )
    else:
        balances = "0\t0\t0\t0\t0"
    return (
        f"{entry.event_id}\t{entry.engine_timestamp}\t{CHANGE_NAMES[entry.change]}\t{_SIDE_NAMES[entry.side]}\t"
        f"{_u128(entry.account_id)}\t{_u128(entry.counterparty_account_id)}\t{amount}\t{signed}\t"
        f"{_transfer(entry)}\t{balances}\t{_chain(entry)}\t{_metadata(entry)}\n"
    )


def transaction_row(debit: entries_pb2.LedgerEntry) -> str:
    """The `transactions` row (schema.TRANSACTIONS_COLUMNS order) of a change, from its debit entry."""
    assert debit.side == entries_pb2.DEBIT
    return (
        f"{debit.engine_timestamp}\t{CHANGE_NAMES[debit.change]}\t{_u128(debit.account_id)}\t"
        f"{_u128(debit.counterparty_account_id)}\t{_u128(debit.amount)}\t{_transfer(debit)}\t"
        f"{_chain(debit)}\t{_metadata(debit)}\n"
    )
