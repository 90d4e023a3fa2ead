"""Engine change events → ledger.v1.LedgerEntry events (one per account side) with their chain link."""

from __future__ import annotations

from facade.engine.types import Account, ChangeEvent
from ledger_events.chain import Link, next_link
from ledger_events.entries import ENTRY_CHANGES, SCHEMA_VERSION, Side, event_id, metadata_bytes
from ledger_events.gen.ledger.v1 import entries_pb2

_SIDES = {Side.DEBIT: entries_pb2.DEBIT, Side.CREDIT: entries_pb2.CREDIT}


def _balances(account: Account | None) -> entries_pb2.AccountBalances | None:
    if account is None:
        return None
    return entries_pb2.AccountBalances(
        debits_pending=str(account.debits_pending),
        debits_posted=str(account.debits_posted),
        credits_pending=str(account.credits_pending),
        credits_posted=str(account.credits_posted),
    )


def build_entries(
    event: ChangeEvent, metadata: entries_pb2.EntryMetadata | None, previous: Link
) -> tuple[entries_pb2.LedgerEntry, entries_pb2.LedgerEntry, Link]:
    """The debit-side and credit-side entries of one change, and the chain's new head."""
    change = ENTRY_CHANGES[event.type]
    t = event.transfer
    link = next_link(previous, event.timestamp, change, t, metadata_bytes(metadata))
    chain = entries_pb2.ChainLink(sequence=link.sequence, previous_hash=link.previous_hash, hash=link.hash)
    entries = []
    for side, account_id, counterparty, account in (
        (Side.DEBIT, t.debit_account_id, t.credit_account_id, event.debit_account),
        (Side.CREDIT, t.credit_account_id, t.debit_account_id, event.credit_account),
    ):
        entry = entries_pb2.LedgerEntry(
            schema_version=SCHEMA_VERSION,
            event_id=event_id(event.timestamp, side),
            engine_timestamp=event.timestamp,
            change=change,
            side=_SIDES[side],
            account_id=str(account_id),
            counterparty_account_id=str(counterparty),
            amount=str(t.amount),
            ledger=t.ledger,
            code=t.code,
            transfer_id=str(t.id),
            pending_id=str(t.pending_id),
            transfer_flags=int(t.flags),
            user_data_128=str(t.user_data_128),
            user_data_64=t.user_data_64,
            user_data_32=t.user_data_32,
            timeout_seconds=t.timeout,
            transfer_timestamp=t.timestamp,
            chain=chain,
        )
        balances = _balances(account)
        if balances is not None:
            entry.balance_after.CopyFrom(balances)
        if metadata is not None:
            entry.metadata.CopyFrom(metadata)
        entries.append(entry)
    return entries[0], entries[1], link
