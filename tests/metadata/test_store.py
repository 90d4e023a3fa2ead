"""The metadata store protocol, method by method, on both backends (SQLite per façade and shared
PostgreSQL, each real: a file with fsync, a throwaway server), and the crash windows of a batch
(intent → engine → failure record) through the group committer and the real embedded engine."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import psycopg
import pytest

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.batcher import Committed, GroupCommitter
from facade.domain.accounts import ACCOUNT_CODE_SETTLEMENT, Currencies
from facade.domain.errors import ErrorKind, LedgerError
from facade.domain.ids import settlement_account_id
from facade.domain.transactions import MappedTransaction, Metadata, PostRequest, map_post
from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import Account, AccountFlags, CreateTransferStatus
from facade.metadata import (
    AccountRecord,
    JournalMetadataStore,
    MetadataStore,
    MetadataStoreError,
    PostgresMetadataStore,
    open_metadata_store,
)
from facade.settings import ApiSettings

ALICE = "1001"
BOB = "1002"
CURRENCIES = Currencies(dict(ApiSettings().currencies))

Opener = Callable[[], Coroutine[Any, Any, MetadataStore]]


def leg(kind: pb.LegType.ValueType, account_id: str, amount: int) -> pb.Leg:
    return pb.Leg(type=kind, account_id=account_id, amount=str(amount), currency="USD")


def transaction(key: str, amount: int = 5, *, client: str = "client-a", description: str = "") -> MappedTransaction:
    legs = [leg(pb.LEG_TYPE_CREDIT, ALICE, amount), leg(pb.LEG_TYPE_DEBIT, BOB, amount)]
    return map_post(client, PostRequest(key, legs, Metadata(description=description)), currencies=CURRENCIES)


async def submit(committer: GroupCommitter, transaction: MappedTransaction) -> Committed | LedgerError:
    [future] = committer.submit([transaction])
    return await future


def refusal(reason: str = "INSUFFICIENT_FUNDS") -> str:
    return LedgerError(ErrorKind.PRECONDITION, reason, "not enough").to_json()


@pytest.fixture(params=["sqlite", "journal", "postgres"])
def store_backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Each store backend: SQLite per façade, the embedded engine's journal (transaction metadata in the
    engine's own records, over a real engine directory), and shared PostgreSQL."""
    if request.param == "postgres":
        dsn: str = request.getfixturevalue("postgres_dsn")
        return {"metadata_backend": "postgres", "metadata_dsn": dsn}
    return {"journal": request.param == "journal"}


@pytest.fixture
def opener(tmp_path: Path, store_backend: dict[str, Any]) -> Opener:
    fields = dict(store_backend)
    journal = fields.pop("journal", False)
    settings = ApiSettings(metadata_db=tmp_path / "metadata.sqlite3", **fields)

    async def open_store() -> MetadataStore:
        if journal:  # The store owns its engine here, so a reopen rebuilds the index from the journal.
            engine = await EmbeddedEngine.open(tmp_path / "engine")
            return await JournalMetadataStore.open(settings.metadata_db, engine, owns_engine=True)
        return await open_metadata_store(settings)

    return open_store


@pytest.fixture
async def store(opener: Opener) -> AsyncIterator[MetadataStore]:
    opened = await opener()
    try:
        yield opened
    finally:
        await opened.close()


async def test_prepare_records_an_intent_once_and_returns_it_as_a_prior(store: MetadataStore) -> None:
    first, second = transaction("k1", description="rent"), transaction("k2")
    assert await store.prepare([]) == {}
    assert await store.prepare([first, second]) == {}
    third = transaction("k3")
    priors = await store.prepare([second, third, first])
    assert set(priors) == {first.transaction_id, second.transaction_id}
    assert priors[first.transaction_id].fingerprint == first.fingerprint
    assert priors[first.transaction_id].failure is None  # An intent: the engine knows whether it committed.
    stored = await store.get_transaction(first.transaction_id)
    assert stored is not None
    assert (stored.client_id, stored.idempotency_key, stored.failure) == ("client-a", "k1", None)
    assert stored.body == first.body
    assert await store.get_transaction(transaction("never").transaction_id) is None
    transfer_ids = [x.id for t in (first, second, third) for x in t.transfers]
    assert await store.known_transfers([*transfer_ids, 77]) == set(transfer_ids)
    metadata = await store.metadata_for([first.transfers[1].id, 77])
    assert list(metadata) == [first.transfers[1].id]
    entry = metadata[first.transfers[1].id]
    assert (entry.transaction_id, entry.idempotency_key, entry.client_id) == (
        f"{first.transaction_id:032x}",
        "k1",
        "client-a",
    )
    assert (entry.leg_index, entry.description, entry.currency) == (1, "rent", "USD")


async def test_a_key_reused_with_another_body_keeps_the_first(store: MetadataStore) -> None:
    original, reused = transaction("same", 5), transaction("same", 6)
    assert original.transaction_id == reused.transaction_id and original.fingerprint != reused.fingerprint
    await store.prepare([original])
    priors = await store.prepare([reused])
    assert priors[original.transaction_id].fingerprint == original.fingerprint
    stored = await store.get_transaction(original.transaction_id)
    assert stored is not None and stored.body == original.body
    # The reused body's transfers were not recorded under the key (they share ids with the original's).
    assert await store.known_transfers([x.id for x in reused.transfers]) == {x.id for x in original.transfers}


async def test_a_recorded_failure_is_final(store: MetadataStore) -> None:
    failed, committed = transaction("fails"), transaction("commits")
    await store.prepare([failed, committed])
    await store.record_failures([])
    await store.record_failures([(failed.transaction_id, refusal())])
    await store.record_failures([(failed.transaction_id, refusal("OTHER"))])  # Never overwritten.
    priors = await store.prepare([failed, committed])
    assert priors[failed.transaction_id].failure == refusal()
    assert priors[committed.transaction_id].failure is None
    assert LedgerError.from_json(refusal()).reason == "INSUFFICIENT_FUNDS"
    stored = await store.get_transaction(failed.transaction_id)
    assert stored is not None and stored.failure == refusal()


async def test_the_engine_placeholder_yields_to_the_original_reason(store: MetadataStore) -> None:
    """Façade B's retry met the engine's burned id (IDEMPOTENCY_KEY_FAILED) before façade A recorded why
    the engine refused it: A's record replaces the placeholder, and then stays."""
    raced, original_first = transaction("raced"), transaction("original-first")
    placeholder = LedgerError(ErrorKind.CONFLICT, "IDEMPOTENCY_KEY_FAILED", "failed").to_json()
    await store.prepare([raced, original_first])
    await store.record_failures([(raced.transaction_id, placeholder), (original_first.transaction_id, refusal())])
    await store.record_failures([(raced.transaction_id, refusal()), (original_first.transaction_id, placeholder)])
    await store.record_failures([(raced.transaction_id, refusal("OTHER"))])
    priors = await store.prepare([raced, original_first])
    assert priors[raced.transaction_id].failure == refusal()
    assert priors[original_first.transaction_id].failure == refusal()


def account(account_id: int, reference: str, *, client: str = "client-a", currency: str = "USD") -> AccountRecord:
    return AccountRecord(account_id, client, reference, currency, "owner", 1, {"k": "v"}, f"fp-{reference}")


async def test_accounts(store: MetadataStore) -> None:
    assert not await store.has_data()
    assert await store.get_account(0) is None
    stored = await store.put_account(account(20, "r20"))
    assert stored == account(20, "r20")
    assert await store.has_data()
    # The same id again with other attributes: the stored record wins (the service compares fingerprints).
    assert await store.put_account(AccountRecord(20, "client-a", "r20", "EUR", "x", 2, {}, "other")) == stored
    await store.put_account(account(3, "r3"))
    await store.put_account(account(100, "r100", currency="EUR"))
    await store.put_account(account(4, "r4", client="client-b"))
    assert await store.get_account(3) == account(3, "r3")
    assert await store.account_owners([3, 4, 20, 999]) == {3: "client-a", 4: "client-b", 20: "client-a"}
    assert await store.account_owners([]) == {}
    # Pages in the ids' text order ("100" < "20" < "3"), after the previous page's last id.
    page = await store.list_accounts("client-a", "", 2, "")
    assert [a.account_id for a in page] == [100, 20]
    assert [a.account_id for a in await store.list_accounts("client-a", "20", 2, "")] == [3]
    assert [a.account_id for a in await store.list_accounts("client-a", "", 10, "EUR")] == [100]
    assert await store.list_accounts("client-c", "", 10, "") == []
    # Every client's accounts, in the same text order (the read model's catch-up walks the store so).
    walked = [a.account_id for a in await store.accounts_after("", 3)]
    assert walked == [100, 20, 3]
    assert [a.account_id for a in await store.accounts_after("3", 3)] == [4]
    assert await store.accounts_after("4", 3) == []
    assert (await store.accounts_after("", 10))[-1] == account(4, "r4", client="client-b")


async def test_the_instance_marker_is_written_once(store: MetadataStore) -> None:
    assert await store.instance_marker() is None
    assert not await store.has_data()
    await store.put_instance_marker("default", 2**100 + 1)
    assert await store.instance_marker() == ("default", 2**100 + 1)
    assert not await store.has_data()  # The marker is not data.


async def test_everything_survives_a_reopen(opener: Opener) -> None:
    store = await opener()
    first = transaction("durable")
    await store.prepare([first])
    await store.record_failures([(first.transaction_id, refusal())])
    await store.put_account(account(7, "r7"))
    await store.put_instance_marker("default", 5)
    await store.close()
    reopened = await opener()
    try:
        assert (await reopened.prepare([first]))[first.transaction_id].failure == refusal()
        assert await reopened.get_account(7) == account(7, "r7")
        assert await reopened.instance_marker() == ("default", 5)
    finally:
        await reopened.close()


async def test_a_store_of_another_schema_version_is_refused(opener: Opener, tmp_path: Path) -> None:
    store = await opener()
    await store.close()
    if isinstance(store, PostgresMetadataStore):
        dsn = store.location.removeprefix("postgresql ")
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute("UPDATE ledger_schema_versions SET version = 99 WHERE component = 'metadata'")
        with pytest.raises(MetadataStoreError, match="schema version 99"):
            await opener()
    else:
        with contextlib.closing(sqlite3.connect(tmp_path / "metadata.sqlite3")) as db:
            db.execute("PRAGMA user_version = 99")
        with pytest.raises(RuntimeError, match="schema version 99"):
            await opener()


async def test_facades_sharing_postgres_preparing_one_key_at_once_agree(postgres_dsn: str) -> None:
    """Two façades (two pools) prepare the same new key with different bodies at once: exactly one
    intent is stored, and the other façade sees it as a prior (so its body never reaches the engine)."""
    first = await PostgresMetadataStore.open(postgres_dsn)
    second = await PostgresMetadataStore.open(postgres_dsn)
    try:
        for attempt in range(20):
            one, other = transaction(f"race-{attempt}", 5), transaction(f"race-{attempt}", 6)
            results = await asyncio.gather(first.prepare([one]), second.prepare([other]))
            stored = await first.get_transaction(one.transaction_id)
            assert stored is not None
            winner = one if stored.body == one.body else other
            assert stored.body == winner.body
            priors = [r.get(one.transaction_id) for r in results]
            assert sorted(p is None for p in priors) == [False, True]  # One inserted, the other saw it.
            assert [p.fingerprint for p in priors if p is not None] == [winner.fingerprint]
    finally:
        await first.close()
        await second.close()


async def test_an_unreachable_postgres_is_a_clear_error(postgres: Any) -> None:
    dsn = f"host=127.0.0.1 port={postgres.port} user=postgres dbname=missing_db connect_timeout=2"
    with pytest.raises(MetadataStoreError, match="cannot connect"):
        await PostgresMetadataStore.open(dsn)


# The crash windows of a batch, through the group committer and the real embedded engine.


@pytest.fixture
async def ledger(tmp_path: Path, store: MetadataStore) -> AsyncIterator[tuple[EmbeddedEngine, GroupCommitter]]:
    journaled = isinstance(store, JournalMetadataStore)
    engine = store.engine if isinstance(store, JournalMetadataStore) else await EmbeddedEngine.open(tmp_path / "engine")
    ledger_id = CURRENCIES.get("USD").ledger
    await engine.create_accounts(
        [
            Account(id=int(ALICE), ledger=ledger_id, code=1, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
            Account(id=int(BOB), ledger=ledger_id, code=1),
            Account(id=settlement_account_id("USD"), ledger=ledger_id, code=ACCOUNT_CODE_SETTLEMENT),
        ]
    )
    committer = GroupCommitter(engine, store)
    committer.start()
    try:
        yield engine, committer
    finally:
        await committer.close()
        if not journaled:  # The journal store closes its own engine.
            await engine.close()


async def test_an_intent_the_engine_never_saw_is_committed_by_the_retry(
    store: MetadataStore, ledger: tuple[EmbeddedEngine, GroupCommitter]
) -> None:
    engine, committer = ledger
    lost = transaction("lost")
    assert await store.prepare([lost]) == {}  # Crash here: the intent is durable, the engine never saw it.
    outcome = await submit(committer, lost)
    assert isinstance(outcome, Committed) and not outcome.deduplicated
    assert [x.id for x in await engine.lookup_transfers([x.id for x in lost.transfers])] == [
        x.id for x in lost.transfers
    ]


async def test_a_commit_whose_answer_was_lost_is_replayed(
    store: MetadataStore, ledger: tuple[EmbeddedEngine, GroupCommitter]
) -> None:
    engine, committer = ledger
    answered_never = transaction("answered-never")
    await store.prepare([answered_never])
    results = await engine.create_transfers(list(answered_never.transfers))
    assert {r.status for r in results} == {CreateTransferStatus.CREATED}  # Crash here: never answered.
    outcome = await submit(committer, answered_never)
    assert isinstance(outcome, Committed) and outcome.deduplicated and outcome.timestamp == results[0].timestamp
    reused = await submit(committer, transaction("answered-never", 6))
    assert isinstance(reused, LedgerError) and reused.reason == "IDEMPOTENCY_KEY_REUSED"


async def test_a_failure_is_recorded_before_the_answer_and_replayed(
    store: MetadataStore, ledger: tuple[EmbeddedEngine, GroupCommitter]
) -> None:
    _, committer = ledger
    overdraft = map_post(
        "client-a", PostRequest("overdraft", [leg(pb.LEG_TYPE_DEBIT, ALICE, 50)], Metadata()), currencies=CURRENCIES
    )
    outcome = await submit(committer, overdraft)
    assert isinstance(outcome, LedgerError)
    # Answered, so recorded: the store holds the original reason for every later retry.
    assert (await store.prepare([overdraft]))[overdraft.transaction_id].failure == outcome.to_json()
    again = await submit(committer, overdraft)
    assert isinstance(again, LedgerError) and again.to_json() == outcome.to_json()


async def test_a_failure_whose_record_was_lost_is_reported_consistently(
    store: MetadataStore, ledger: tuple[EmbeddedEngine, GroupCommitter]
) -> None:
    engine, committer = ledger
    refused = map_post(
        "client-a", PostRequest("refused", [leg(pb.LEG_TYPE_DEBIT, ALICE, 50)], Metadata()), currencies=CURRENCIES
    )
    await store.prepare([refused])
    [result] = await engine.create_transfers(list(refused.transfers))
    assert result.status == CreateTransferStatus.EXCEEDS_CREDITS  # Crash here: no failure recorded.
    for _ in range(2):  # The first retry learns it from the engine (id burned) and records it.
        outcome = await submit(committer, refused)
        assert isinstance(outcome, LedgerError) and outcome.reason == "IDEMPOTENCY_KEY_FAILED"
    prior = (await store.prepare([refused]))[refused.transaction_id]
    assert prior.failure is not None and LedgerError.from_json(prior.failure).reason == "IDEMPOTENCY_KEY_FAILED"
