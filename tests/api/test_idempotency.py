"""Idempotency across the crash windows of the write protocol (intent → engine → failure record), with
the real store and engine, on both metadata stores (SQLite and PostgreSQL), and the token cache's expiry."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from facade.api.errors import error_info
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.auth import CLOCK_LEEWAY_SECONDS, SCOPES_ALL, Authenticator, AuthError, issue_token
from facade.domain.transactions import MappedTransaction, Metadata, PostRequest, map_post
from facade.engine.types import CreateTransferStatus
from facade.metadata_store import MetadataStore
from facade.settings import AuthSettings

from .conftest import Api, credit, debit, open_api
from .test_api import expect_error


@pytest.fixture
async def api(tmp_path: Path, metadata_backend: dict[str, Any]) -> AsyncIterator[Api]:
    """The server of tests/api/conftest.py, once per metadata store backend."""
    instance = await open_api(tmp_path, **metadata_backend)
    try:
        yield instance
    finally:
        await instance.channel.close()
        await instance.server.stop()


def request(key: str, *legs: pb.Leg) -> pb.PostTransactionRequest:
    return pb.PostTransactionRequest(idempotency_key=key, legs=list(legs))


def mapped(api: Api, key: str, *legs: pb.Leg) -> MappedTransaction:
    return map_post("client-a", PostRequest(key, list(legs), Metadata()), currencies=api.server.service.currencies)


async def get_by_key(api: Api, key: str) -> pb.Transaction:
    response: pb.Transaction = await api.stub.GetTransaction(
        pb.GetTransactionRequest(idempotency_key=key), metadata=api.auth()
    )
    return response


async def test_a_key_repeated_in_one_call_replays_the_first(api: Api) -> None:
    alice = await api.account("alice")
    response = await api.stub.PostTransactions(
        pb.PostTransactionsRequest(
            transactions=[
                request("dup", credit(alice, 5)),
                request("dup", credit(alice, 5)),
                request("dup", credit(alice, 6)),
                request("dup-fail", debit(alice, 100)),
                request("dup-fail", debit(alice, 100)),
            ]
        ),
        metadata=api.auth(),
    )
    first, repeat, reused, failed, failed_again = response.results
    assert not first.transaction.deduplicated and first.transaction.committed_at_ns > 0
    assert repeat.transaction.deduplicated and repeat.transaction.committed_at_ns == first.transaction.committed_at_ns
    assert reused.error.reason == "IDEMPOTENCY_KEY_REUSED"
    # The repeat of a failure gets the same failure, not the engine's id_already_failed.
    assert failed.error.reason == failed_again.error.reason == "INSUFFICIENT_FUNDS"
    assert await api.available(alice) == 5


async def test_an_intent_the_engine_never_saw_is_committed_by_the_retry(api: Api) -> None:
    """Crash after the intent was durable, before the engine batch."""
    alice = await api.account("alice")
    assert await api.server.store.prepare([mapped(api, "lost", credit(alice, 9))]) == {}
    await expect_error(get_by_key(api, "lost"), grpc.StatusCode.NOT_FOUND, "TRANSACTION_NOT_FOUND")
    retried = await api.post("lost", credit(alice, 9))
    assert not retried.deduplicated and await api.available(alice) == 9
    assert (await get_by_key(api, "lost")).committed_at_ns == retried.committed_at_ns


async def test_a_commit_whose_answer_was_lost_is_replayed_from_the_engine(api: Api) -> None:
    """Crash after the engine batch, before the caller was answered."""
    alice = await api.account("alice")
    transaction = mapped(api, "answered-never", credit(alice, 4), credit(alice, 3))
    await api.server.store.prepare([transaction])
    results = await api.server.engine.create_transfers(transaction.transfers)
    assert [r.status for r in results] == [CreateTransferStatus.CREATED] * 2
    retried = await api.post("answered-never", credit(alice, 4), credit(alice, 3))
    assert retried.deduplicated and retried.committed_at_ns == results[0].timestamp
    assert await api.available(alice) == 7
    # A different payload under that key is still refused.
    await expect_error(
        api.post("answered-never", credit(alice, 4)), grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED"
    )


async def test_a_failure_whose_record_was_lost_is_reported_consistently(api: Api) -> None:
    """Crash after the engine refused (and burned the id), before the failure was recorded."""
    alice = await api.account("alice")
    transaction = mapped(api, "refused", debit(alice, 5))
    await api.server.store.prepare([transaction])
    [result] = await api.server.engine.create_transfers(transaction.transfers)
    assert result.status == CreateTransferStatus.EXCEEDS_CREDITS
    for _ in range(2):  # The first retry learns the outcome from the engine and records it.
        await expect_error(
            api.post("refused", debit(alice, 5)), grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_FAILED"
        )
    await api.post("fund", credit(alice, 10))
    await expect_error(api.post("refused", debit(alice, 5)), grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_FAILED")
    assert await api.available(alice) == 10


async def test_transactions_are_found_after_a_restart(api: Api) -> None:
    alice = await api.account("alice")
    posted = await api.post("before-restart", credit(alice, 12), metadata=pb.TransactionMetadata(description="d"))
    await api.restart()
    by_id = await api.stub.GetTransaction(
        pb.GetTransactionRequest(transaction_id=posted.transaction_id), metadata=api.auth()
    )
    assert by_id == posted


async def test_a_cached_token_still_expires() -> None:
    settings = AuthSettings()
    # Valid for one more second, counting the clock leeway.
    token = issue_token(settings, "client", SCOPES_ALL, ttl_seconds=1 - CLOCK_LEEWAY_SECONDS)
    authenticator = Authenticator(settings)
    assert authenticator.authenticate(f"Bearer {token}").client_id == "client"
    assert authenticator.authenticate(f"Bearer {token}").client_id == "client"  # From the cache.
    await asyncio.sleep(1.5)
    with pytest.raises(AuthError) as error:
        authenticator.authenticate(f"Bearer {token}")
    assert error.value.reason == "TOKEN_EXPIRED"


async def test_an_older_store_layout_is_refused_not_misread(tmp_path: Path) -> None:
    path = tmp_path / "metadata.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE transactions (transaction_id TEXT PRIMARY KEY)")
    with pytest.raises(RuntimeError, match="schema version 1"):
        await MetadataStore.open(path)
    fresh = await MetadataStore.open(tmp_path / "fresh.sqlite3")
    await fresh.close()
    reopened = await MetadataStore.open(tmp_path / "fresh.sqlite3")
    await reopened.close()


async def test_concurrent_repeats_across_batches_share_the_first_outcome(
    tmp_path: Path, metadata_backend: dict[str, Any]
) -> None:
    """One transfer per batch, so repeats land in later batches, committing while the first does."""
    api = await open_api(tmp_path, batch_transfers_max=1, **metadata_backend)
    try:
        alice = await api.account("alice")
        await api.post("fund", credit(alice, 10))
        posts = [api.post("twice", debit(alice, 11)) for _ in range(4)] + [api.post("ok", debit(alice, 3))]
        outcomes = await asyncio.gather(*posts, return_exceptions=True)
        failures = [o for o in outcomes[:4] if isinstance(o, grpc.aio.AioRpcError)]
        assert len(failures) == 4
        assert [info.reason if (info := error_info(f)) else "" for f in failures] == ["INSUFFICIENT_FUNDS"] * 4
        assert await api.available(alice) == 7
    finally:
        await api.channel.close()
        await api.server.stop()
