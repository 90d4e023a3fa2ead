"""Admission under load: small writes go first, refusals cost no decoding, refused callers are paced.

Over loopback on the real service with the engine's writer held by a gate (tests.api.test_admission), so
the queue's state is exact; what is checked is the engine's commit order and balances and the answers,
never a duration. The pacer is checked on a simulated clock.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from facade.api.errors import error_info
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.batcher import (
    BATCH_TRANSFERS_MIN,
    PACE_REFUSALS_PER_ADMISSION,
    PACE_REFUSALS_PER_SECOND_MIN,
    PACE_SECONDS_MAX,
    PACE_WINDOW_SECONDS,
    RetryPacer,
)
from facade.engine.types import BATCH_EVENTS_MAX
from tests.api.conftest import Api, credit
from tests.api.test_admission import (
    EngineGate,
    committer_idle,
    fill_in_flight,
    retry_delay_seconds,
    serving,
    until,
)

BULK_TRANSACTIONS = 20
PACE_WINDOWS = 12
LARGE_TRANSACTIONS = 600
HELD_SECONDS = 0.05


async def test_a_small_write_commits_before_a_bulk_request_queued_ahead_of_it(tmp_path: Path) -> None:
    async with serving(tmp_path) as http:
        api = http.api
        alice = await api.account("alice")
        gate = EngineGate(api.server.engine)
        try:
            await small_before_bulk(api, alice, gate)
        finally:
            await gate.open()  # Else a failure above would hang the teardown behind the held engine.


async def small_before_bulk(api: Api, alice: str, gate: EngineGate) -> None:
    committer = api.server.service.committer
    in_flight = await fill_in_flight(api, alice)
    request = pb.PostTransactionsRequest(
        transactions=[
            pb.PostTransactionRequest(idempotency_key=f"bulk-{i}", legs=[credit(alice, 1)])
            for i in range(BULK_TRANSACTIONS)
        ]
    )
    bulk = asyncio.ensure_future(api.stub.PostTransactions(request, metadata=api.auth()))
    await until(lambda: committer.queued_transfers == BULK_TRANSACTIONS)
    small = asyncio.create_task(api.post("small", credit(alice, 100)))
    await until(lambda: committer.queued_transfers == BULK_TRANSACTIONS + 1)

    await gate.open()
    small_transaction, bulk_response = await asyncio.gather(small, bulk)
    await asyncio.gather(*in_flight)
    await committer_idle(api.server.service)
    # Engine timestamps order every commit: the small write, queued last, went to the engine first.
    bulk_timestamps = [result.transaction.committed_at_ns for result in bulk_response.results]
    assert len(bulk_timestamps) == BULK_TRANSACTIONS and all(bulk_timestamps)
    assert small_transaction.committed_at_ns < min(bulk_timestamps)
    # The bulk request's transactions committed together (without a time cap, api.write_batch_ms_max, a
    # submission goes in one batch up to the engine's limit).
    assert max(bulk_timestamps) - min(bulk_timestamps) == BULK_TRANSACTIONS - 1
    assert await api.available(alice) == 2 + BULK_TRANSACTIONS + 100


async def test_a_refused_write_is_answered_before_its_request_is_decoded_or_its_caller_authenticated(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, write_queue_transfers_max=1) as http:
        api = http.api
        alice = await api.account("alice")
        gate = EngineGate(api.server.engine)
        try:
            await refused_at_the_door(api, alice, gate)
        finally:
            await gate.open()


async def refused_at_the_door(api: Api, alice: str, gate: EngineGate) -> None:
    in_flight = await fill_in_flight(api, alice)
    queued = asyncio.create_task(api.post("queued", credit(alice, 1)))
    await until(lambda: api.server.service.committer.queued_transfers == 1)

    # Bytes that are no protobuf, without a token: the door answers before either would be noticed.
    for method in ("/ledger.v1.Ledger/PostTransaction", "/ledger.v1.Ledger/PostTransactions"):
        call: Any = api.channel.unary_unary(method)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(b"\xff\x00 not a protobuf message")
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, method
        assert (info := error_info(refused.value)) and info.reason == "WRITE_QUEUE_FULL"
        assert (delay := retry_delay_seconds(refused.value)) is not None and delay > 0

    await gate.open()
    await asyncio.gather(*in_flight, queued)
    await committer_idle(api.server.service)
    # Once there is room the same garbage reaches the guard (INVALID_ARGUMENT after authentication).
    raw: Any = api.channel.unary_unary("/ledger.v1.Ledger/PostTransaction")
    with pytest.raises(grpc.aio.AioRpcError) as malformed:
        await raw(b"\xff\x00", metadata=api.auth())
    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await raw(b"\xff\x00")
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await api.available(alice) == 3, "the refused writes wrote nothing"


def test_retry_pace_stretches_while_refusals_outnumber_their_share_and_relaxes_after() -> None:
    now = [0.0]
    pacer = RetryPacer(0.05, clock=lambda: now[0])
    refusals, admissions = 400, 100  # Per window: four times more refused calls than admitted ones.
    assert PACE_REFUSALS_PER_ADMISSION == 0.25  # The share below: 16 times more refusals than afforded.
    assert refusals > PACE_REFUSALS_PER_SECOND_MIN * PACE_WINDOW_SECONDS
    paces = []
    for _ in range(PACE_WINDOWS):
        for _ in range(admissions):
            pacer.admitted()
        for _ in range(refusals):
            pacer.refused()
        now[0] += PACE_WINDOW_SECONDS
        pacer.admitted()  # The first event of a new window adjusts the pace.
        paces.append(pacer.seconds)
    assert paces[0] == pytest.approx(0.05 * 4, rel=0.01), "sqrt(400 / (0.25 * 100)): four times"
    assert all(later >= earlier for earlier, later in itertools.pairwise(paces))
    assert paces[-1] == PACE_SECONDS_MAX, "bounded"

    relaxed = []
    for _ in range(PACE_WINDOWS):
        for _ in range(admissions):
            pacer.admitted()
        now[0] += PACE_WINDOW_SECONDS
        pacer.admitted()
        relaxed.append(pacer.seconds)
    assert relaxed[0] == pytest.approx(PACE_SECONDS_MAX / 2), "a window without refusals halves it"
    assert relaxed[-1] == 0.05, "back to the floor"

    # Few refusals while little is admitted are afforded: the pace stays at its floor.
    for _ in range(PACE_WINDOWS):
        for _ in range(int(PACE_REFUSALS_PER_SECOND_MIN * PACE_WINDOW_SECONDS) - 1):  # + the one below
            pacer.refused()
        now[0] += PACE_WINDOW_SECONDS
        pacer.refused()
        assert pacer.seconds == 0.05


async def test_while_small_writes_stream_bulk_requests_go_in_time_capped_chunks_with_small_writes_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(tmp_path, write_batch_ms_max=10) as http:
        api = http.api
        alice = await api.account("alice")
        committer = api.server.service.committer
        # A slow engine: 4 ms a batch plus 100 µs a transfer: 10 ms holds less than the smallest cap
        # (and both requests queued are still admitted: ~0.1 s of work).
        for transfers in (1, 1000, 1, 1000):
            committer.cost.observe(transfers, 0.004 + transfers * 0.0001)
        assert not committer.interactive_stream
        assert committer.batch_transfers_cap == BATCH_EVENTS_MAX, "no small writes about: batches uncapped"
        sizes = record_engine_batches(api, monkeypatch)
        gate = EngineGate(api.server.engine)
        try:
            small, large = await chunked(api, alice, gate)
        finally:
            await gate.open()
        await committer_idle(api.server.service)
        # The two single writes in flight, then the bulk requests in chunks of at most the cap, never whole.
        assert sizes[:2] == [1, 1]
        chunks = sizes[2:]
        assert sum(chunks) == 2 * LARGE_TRANSACTIONS + len(small)
        assert all(size <= BATCH_TRANSFERS_MIN for size in chunks), chunks
        assert len(chunks) >= -(-(2 * LARGE_TRANSACTIONS + len(small)) // BATCH_TRANSFERS_MIN)
        # Every transaction of both requests answered committed, each once; the small writes, queued
        # last, in the first chunk, before the first request's last transaction.
        for response in large:
            timestamps = [result.transaction.committed_at_ns for result in response.results]
            assert len(timestamps) == LARGE_TRANSACTIONS and all(timestamps)
            assert len(set(timestamps)) == LARGE_TRANSACTIONS
        first_request_done = max(result.transaction.committed_at_ns for result in large[0].results)
        assert all(transaction.committed_at_ns < first_request_done for transaction in small)
        assert await api.available(alice) == 2 + 2 * LARGE_TRANSACTIONS + len(small)


def record_engine_batches(api: Api, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every engine create_transfers call from now on (the real engine still does each)."""
    sizes: list[int] = []
    engine: Any = api.server.engine
    create = engine.create_transfers

    async def recording(transfers: Sequence[Any], *args: Any) -> Any:
        sizes.append(len(transfers))
        return await create(transfers, *args)

    monkeypatch.setattr(engine, "create_transfers", recording)
    return sizes


async def chunked(api: Api, alice: str, gate: EngineGate) -> tuple[list[pb.Transaction], list[Any]]:
    """Two single writes in flight (so two batches that carried one), two bulk requests and two single
    writes queued behind them; then the engine runs."""
    committer = api.server.service.committer
    in_flight = await fill_in_flight(api, alice)
    requests = [
        pb.PostTransactionsRequest(
            transactions=[
                pb.PostTransactionRequest(idempotency_key=f"large-{n}-{i}", legs=[credit(alice, 1)])
                for i in range(LARGE_TRANSACTIONS)
            ]
        )
        for n in range(2)
    ]
    large = [asyncio.ensure_future(api.stub.PostTransactions(r, metadata=api.auth())) for r in requests]
    await until(lambda: committer.queued_transfers == 2 * LARGE_TRANSACTIONS)
    small = [asyncio.create_task(api.post(f"small-{n}", credit(alice, 1))) for n in range(2)]
    await until(lambda: committer.queued_transfers == 2 * LARGE_TRANSACTIONS + 2)
    assert committer.interactive_stream and committer.batch_transfers_cap == BATCH_TRANSFERS_MIN

    await gate.open()
    responses = list(await asyncio.gather(*large))
    answered = list(await asyncio.gather(*small))
    await asyncio.gather(*in_flight)
    return answered, responses


async def test_while_small_writes_stream_bulk_alone_waits_for_the_batch_in_flight_so_a_small_write_goes_first(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, write_batch_ms_max=20) as http:  # The hold-back comes with time caps.
        api = http.api
        alice = await api.account("alice")
        committer = api.server.service.committer
        for n in range(2):  # Two batches that carried a small write: a stream (interactive_stream).
            await api.post(f"earlier-{n}", credit(alice, 1))
        gate = EngineGate(api.server.engine)
        try:
            in_flight, small, bulk = await held_back(api, alice)
        finally:
            await gate.open()
        await in_flight
        await committer_idle(api.server.service)
        bulk_timestamps = [result.transaction.committed_at_ns for result in (await bulk).results]
        assert len(bulk_timestamps) == BULK_TRANSACTIONS and all(bulk_timestamps)
        # Queued after the bulk request, committed before it: the bulk request had not gone to the engine.
        assert (await small).committed_at_ns < min(bulk_timestamps)
        assert await api.available(alice) == 2 + 1 + BULK_TRANSACTIONS + 1
        assert not committer.queued_transfers


async def held_back(
    api: Api, alice: str
) -> tuple[asyncio.Task[pb.Transaction], asyncio.Task[pb.Transaction], asyncio.Future[Any]]:
    """One small write in flight (the engine held), a bulk request queued behind it, then a small write."""
    committer = api.server.service.committer
    in_flight = asyncio.create_task(api.post("in-flight", credit(alice, 1)))
    await until(lambda: committer.in_flight_transfers == 1)
    assert committer.interactive_stream
    request = pb.PostTransactionsRequest(
        transactions=[
            pb.PostTransactionRequest(idempotency_key=f"bulk-{i}", legs=[credit(alice, 1)])
            for i in range(BULK_TRANSACTIONS)
        ]
    )
    bulk = asyncio.ensure_future(api.stub.PostTransactions(request, metadata=api.auth()))
    await until(lambda: committer.queued_transfers + committer.in_flight_transfers == 1 + BULK_TRANSACTIONS)
    await asyncio.sleep(HELD_SECONDS)  # Loop turns enough for the drain task to have formed a batch.
    assert committer.in_flight_transfers == 1, "bulk alone was not held back while a batch is in flight"
    small = asyncio.create_task(api.post("small", credit(alice, 1)))
    await until(lambda: committer.in_flight_transfers == 1 + 1 + BULK_TRANSACTIONS)
    assert not committer.queued_transfers
    return in_flight, small, bulk
