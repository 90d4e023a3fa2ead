"""The audit sink hashes leaves straight from the engine's changes (`leaf_records`): each leaf input and
chain link must be exactly what the entry path gives (build_entries, then leaf_record of the debit
entry), or the signed roots would stop matching what the read model and the verifier recompute."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from facade.audit.log import AuditLog
from facade.audit.sink import LEAF_RECORDS_CHUNK, AuditSink, leaf_record, leaf_records
from facade.changes.entries import build_entries
from facade.engine.types import Account, ChangeEvent, ChangeEventType, Transfer, TransferFlags
from facade.settings import AuditSettings
from ledger_audit_verifier import leaf_hash
from ledger_events.chain import GENESIS, Link
from ledger_events.gen.ledger.v1 import entries_pb2

U128_MAX = (1 << 128) - 1


def changes() -> tuple[list[ChangeEvent], dict[int, entries_pb2.EntryMetadata]]:
    """Every change type, u128 extremes, with and without metadata, labels with non-ASCII text."""
    events: list[ChangeEvent] = []
    metadata: dict[int, entries_pb2.EntryMetadata] = {}
    for number, change in enumerate(ChangeEventType):
        transfer = Transfer(
            id=U128_MAX - number,
            debit_account_id=(1 << 127) + number,
            credit_account_id=7 + number,
            amount=U128_MAX if number == 1 else 1000 + number,
            pending_id=number and (1 << 100) + number,
            user_data_128=(1 << 64) + number,
            user_data_64=(1 << 64) - 1,
            user_data_32=(1 << 32) - 1,
            timeout=number,
            ledger=840,
            code=number + 1,
            flags=TransferFlags.PENDING if change == ChangeEventType.TWO_PHASE_PENDING else TransferFlags.NONE,
            timestamp=1_700_000_000_000_000_000 + number,
        )
        account = Account(id=transfer.debit_account_id, ledger=840, code=1, debits_posted=number)
        events.append(ChangeEvent(transfer.timestamp + 10, change, transfer, account, None))
        if number % 2 == 0:
            metadata[transfer.id] = entries_pb2.EntryMetadata(
                transaction_id=f"{number:032x}",
                idempotency_key=f"key-{number}",
                client_id="client",
                transaction_type="transfer",
                source="tests",
                correlation_id="corr\u00e9",
                description='quote " and \\ backslash',
                labels={"b": "2", "a": "\u20ac"} if number else {},
                currency="USD",
                leg_index=number,
            )
    return events, metadata


def entry_path(
    events: list[ChangeEvent], metadata: dict[int, entries_pb2.EntryMetadata], previous: Link
) -> list[tuple[int, int, Link, bytes]]:
    leaves = []
    link = previous
    for event in events:
        debit, credit, link = build_entries(event, metadata.get(event.transfer.id), link)
        assert credit.chain.hash == debit.chain.hash
        record = leaf_record(debit)
        leaves.append((record.sequence, record.engine_timestamp, record.link, record.leaf_input))
    return leaves


def test_leaves_from_changes_equal_leaves_from_entries() -> None:
    events, metadata = changes()
    for previous in (GENESIS, Link(41, b"\x01" * 32, b"\x02" * 32)):
        records = leaf_records(events, metadata, previous)
        direct = [(r.sequence, r.engine_timestamp, r.link, r.leaf_input) for r in records]
        assert direct == entry_path(events, metadata, previous)
        assert direct[0][2].previous_hash == previous.hash
        assert direct[-1][0] == previous.sequence + len(events)


def test_no_changes_no_leaves() -> None:
    assert leaf_records([], {}, GENESIS) == []


async def test_publish_changes_in_chunks_chains_as_one_batch(tmp_path: Path) -> None:
    """More changes than LEAF_RECORDS_CHUNK, hashed a chunk per loop turn: the same leaves, links and
    tree as leaf_records of the whole batch."""
    events, metadata = changes()
    many = [
        replace(event, timestamp=event.timestamp + 100 * round_)
        for round_ in range(2 * LEAF_RECORDS_CHUNK // len(events) + 2)
        for event in events
    ]
    assert len(many) > 2 * LEAF_RECORDS_CHUNK
    log = AuditLog(AuditSettings(data_dir=tmp_path))
    sink = AuditSink(log)
    head = await sink.publish_changes(many, metadata, GENESIS)
    expected = leaf_records(many, metadata, GENESIS)
    assert head == expected[-1].link
    assert log.tree.size == len(many)
    assert [log.tree.leaf(i) for i in range(len(many))] == [leaf_hash(r.leaf_input) for r in expected]
    log.close()
