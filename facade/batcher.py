"""Group commit: concurrent transactions coalesce into engine batches of up to 8189 transfers.

Every edge (gRPC unary, batch and stream RPCs, the Kafka consumer) submits here. One drain task takes
whatever is queued (up to `batch_transfers_max` transfers, never splitting a transaction) and commits
it as one unit, so the durable writes per batch are the same whatever its size:
1. the metadata store's `prepare`: idempotency lookup and the intents of new transactions (one fsync;
   none when nothing is new);
2. the engine batch (one fsync);
3. the outcomes of transactions the engine refused (one fsync; none when nothing failed).
Successes are answered after 2, failures after 3: an ack always means durable.

Idempotency is decided here, against the store, in batch order: a transaction whose key is stored
with a different fingerprint is IDEMPOTENCY_KEY_REUSED; one whose failure is stored gets that failure
again; a stored intent goes to the engine again (its `exists` proves the earlier commit and carries
the original timestamp). A key repeated while its first occurrence is committing (in the same batch
or one in flight) is folded into it: only the first reaches the store and the engine, the repeats
share its outcome (as replays). So an outcome is only ever read from the store once it is recorded.

Two batches commit at once (BATCHES_IN_FLIGHT_MAX): the engine write of one overlaps the metadata
write of the next. The store's and the engine's single threads keep submission order.

Backpressure: the queue holds at most `queue_transfers_max` transfers; beyond that `submit` raises
QueueFullError at once (the edge answers RESOURCE_EXHAUSTED with a retry hint, or the Kafka consumer
pauses), instead of letting latency grow without bound. A request whose deadline passes while queued
is dropped before it reaches the store or the engine (DEADLINE_EXCEEDED); once in a batch it completes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN_CONTEXT, Link, NonRecordingSpan, SpanContext

from facade.domain.mapping import DomainError, MappedTransaction, transfer_status_error
from facade.engine.protocol import Engine
from facade.engine.types import BATCH_EVENTS_MAX, CreateTransferResult, CreateTransferStatus
from facade.metadata_store import MetadataStore
from facade.observability import metrics
from facade.observability.tracing import tracer

BATCH_SPAN_LINKS_MAX = 128
"""Links on one engine.batch span (one per traced request it carries); a bound keeps spans small."""
BATCHES_IN_FLIGHT_MAX = 2
"""Batches committing at once. Two overlap one batch's engine write with the next one's metadata write;
the store's and the engine's single threads still run the writes in the order they were submitted."""


class QueueFullError(Exception):
    """The write queue is full: retry after a short delay."""


class DeadlineExceededError(Exception):
    """The caller's deadline passed before its transaction reached the engine."""


@dataclass(frozen=True, slots=True)
class Committed:
    """The transaction is in the engine: its (first leg's) engine timestamp, and whether this request
    replayed an earlier identical one."""

    timestamp: int
    deduplicated: bool


Outcome = Committed | DomainError


def key_reused() -> DomainError:
    return DomainError(
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
        "this idempotency key was used with a different payload",
    )


def judge(results: Sequence[CreateTransferResult]) -> Outcome:
    """A transaction's outcome from its legs' engine results (one linked chain)."""
    first = results[0].status
    if first == CreateTransferStatus.EXISTS:
        # This exact transaction was committed before (a retry, possibly after a crash that lost its
        # answer). Chains are atomic, so every leg exists; the `exists` broke this chain, which is why
        # later legs answer LINKED_EVENT_FAILED. The timestamp is the original's.
        return Committed(results[0].timestamp, deduplicated=True)
    for index, result in enumerate(results):
        if result.status != CreateTransferStatus.CREATED and result.status != CreateTransferStatus.LINKED_EVENT_FAILED:
            return transfer_status_error(result.status, index)
    assert all(r.status == CreateTransferStatus.CREATED for r in results), results
    return Committed(results[0].timestamp, deduplicated=False)


@dataclass(slots=True)
class _Item:
    transaction: MappedTransaction
    deadline: float | None
    span_context: SpanContext = INVALID_SPAN_CONTEXT
    """The submitter's span (its RPC or Kafka batch): the engine batch is traced as its child and links it."""
    future: asyncio.Future[Outcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def resolve(self, outcome: Outcome) -> None:
        if not self.future.done():
            self.future.set_result(outcome)


def _batch_parentage(batch: Sequence[_Item]) -> tuple[otel_context.Context, list[Link]]:
    """A batch serves many requests: its span is a child of the first traced one (so a request's
    trace shows its batch) and links every traced request it carries (so each trace can find it)."""
    contexts: dict[int, SpanContext] = {}
    for item in batch:
        if item.span_context.is_valid and len(contexts) < BATCH_SPAN_LINKS_MAX:
            contexts.setdefault(item.span_context.span_id, item.span_context)
    if not contexts:
        return otel_context.Context(), []
    first = next(iter(contexts.values()))
    return trace.set_span_in_context(NonRecordingSpan(first)), [Link(c) for c in contexts.values()]


class GroupCommitter:
    def __init__(
        self,
        engine: Engine,
        store: MetadataStore,
        queue_transfers_max: int = 65_536,
        batch_transfers_max: int = BATCH_EVENTS_MAX,
    ) -> None:
        assert 0 < batch_transfers_max <= BATCH_EVENTS_MAX
        assert queue_transfers_max >= 1
        self._engine = engine
        self._store = store
        self._queue: deque[_Item] = deque()
        self._queued_transfers = 0
        self._queue_transfers_max = queue_transfers_max
        self._batch_transfers_max = batch_transfers_max
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._leaders: dict[int, _Item] = {}
        """Transaction id → the item carrying it to the store and engine, while its batch commits."""

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
    ) -> list[asyncio.Future[Outcome]]:
        """Queues transactions (all or none); each future resolves with the transaction's outcome once
        it is durable. `deadline` is a time.monotonic() value."""
        if self._closing:
            raise QueueFullError("shutting down")
        count = 0
        for transaction in transactions:
            count += len(transaction.transfers)
        # An empty queue admits any one submission (bounded by the API's batch limit), so a batch larger
        # than the queue is not refused forever; otherwise the bound holds.
        if self._queued_transfers and self._queued_transfers + count > self._queue_transfers_max:
            metrics.backpressure_rejections_total.labels("batcher").inc()
            raise QueueFullError(f"write queue full ({self._queued_transfers} transfers queued)")
        span_context = trace.get_current_span().get_span_context()
        items = [_Item(t, deadline, span_context) for t in transactions]
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
        assert transfers <= self._batch_transfers_max or len(batch) == 1
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
                in_flight.add(asyncio.create_task(self._commit_or_fail(batch)))
                # Yield once so this batch's first write is queued before the next batch forms.
                await asyncio.sleep(0)
        if in_flight:
            await asyncio.wait(in_flight)

    async def _commit_or_fail(self, batch: list[_Item]) -> None:
        try:
            await self._commit(batch)
        except Exception as error:  # The batch's callers get the error; the committer lives on.
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
        finally:
            for item in batch:
                if self._leaders.get(item.transaction.transaction_id) is item:
                    del self._leaders[item.transaction.transaction_id]

    async def _commit(self, batch: list[_Item]) -> None:
        # Fold repeated keys into their first occurrence (the leader), in this batch or one in flight:
        # an outcome not yet recorded must never be read from the store.
        leaders: dict[int, _Item] = {}
        followers: list[tuple[_Item, _Item]] = []
        for item in batch:
            leader = self._leaders.setdefault(item.transaction.transaction_id, item)
            if leader is item:
                leaders[item.transaction.transaction_id] = item
            else:
                followers.append((item, leader))
        parent, links = _batch_parentage(batch)
        with tracer().start_as_current_span("engine.batch", context=parent, links=links) as span:
            span.set_attribute("ledger.batch.transactions", len(batch))
            priors = await self._store.prepare([item.transaction for item in leaders.values()])
            submitted: list[_Item] = []
            for item in leaders.values():
                prior = priors.get(item.transaction.transaction_id)
                if prior is None:
                    submitted.append(item)
                elif prior.fingerprint != item.transaction.fingerprint:
                    item.resolve(key_reused())
                elif prior.failure is not None:
                    item.resolve(DomainError.from_json(prior.failure))
                else:
                    submitted.append(item)  # An intent: committed before or not, the engine knows.
            if submitted:
                await self._submit(submitted)
            span.set_attribute("ledger.batch.transfers", sum(len(i.transaction.transfers) for i in submitted))
        for item, leader in followers:
            if item.transaction.fingerprint != leader.transaction.fingerprint:
                item.resolve(key_reused())
                continue
            outcome = await asyncio.shield(leader.future)
            item.resolve(Committed(outcome.timestamp, True) if isinstance(outcome, Committed) else outcome)

    async def _submit(self, items: list[_Item]) -> None:
        transfers = [transfer for item in items for transfer in item.transaction.transfers]
        started = time.perf_counter()
        results = await self._engine.create_transfers(transfers)
        assert len(results) == len(transfers)
        metrics.engine_batch_size.labels("create_transfers").observe(len(transfers))
        metrics.engine_batch_duration_seconds.labels("create_transfers").observe(time.perf_counter() - started)
        for status, count in Counter(r.status for r in results).items():
            metrics.engine_results_total.labels("create_transfers", status.name).inc(count)
        failed: list[tuple[_Item, DomainError]] = []
        offset = 0
        for item in items:
            size = len(item.transaction.transfers)
            outcome = judge(results[offset : offset + size])
            offset += size
            if isinstance(outcome, Committed):
                item.resolve(outcome)  # Durable in the engine: answer now.
            else:
                failed.append((item, outcome))
        if failed:
            try:
                await self._store.record_failures([(i.transaction.transaction_id, e.to_json()) for i, e in failed])
            except Exception as error:
                for item, _ in failed:
                    item.future.set_exception(error)
                raise
            for item, failure in failed:
                item.resolve(failure)


async def wait_all(futures: Sequence[asyncio.Future[Outcome]]) -> list[Outcome | BaseException]:
    """Awaits every future; a caller that gives up does not cancel work already queued."""
    results: list[Outcome | BaseException] = []
    for future in futures:
        try:
            results.append(await asyncio.shield(future))
        except Exception as error:  # Returned per item: one failure must not hide the others.
            results.append(error)
    return results
