"""Engine changes → the read model's TabSeparated rows directly, without LedgerEntry messages.

The read model's own process (projections._process) receives raw changes; building two LedgerEntry
messages per change only to print them back as rows cost about half of its time. This builds the same
rows, byte for byte, from the change itself: the same columns as projections.rows (entry_row,
balance_row, transaction_row), the same escaping (its helpers), the same chain link
(facade.changes.chain.next_link_encoded over facade.changes.entries.metadata_bytes). Asserted equal to the
LedgerEntry path by tests/projections/test_process.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from facade.api.gen.ledger.v1 import entries_pb2
from facade.changes.chain import Link, next_link_encoded
from facade.changes.entries import _CHANGE, metadata_bytes
from facade.engine.codec import EVENT_SIZE, encode_transfers
from facade.engine.types import Account, ChangeEvent, Transfer
from projections.rows import _EMPTY_METADATA, _POSTING_CHANGES, CHANGE_NAMES, _labels, _text

__all__ = ["ChangeRows", "change_rows"]


@dataclass(frozen=True, slots=True)
class ChangeRows:
    """The rows one change adds: two entries, up to two balances, one transaction."""

    engine_timestamp: int
    debit_account_id: int
    credit_account_id: int
    debit_entry: str
    credit_entry: str
    debit_balance: str | None
    credit_balance: str | None
    transaction: str


def _metadata_text(metadata: entries_pb2.EntryMetadata | None) -> str:
    if metadata is None:
        return _EMPTY_METADATA
    m = metadata
    return (
        f"1\t{_text(m.transaction_id)}\t{_text(m.idempotency_key)}\t{_text(m.client_id)}\t"
        f"{_text(m.transaction_type)}\t{_text(m.source)}\t{_text(m.correlation_id)}\t{_text(m.description)}\t"
        f"{_labels(m.labels)}\t{_text(m.currency)}\t{m.leg_index}"
    )


def _transfer_text(t: Transfer) -> str:
    return (
        f"{t.id}\t{t.pending_id}\t{t.ledger}\t{t.code}\t{int(t.flags)}\t{t.user_data_128}\t{t.user_data_64}\t"
        f"{t.user_data_32}\t{t.timeout}\t{t.timestamp}"
    )


def _balances_text(account: Account | None) -> str:
    if account is None:
        return "0\t0\t0\t0\t0"
    return f"1\t{account.debits_pending}\t{account.debits_posted}\t{account.credits_pending}\t{account.credits_posted}"


def _balance_row(account: Account | None, account_id: int, timestamp: int, ledger: int) -> str | None:
    if account is None:
        return None
    return (
        f"{account_id}\t{timestamp}\t{ledger}\t{account.debits_pending}\t{account.debits_posted}\t"
        f"{account.credits_pending}\t{account.credits_posted}\n"
    )


def change_rows(
    events: Sequence[ChangeEvent],
    metadata: dict[int, entries_pb2.EntryMetadata],
    previous: Link,
    transfers_encoded: bytes | None = None,
) -> tuple[list[ChangeRows], Link]:
    """The rows of `events` (in commit order) and the chain's new head. `transfers_encoded`: the events'
    transfers in the engine's layout when the caller has it (what they were decoded from), so the chain
    hashes those bytes instead of encoding every transfer again."""
    if transfers_encoded is None:
        transfers_encoded = encode_transfers([event.transfer for event in events])
    assert len(transfers_encoded) == EVENT_SIZE * len(events)
    link = previous
    found: list[ChangeRows] = []
    timestamp_last = 0
    for index, event in enumerate(events):
        assert event.timestamp > timestamp_last, "changes in commit order"
        timestamp_last = event.timestamp
        t = event.transfer
        change = _CHANGE[event.type]
        described = metadata.get(t.id)
        transfer_encoded = transfers_encoded[index * EVENT_SIZE : (index + 1) * EVENT_SIZE]
        link = next_link_encoded(link, event.timestamp, change, transfer_encoded, metadata_bytes(described))
        name = CHANGE_NAMES[change]
        signed = t.amount if change in _POSTING_CHANGES else 0
        head = f"{event.timestamp}\t{name}"
        # Everything after the balances is shared by both entries and the transaction.
        transfer = _transfer_text(t)
        tail = f"{link.sequence}\t{link.previous_hash.hex()}\t{link.hash.hex()}\t{_metadata_text(described)}\n"
        debit, credit = t.debit_account_id, t.credit_account_id
        found.append(
            ChangeRows(
                engine_timestamp=event.timestamp,
                debit_account_id=debit,
                credit_account_id=credit,
                debit_entry=(
                    f"{event.timestamp}:D\t{head}\tDEBIT\t{debit}\t{credit}\t{t.amount}\t{-signed}\t{transfer}\t"
                    f"{_balances_text(event.debit_account)}\t{tail}"
                ),
                credit_entry=(
                    f"{event.timestamp}:C\t{head}\tCREDIT\t{credit}\t{debit}\t{t.amount}\t{signed}\t{transfer}\t"
                    f"{_balances_text(event.credit_account)}\t{tail}"
                ),
                debit_balance=_balance_row(event.debit_account, debit, event.timestamp, t.ledger),
                credit_balance=_balance_row(event.credit_account, credit, event.timestamp, t.ledger),
                transaction=f"{head}\t{debit}\t{credit}\t{t.amount}\t{transfer}\t{tail}",
            )
        )
    assert link.sequence == previous.sequence + len(events)
    return found, link
