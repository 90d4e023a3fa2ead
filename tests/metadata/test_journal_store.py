"""The journal store's own properties, beyond the protocol suite (tests/metadata/test_store.py runs that
on it too): a batch is one journal append carrying its metadata, the SQLite file is not written on the
batch path, and an older build's SQLite transactions are still found."""

from __future__ import annotations

import os
from pathlib import Path

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.batcher import Committed, GroupCommitter
from facade.domain.errors import ErrorKind, LedgerError
from facade.domain.transactions import Metadata, PostRequest, map_post
from facade.engine.embedded import EmbeddedEngine
from facade.engine.intents import OutcomeKind
from facade.engine.journal import Operation
from facade.engine.journal_check import check
from facade.metadata import JournalMetadataStore, SqliteMetadataStore
from facade.metadata._journal import METADATA_CHUNK

from ._journal_crash_writer import ALICE, CURRENCIES, open_ledger, transaction


def sqlite_files_size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.glob("metadata.sqlite3*"))


async def test_a_batch_is_one_append_with_its_intents_and_outcomes(tmp_path: Path) -> None:
    engine, store = await open_ledger(tmp_path)
    committer = GroupCommitter(engine, store)
    committer.start()
    try:
        sqlite_before = sqlite_files_size(tmp_path)
        op_before = engine.ledger.journal_op_last
        keys = range(10)  # Key 4 and 9 overdraw ALICE: refused, recorded in the same record.
        outcomes = [await f for f in committer.submit([transaction(k) for k in keys])]
        assert [isinstance(o, Committed) for o in outcomes] == [k % 5 != 4 for k in keys]
        assert engine.ledger.journal_op_last == op_before + 1, "one append for the whole batch"
        assert sqlite_files_size(tmp_path) == sqlite_before, "the SQLite file is not on the batch path"
    finally:
        await committer.close()
        await store.close()
    [record] = [r for r in check(tmp_path / "engine").records if r.op == op_before + 1]
    assert record.operation == Operation.CREATE_TRANSACTIONS and record.count == 2 * 8 + 2
    assert len(record.body) < 10 * 1024, "under 1 KB per transaction, transfers included"
    # Reopened: the index is rebuilt from that record, failures included.
    engine, store = await open_ledger(tmp_path)
    try:
        refused = transaction(4)
        entry = engine.index.transactions[refused.transaction_id]
        assert entry.kind == OutcomeKind.FAILED
        prior = (await store.priors([refused]))[refused.transaction_id]
        failed = outcomes[4]
        assert isinstance(failed, LedgerError) and prior.failure == failed.to_json()
        stored = await store.get_transaction(transaction(3).transaction_id)
        assert stored is not None and stored.body == transaction(3).body and stored.failure is None
    finally:
        await store.close()


async def test_an_older_builds_sqlite_transactions_are_still_found(tmp_path: Path) -> None:
    """Upgrade: intents and failures an older build wrote to SQLite keep answering retries."""
    legacy_committed, legacy_failed = transaction(100), transaction(104)
    sqlite = await SqliteMetadataStore.open(tmp_path / "metadata.sqlite3")
    refusal = LedgerError(ErrorKind.PRECONDITION, "INSUFFICIENT_FUNDS", "legacy").to_json()
    await sqlite.prepare([legacy_committed, legacy_failed])
    await sqlite.record_failures([(legacy_failed.transaction_id, refusal)])
    await sqlite.close()
    engine, store = await open_ledger(tmp_path)
    committer = GroupCommitter(engine, store)
    committer.start()
    try:
        [failed] = [await f for f in committer.submit([legacy_failed])]
        assert isinstance(failed, LedgerError) and failed.to_json() == refusal
        reused = map_post(
            "client-a",
            PostRequest(
                "key-100",
                [pb.Leg(type=pb.LEG_TYPE_CREDIT, account_id=str(ALICE), amount="6", currency="USD")],
                Metadata(),
            ),
            currencies=CURRENCIES,
        )
        [outcome] = [await f for f in committer.submit([reused])]
        assert isinstance(outcome, LedgerError) and outcome.reason == "IDEMPOTENCY_KEY_REUSED"
        stored = await store.get_transaction(legacy_committed.transaction_id)
        assert stored is not None and stored.body == legacy_committed.body
        ids = [x.id for x in legacy_committed.transfers]
        assert await store.known_transfers(ids) == set(ids)
        assert legacy_committed.transaction_id not in engine.index.transactions
    finally:
        await committer.close()
        await store.close()


async def test_a_reopened_store_without_its_engine_dir_has_no_transactions(tmp_path: Path) -> None:
    """The index lives nowhere but in the journal: a new engine directory means an empty index (and
    start-up consistency refuses that pairing when the SQLite file holds accounts)."""
    engine, store = await open_ledger(tmp_path)
    committer = GroupCommitter(engine, store)
    committer.start()
    [outcome] = [await f for f in committer.submit([transaction(1)])]
    assert isinstance(outcome, Committed)
    await committer.close()
    await store.close()
    os.rename(tmp_path / "engine", tmp_path / "engine-moved")
    engine = await EmbeddedEngine.open(tmp_path / "engine")
    store = await JournalMetadataStore.open(tmp_path / "metadata.sqlite3", engine, owns_engine=True)
    try:
        assert await store.get_transaction(transaction(1).transaction_id) is None
        assert not engine.index.transactions
    finally:
        await store.close()


async def test_metadata_of_recent_transactions_equals_the_journals(tmp_path: Path) -> None:
    """Change capture's metadata of a just-submitted batch comes from memory: it must equal what the
    journal gives once reopened (the index rebuilt, nothing in memory), leg by leg, for posts of every
    leg type, an authorization and labels."""
    engine, store = await open_ledger(tmp_path)
    usd = pb.Leg(currency="USD", amount="3")
    requests = [
        PostRequest(
            "mixed",
            [
                pb.Leg(type=pb.LEG_TYPE_CREDIT, account_id=str(ALICE), amount="9", currency="USD"),
                pb.Leg(
                    type=pb.LEG_TYPE_TRANSFER,
                    from_account_id=str(ALICE),
                    to_account_id="1002",
                    amount="4",
                    currency="USD",
                ),
                pb.Leg(type=pb.LEG_TYPE_DEBIT, account_id="1002", amount="1", currency="USD"),
            ],
            Metadata("src", "corr", "desc \u00e9", {"b": "2", "a": "\u20ac"}, 1_700_000_000),
        ),
        PostRequest(
            "hold",
            [pb.Leg(type=pb.LEG_TYPE_DEBIT, account_id="1002", amount=usd.amount, currency="USD")],
            Metadata(source="pos"),
            authorize_only=True,
        ),
    ]
    mapped = [map_post("client-b", request, currencies=CURRENCIES) for request in requests]
    transfer_ids = [t.id for m in mapped for t in m.transfers]
    committer = GroupCommitter(engine, store)
    committer.start()
    try:
        outcomes = [await f for f in committer.submit(mapped)]
        assert all(isinstance(o, Committed) for o in outcomes)
        from_memory = await store.metadata_for([*transfer_ids, 77])
    finally:
        await committer.close()
        await store.close()
    engine, store = await open_ledger(tmp_path)
    try:
        from_journal = await store.metadata_for([*transfer_ids, 77])
    finally:
        await store.close()
    assert set(from_memory) == set(from_journal) == set(transfer_ids)
    assert {k: v.SerializeToString(deterministic=True) for k, v in from_memory.items()} == {
        k: v.SerializeToString(deterministic=True) for k, v in from_journal.items()
    }
    assert [from_memory[i].transaction_type for i in transfer_ids] == ["credit", "transfer", "debit", "authorize"]


async def test_metadata_of_more_transfers_than_a_chunk_equals_the_journals(tmp_path: Path) -> None:
    """metadata_for yields to the event loop every METADATA_CHUNK transfers, from memory and from the
    journal: every transfer's metadata is still there, the same both ways, in the order asked."""
    engine, store = await open_ledger(tmp_path)
    count = 2 * METADATA_CHUNK + 7
    mapped = [
        map_post(
            "client-b",
            PostRequest(
                f"many-{n}",
                [pb.Leg(type=pb.LEG_TYPE_CREDIT, account_id=str(ALICE), amount="1", currency="USD")],
                Metadata(source="bulk", description=f"n{n}"),
            ),
            currencies=CURRENCIES,
        )
        for n in range(count)
    ]
    transfer_ids = [t.id for m in mapped for t in m.transfers]
    committer = GroupCommitter(engine, store)
    committer.start()
    try:
        outcomes = [await f for f in committer.submit(mapped)]
        assert all(isinstance(o, Committed) for o in outcomes)
        from_memory = await store.metadata_for(transfer_ids)
    finally:
        await committer.close()
        await store.close()
    engine, store = await open_ledger(tmp_path)
    try:
        from_journal = await store.metadata_for(transfer_ids)
    finally:
        await store.close()
    assert list(from_memory) == list(from_journal) == transfer_ids
    assert [from_memory[i].description for i in transfer_ids] == [f"n{n}" for n in range(count)]
    assert {k: v.SerializeToString(deterministic=True) for k, v in from_memory.items()} == {
        k: v.SerializeToString(deterministic=True) for k, v in from_journal.items()
    }
