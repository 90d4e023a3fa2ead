"""Group commit: concurrent transactions coalesce into engine batches of up to 8189 transfers.

Every edge (gRPC unary, batch and stream RPCs, the Kafka consumer) submits here. One drain task takes
whatever is queued (up to `batch_transfers_max` transfers, never splitting a transaction), and per
batch performs exactly three durable writes whatever the batch size: the metadata intents, the engine
batch, the outcomes. Only then are the waiting callers answered: an ack always means durable.

Backpressure: the queue holds at most `queue_transfers_max` transfers; beyond that `submit` raises
QueueFullError at once (the edge answers RESOURCE_EXHAUSTED with a retry hint, or the Kafka consumer
pauses), instead of letting latency grow without bound. A request whose deadline passes while queued
is dropped before it reaches the engine (DEADLINE_EXCEEDED); once in a batch it completes.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from facade.domain.mapping import MappedTransaction
from facade.engine.protocol import Engine
from facade.engine.types import BATCH_EVENTS_MAX, CreateTransferResult
from facade.metadata_store import MetadataStore
from facade.observability import metrics
from facade.observability.tracing import tracer

BATCHES_IN_FLIGHT_MAX = 2
"""Batches committing at once. Two overlap one batch's engine write with the next one's metadata write;
the engine's single writer thread still applies batches in the order they were submitted."""


class QueueFullError(Exception):
    """The write queue is full: retry after a short delay."""


class DeadlineExceededError(Exception):
    """The caller's deadline passed before its transaction reached the engine."""


@dataclass(slots=True)
class _Item:
    transaction: MappedTransaction
    deadline: float | None
    future: asyncio.Future[list[CreateTransferResult]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


Outcome = tuple[int, str, dict[str, object]]
"""(transaction id, 'committed' | 'failed', outcome) as the metadata store records it."""


class OutcomeJudge:
    """Turns a transaction's engine results into its durable outcome. Implemented by the service."""

    def judge(self, transaction: MappedTransaction, results: list[CreateTransferResult]) -> Outcome:
        raise NotImplementedError


class GroupCommitter:
    def __init__(
        self,
        engine: Engine,
        store: MetadataStore,
        judge: OutcomeJudge,
        queue_transfers_max: int = 65_536,
        batch_transfers_max: int = BATCH_EVENTS_MAX,
    ) -> None:
        assert 0 < batch_transfers_max <= BATCH_EVENTS_MAX
        assert queue_transfers_max >= batch_transfers_max
        self._engine = engine
        self._store = store
        self._judge = judge
        self._queue: deque[_Item] = deque()
        self._queued_transfers = 0
        self._queue_transfers_max = queue_transfers_max
        self._batch_transfers_max = batch_transfers_max
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._drain(), name="group-commit")

    async def close(self) -> None:
        """Finishes what is queued, then stops."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    @property
    def queued_transfers(self) -> int:
        return self._queued_transfers

    def submit(
        self, transactions: Sequence[MappedTransaction], deadline: float | None = None
    ) -> list[asyncio.Future[list[CreateTransferResult]]]:
        """Queues transactions (all or none); each future resolves with its legs' engine results once
        the batch holding it is durable. `deadline` is a time.monotonic() value."""
        if self._closing:
            raise QueueFullError("shutting down")
        count = sum(len(t.transfers) for t in transactions)
        if self._queued_transfers + count > self._queue_transfers_max:
            metrics.backpressure_rejections_total.labels("batcher").inc()
            raise QueueFullError(f"write queue full ({self._queued_transfers} transfers queued)")
        items = [_Item(t, deadline) for t in transactions]
        self._queue.extend(items)
        self._queued_transfers += count
        metrics.write_queue_depth.set(self._queued_transfers)
        self._wakeup.set()
        return [item.future for item in items]

    def _take_batch(self) -> list[_Item]:
        batch: list[_Item] = []
        transfers = 0
        now = time.monotonic()
        while self._queue:
            item = self._queue[0]
            size = len(item.transaction.transfers)
            if batch and transfers + size > self._batch_transfers_max:
                break
            self._queue.popleft()
            self._queued_transfers -= size
            if item.future.cancelled():
                continue
            if item.deadline is not None and item.deadline <= now:
                item.future.set_exception(DeadlineExceededError("deadline passed while queued"))
                continue
            batch.append(item)
            transfers += size
        metrics.write_queue_depth.set(self._queued_transfers)
        return batch

    async def _drain(self) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        while True:
            if not self._queue:
                if self._closing:
                    break
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if len(in_flight) >= BATCHES_IN_FLIGHT_MAX:
                _, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            batch = self._take_batch()
            if batch:
                task = asyncio.create_task(self._commit(batch))
                in_flight.add(task)
                # Yield once so the new batch's first write is queued before the next batch forms.
                await asyncio.sleep(0)
        if in_flight:
            await asyncio.wait(in_flight)

    async def _commit(self, batch: list[_Item]) -> None:
        transactions = [item.transaction for item in batch]
        transfers = [x for t in transactions for x in t.transfers]
        with tracer().start_as_current_span("engine.batch") as span:
            span.set_attribute("ledger.batch.transactions", len(batch))
            span.set_attribute("ledger.batch.transfers", len(transfers))
            started = time.perf_counter()
            try:
                await self._store.record_intents(transactions)
                results = await self._engine.create_transfers(transfers)
                outcomes: list[Outcome] = []
                per_transaction: list[list[CreateTransferResult]] = []
                offset = 0
                for transaction in transactions:
                    legs = results[offset : offset + len(transaction.transfers)]
                    offset += len(transaction.transfers)
                    per_transaction.append(legs)
                    outcomes.append(self._judge.judge(transaction, legs))
                assert offset == len(results)
                await self._store.record_outcomes(outcomes)
            except BaseException as error:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)
                if not isinstance(error, Exception):
                    raise
                return
            metrics.engine_batch_size.labels("create_transfers").observe(len(transfers))
            metrics.engine_batch_duration_seconds.labels("create_transfers").observe(time.perf_counter() - started)
            for result in results:
                metrics.engine_results_total.labels("create_transfers", result.status.name).inc()
        for item, legs in zip(batch, per_transaction, strict=True):
            if not item.future.done():
                item.future.set_result(legs)


async def wait_all(
    futures: Sequence[asyncio.Future[list[CreateTransferResult]]],
) -> list[list[CreateTransferResult] | BaseException]:
    """Awaits every future; a caller that gives up does not cancel work already queued."""
    results: list[list[CreateTransferResult] | BaseException] = []
    for future in futures:
        try:
            results.append(await asyncio.shield(future))
        except Exception as error:  # Returned per item: one failure must not hide the others.
            results.append(error)
    return results
