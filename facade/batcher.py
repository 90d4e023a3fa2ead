"""Group commit: concurrent transactions coalesce into engine batches of up to 8189 transfers.

Every edge (gRPC unary, batch and stream RPCs, the Kafka consumer) submits here. One drain task takes
whatever is queued (up to `batch_transfers_max` transfers, or fewer while small writes wait, see below;
never splitting a transaction) and commits
it as one unit, so the durable writes per batch are the same whatever its size:
1. the metadata store's `prepare`: idempotency lookup and the intents of new transactions (one fsync;
   none when nothing is new);
2. the engine batch (one fsync);
3. the outcomes of transactions the engine refused (one fsync; none when nothing failed).
Successes are answered after 2, failures after 3: an ack always means durable.
On the embedded engine (JournalMetadataStore) 1 and 3 are part of 2: the batch's journal record
carries the intents of its new transactions and every outcome, so a batch costs one fdatasync.

Idempotency is decided here, against the store, in batch order: a transaction whose key is stored
with a different fingerprint is IDEMPOTENCY_KEY_REUSED; one whose failure is stored gets that failure
again; a stored intent goes to the engine again (its `exists` proves the earlier commit and carries
the original timestamp). A key repeated while its first occurrence is committing (in the same batch
or one in flight) is folded into it: only the first reaches the store and the engine, the repeats
share its outcome (as replays). So an outcome is only ever read from the store once it is recorded.

Two batches commit at once (BATCHES_IN_FLIGHT_MAX): the engine write of one overlaps the metadata
write of the next. The store's and the engine's single threads keep submission order.

Admission: work is admitted only if it can finish within its deadline. The committer measures its
own cost (BatchCost: fixed and per-transfer seconds of recent batches) and the event loop's lag (on a
saturated loop every await waits behind everyone else's callbacks), and refuses a
submission at once (QueueFullError: the edge answers RESOURCE_EXHAUSTED / HTTP 429 with a retry hint
computed from the expected wait, or the Kafka consumer pauses) when the work ahead of it would take
longer than the caller's remaining deadline or `queue_wait_seconds_max`, or when the queue would hold
more than `queue_transfers_max` transfers. `admit` runs the same check without queueing, so an edge can
refuse a large batch before it spends time mapping it.

Small writes first, batches short: a submission of at most INTERACTIVE_TRANSFERS_MAX transfers (a single
transaction: a unary RPC, an HTTP POST) waits in its own lane, taken first when batches form (a bulk
submission waiting keeps BULK_SHARE_MIN of each batch, so it is never starved), and admitted against that
lane and the batches in flight only. With `batch_seconds_max`, while small writes come in a stream
(GroupCommitter.interactive_stream) a batch holds no more transfers than the measured cost commits in that
time (at least BATCH_TRANSFERS_MIN), and a bulk submission is cut into chunks at transaction boundaries to
fit: a small write admitted behind a 1,000-transaction request (2,000+ transfers, ~50 ms of engine work)
waits for a short chunk, not the whole request (the engine and the store run one write at a time). Then
too a batch of bulk work alone is not formed while another commits, so a small write arriving meanwhile
goes in the next batch rather than behind a chunk formed just before it. Without a stream of small writes,
batches are as large as the engine takes (a batch's fixed cost, its fsync, paid once per 8189 transfers).

Why chunks keep TigerBeetle's batch semantics: a create_transfers batch is not atomic; each event (or
linked chain, which is what one transaction is here: facade.domain.transactions links its legs) succeeds or
fails on its own, in order. A transaction is never split, so cutting a request between transactions
changes no outcome a batch could have had: it is the same events in the same order, only with other
writes' events possibly between them, which any two concurrent requests already allow. Each chunk is
durable (its own fdatasync) before any of its transactions is answered, and the request answers when
all its chunks are (service.wait_all). A chunk not yet in a batch when the caller gives up is dropped
(its deadline, or `abandon`), exactly as a whole queued request is: nothing is committed after that.

Nothing is committed for a caller who gave up: an item whose deadline has passed, or will pass before
its batch can commit, is dropped when batches form (DEADLINE_EXCEEDED), before the metadata store's
intent or the engine sees it; so is an item whose caller was cancelled (`abandon`). Once an item is in a
batch (its intent written) it completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import prometheus_client
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN_CONTEXT, Link, NonRecordingSpan, SpanContext

from facade.domain.errors import ErrorKind, LedgerError, transfer_status_error
from facade.domain.transactions import MappedTransaction
from facade.engine.protocol import Engine
from facade.engine.types import BATCH_EVENTS_MAX, CreateTransferResult, CreateTransferStatus
from facade.metadata import JournalMetadataStore, MetadataStore
from facade.observability import metrics
from facade.observability.tracing import tracer, tracing_configured

BATCH_SPAN_LINKS_MAX = 128
"""Links on one engine.batch span (one per traced request it carries); a bound keeps spans small."""
BATCHES_IN_FLIGHT_MAX = 2
"""Batches committing at once. Two overlap one batch's engine write with the next one's metadata write;
the store's and the engine's single threads still run the writes in the order they were submitted."""
COST_EWMA_WEIGHT = 0.2
"""Weight of the newest batch in the batch cost estimate: recent enough to follow a change of load within
a few batches, smooth enough that one slow fsync does not shut the door."""
COST_SIZE_SPREAD_MIN = 32
"""Spread (standard deviation, transfers) of recent batch sizes below which no per-transfer cost is fitted:
a batch's time varies by milliseconds (fsync jitter) and a transfer costs tens of microseconds, so a slope
fitted over batches of 1-4 transfers is that jitter per transfer (measured: 2.2 ms, 70x the truth), and
pricing a 2,000-transfer batch with it (4 s) dropped queued writes that had 4.8 s left as past their deadline."""
QUEUE_WAIT_SECONDS_MAX_DEFAULT = 1.0
LOOP_PROBE_SECONDS = 0.01
"""How often the committer measures the event loop's lag (how late a timer fires)."""
LOOP_TURNS_PER_WRITE = 6
"""Event-loop turns between a write's arrival and its answer (handler, drain task, store thread done,
engine thread done, future resolved, answer sent): on a saturated loop each waits about the lag."""
RETRY_AFTER_SECONDS_MIN = 0.01
PACE_WINDOW_SECONDS = 0.5
"""How often the retry pace is adjusted to the refusals and admissions of the last window."""
PACE_REFUSALS_PER_SECOND_MIN = 50.0
"""Refusals a second the service affords even when it admits fewer calls (a refusal costs little)."""
PACE_DECAY_MIN = 0.25
PACE_REFUSALS_PER_ADMISSION = 0.25
"""Refusals per admission the pace aims at. Every call, refused or admitted, waits its turn in gRPC's
accept queue (one call per server every few event-loop turns); refused callers coming back as often as
admitted ones (the earlier 1.0) kept that queue ~180 ms long under 300 clients. At 0.25 the refused stay
away longer and the accept queue stays short (bench_overload, 300 unary clients: admitted p50 185 -> 7-17 ms)."""
PACE_SECONDS_MAX = 5.0
"""The longest pace: a caller refused at the busiest is back within seconds; clients that cap the hints
they honour (bench_overload's default caps at 1 s) would otherwise drive the pace to the 30 s bound."""
"""The most the pace shrinks in one window (a quiet window halves it: ratio 0.25, square root 0.5)."""
RETRY_JITTER = 0.5
"""Retry hints are spread over +0-50 % (never shorter than the wait they announce): callers refused together
do not all come back together."""
INTERACTIVE_TRANSFERS_MAX = 16
"""A submission of at most this many transfers (one transaction with its legs) is interactive: its own lane."""
BULK_SHARE_MIN = 0.25
"""The share of a batch kept for bulk submissions while any wait (interactive ones take the rest first)."""
BATCH_TRANSFERS_MIN = 512
"""The least a time-capped batch holds: below it the fixed cost of a batch (its fsync, its thread hand-offs)
dominates. ~13 ms of engine work here (~25 µs a transfer), while a batch's fixed cost under
bench_overload's load measured 10-20 ms: with a floor of 64 nearly every batch was held to it and the
service committed ~2,000 instead of ~5,000 transactions a second. Above the floor the measured cost rules."""
INTERACTIVE_STREAM_BATCHES = 4
INTERACTIVE_STREAM_BATCHES_MIN = 2
"""Small writes are a stream (batches are then time-capped, so the next one does not wait behind ~50 ms of
bulk work) while at least this many of the last INTERACTIVE_STREAM_BATCHES batches carried one. An
occasional write (bench_api.py's visibility probe, 5/s beside its batch clients) caps no batch but its own:
a cap there would only cost batched throughput."""
INTERACTIVE_RECENT_SECONDS = 0.05
"""Two small writes this recent also make a stream: a closed-loop caller answered by the last batch is back
within milliseconds, often just after the next batch formed (with the batch rule alone, 1 % or more of the
batches under bench_overload went uncapped, 1,000-2,000 transfers each). Two, not one: bench_api.py's probe writes
200 ms apart (with one, each probe capped the batches after it; one run of its batch rows: 0.96x / 0.89x)."""
RESOLVE_CHUNK = 512
"""Transactions judged and answered per event-loop turn once their batch is durable: a batch of thousands
answered in one go held the loop for tens of ms (measured under bench_api), every other call waiting."""
RETRY_AFTER_SECONDS_MAX = 30.0
"""Bounds of the retry hint given with a refusal (the expected time for the queue to drain)."""


class QueueFullError(Exception):
    """The write queue cannot take this work in time: retry after `retry_after_seconds`."""

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        assert RETRY_AFTER_SECONDS_MIN <= retry_after_seconds <= RETRY_AFTER_SECONDS_MAX
        self.retry_after_seconds = retry_after_seconds


class DeadlineExceededError(Exception):
    """The caller's deadline passed before its transaction reached the engine."""


@dataclass(frozen=True, slots=True)
class Committed:
    """The transaction is in the engine: its (first leg's) engine timestamp, and whether this request
    replayed an earlier identical one."""

    timestamp: int
    deduplicated: bool


Outcome = Committed | LedgerError


class RetryPacer:
    """Paces refused callers so they come back about as fast as the service admits work.

    A refusal is cheap but not free (the call is still accepted, routed and answered on the one event
    loop), and refused callers retry: with a hint only as long as the queue's drain time, hundreds of
    callers come back every few ms and their refusals alone saturate the loop, so every call, admitted or
    refused, waits in gRPC's accept queue. The pace is the hint's floor: each window it is multiplied by
    sqrt(refusals / (PACE_REFUSALS_PER_ADMISSION * admissions)) (admissions at least
    PACE_REFUSALS_PER_SECOND_MIN a second): more refusals stretch it, fewer shrink it; refusals settle at
    about a quarter of the admission rate."""

    def __init__(self, retry_after_seconds_min: float, clock: Callable[[], float] = time.monotonic) -> None:
        assert retry_after_seconds_min > 0.0
        self._seconds_min = retry_after_seconds_min
        self._clock = clock
        self.seconds = retry_after_seconds_min
        """The current pace: the least retry hint a refusal gets."""
        self._window_started = clock()
        self._refused = 0
        self._admitted = 0

    def admitted(self) -> None:
        self._admitted += 1
        self._roll()

    def refused(self) -> None:
        self._refused += 1
        self._roll()

    def _roll(self) -> None:
        now = self._clock()
        elapsed = now - self._window_started
        if elapsed < PACE_WINDOW_SECONDS:
            return
        afforded = max(PACE_REFUSALS_PER_ADMISSION * self._admitted, PACE_REFUSALS_PER_SECOND_MIN * elapsed)
        ratio = max(PACE_DECAY_MIN, self._refused / afforded)
        self.seconds = min(PACE_SECONDS_MAX, max(self._seconds_min, self.seconds * ratio**0.5))
        self._window_started, self._refused, self._admitted = now, 0, 0
        metrics.retry_pace_seconds.set(self.seconds)
        assert self._seconds_min <= self.seconds <= PACE_SECONDS_MAX


def key_reused() -> LedgerError:
    return LedgerError(
        ErrorKind.CONFLICT,
        "IDEMPOTENCY_KEY_REUSED",
        "this idempotency key was used with a different payload",
    )


_CREATED = CreateTransferStatus.CREATED
_EXISTS = CreateTransferStatus.EXISTS
_LINKED_EVENT_FAILED = CreateTransferStatus.LINKED_EVENT_FAILED


def judge(results: Sequence[CreateTransferResult]) -> Outcome:
    """A transaction's outcome from its legs' engine results (one linked chain)."""
    first = results[0].status
    if first == _EXISTS:
        # This exact transaction was committed before (a retry, possibly after a crash that lost its
        # answer). Chains are atomic, so every leg exists; the `exists` broke this chain, which is why
        # later legs answer LINKED_EVENT_FAILED. The timestamp is the original's.
        return Committed(results[0].timestamp, deduplicated=True)
    chain_failed = False
    for index, result in enumerate(results):
        status = result.status
        if status != _CREATED:
            if status != _LINKED_EVENT_FAILED:
                return transfer_status_error(status, index)
            chain_failed = True
    # Every leg created: a chain broken without a failing leg (reported above) would be an engine bug.
    assert not chain_failed, results
    return Committed(results[0].timestamp, deduplicated=False)


@dataclass(slots=True)
class _Item:
    transaction: MappedTransaction
    deadline: float | None
    future: asyncio.Future[Outcome]
    submission_transfers: int = 0
    """On the first item of a submission, the transfers of the whole submission (0 on the others): an
    uncapped batch takes a submission whole (up to the engine's limit), as before time caps existed."""
    span_context: SpanContext = INVALID_SPAN_CONTEXT
    """The submitter's span (its RPC or Kafka batch): the engine batch is traced as its child and links it."""

    def resolve(self, outcome: Outcome) -> None:
        if not self.future.done():
            self.future.set_result(outcome)


class BatchCost:
    """What a batch of n transfers costs the committer: `fixed_seconds + n * transfer_seconds`, fitted
    by least squares over recent batches (exponentially weighted).

    Why a line and not a rate: every batch pays the same fsyncs whatever its size, and the queue is
    drained in batches of up to `batch_transfers_max`. A rate measured on small batches (a quiet service)
    would price a burst of 1,000 queued transfers at 1,000 fsyncs; the line prices it at one batch.
    Until batches of sizes spread wider than COST_SIZE_SPREAD_MIN have been seen, the per-transfer cost is
    unknown (0) and a batch costs its average time."""

    def __init__(self) -> None:
        self.batches = 0
        self._n = 0.0
        self._s = 0.0
        self._nn = 0.0
        self._ns = 0.0
        self.chunk_transfer_seconds = 0.0
        """Seconds per transfer of batches of at least BATCH_TRANSFERS_MIN, their fixed cost included (0.0
        before any): the cap of time-capped batches (GroupCommitter.batch_transfers_cap). Why this and not
        the fitted line: a batch of `cap = t / chunk_transfer_seconds` transfers then takes about t, since
        the ratio measured at that size is exactly the cost of that size, and a ratio needs no spread of
        sizes (the line's slope is noise under fsync jitter and overlapping batches: under bench_overload the
        full-batch commit rate it implied ranged from 4,000 to over 1,000,000 transfers/s between runs)."""

    def observe(self, transfers: int, seconds: float) -> None:
        assert transfers >= 1 and seconds > 0.0
        n = float(transfers)
        if transfers >= BATCH_TRANSFERS_MIN:
            ratio = seconds / n
            if self.chunk_transfer_seconds == 0.0:
                self.chunk_transfer_seconds = ratio
            else:
                self.chunk_transfer_seconds += COST_EWMA_WEIGHT * (ratio - self.chunk_transfer_seconds)
        if self.batches == 0:
            self._n, self._s, self._nn, self._ns = n, seconds, n * n, n * seconds
        else:
            weight = COST_EWMA_WEIGHT
            self._n += weight * (n - self._n)
            self._s += weight * (seconds - self._s)
            self._nn += weight * (n * n - self._nn)
            self._ns += weight * (n * seconds - self._ns)
        self.batches += 1
        assert self._n >= 1.0 - 1e-9 and self._s > 0.0

    @property
    def transfer_seconds(self) -> float:
        variance = self._nn - self._n * self._n
        if variance < COST_SIZE_SPREAD_MIN * COST_SIZE_SPREAD_MIN:  # Sizes too alike: the slope would be noise.
            return 0.0
        return max(0.0, (self._ns - self._n * self._s) / variance)

    @property
    def fixed_seconds(self) -> float:
        return max(0.0, self._s - self.transfer_seconds * self._n)

    def seconds(self, transfers: int, batches: int) -> float:
        """The time to commit `transfers` transfers in `batches` batches (0.0 before any batch)."""
        assert transfers >= 0 and batches >= 0
        if self.batches == 0:
            return 0.0
        return batches * self.fixed_seconds + transfers * self.transfer_seconds


_BATCH_SIZE_METRIC = metrics.engine_batch_size.labels("create_transfers")
_BATCH_SECONDS_METRIC = metrics.engine_batch_duration_seconds.labels("create_transfers")
"""The batch metrics' children, looked up once: `labels()` takes a lock and hashes per call, per batch."""
_RESULTS_METRICS: dict[CreateTransferStatus, prometheus_client.Counter] = {}


def _results_metric(status: CreateTransferStatus) -> prometheus_client.Counter:
    """The engine results counter's child for `status` (one per status: the enum bounds the cache)."""
    child = _RESULTS_METRICS.get(status)
    if child is None:
        child = _RESULTS_METRICS[status] = metrics.engine_results_total.labels("create_transfers", status.name)
    assert len(_RESULTS_METRICS) <= len(CreateTransferStatus)
    return child


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
    def __init__(  # noqa: PLR0913  Keyword-only limits, each a setting of its own (facade.settings).
        self,
        engine: Engine,
        store: MetadataStore,
        *,
        queue_transfers_max: int = 65_536,
        batch_transfers_max: int = BATCH_EVENTS_MAX,
        queue_wait_seconds_max: float = QUEUE_WAIT_SECONDS_MAX_DEFAULT,
        retry_after_seconds_min: float = RETRY_AFTER_SECONDS_MIN,
        batch_seconds_max: float = 0.0,
    ) -> None:
        assert 0 < batch_transfers_max <= BATCH_EVENTS_MAX
        assert batch_seconds_max >= 0.0
        assert queue_transfers_max >= 1
        assert queue_wait_seconds_max > 0
        assert RETRY_AFTER_SECONDS_MIN <= retry_after_seconds_min <= RETRY_AFTER_SECONDS_MAX
        self._engine = engine
        self._store = store
        self._journaled = store if isinstance(store, JournalMetadataStore) else None
        """The embedded engine's store: intents and outcomes go in the engine batch's own append."""
        assert self._journaled is None or self._journaled.engine is engine, "a journal store and another engine"
        self._queue: deque[_Item] = deque()
        """Bulk submissions (more than INTERACTIVE_TRANSFERS_MAX transfers), in arrival order."""
        self._interactive: deque[_Item] = deque()
        """Interactive submissions, in arrival order: taken first when batches form."""
        self._queued_transfers = 0
        """Transfers queued in both lanes."""
        self._interactive_transfers = 0
        self._interactive_submitted_last = -math.inf
        self._interactive_submitted_before = -math.inf
        """time.monotonic() of the last interactive submission and of the one before it."""
        self._batches_interactive: deque[bool] = deque(maxlen=INTERACTIVE_STREAM_BATCHES)
        """Whether each of the last batches formed carried an interactive item (interactive_stream)."""
        self._batch_seconds_max = batch_seconds_max
        """0: batches of up to batch_transfers_max whatever they cost."""
        self._queue_transfers_max = queue_transfers_max
        self._batch_transfers_max = batch_transfers_max
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._leaders: dict[int, _Item] = {}
        """Transaction id → the item carrying it to the store and engine, while its batch commits."""
        self._queue_wait_seconds_max = queue_wait_seconds_max
        self._retry_after_seconds_min = retry_after_seconds_min
        self.pacer = RetryPacer(retry_after_seconds_min)
        self._queued_futures: set[asyncio.Future[Outcome]] = set()
        """Futures of items still in the queue (not yet in a batch): only these may be abandoned."""
        self._in_flight_transfers = 0
        self._in_flight_batches = 0
        self.cost = BatchCost()
        """The measured cost of a batch: the basis of every expected wait (none before the first batch)."""
        self._probe: asyncio.Task[None] | None = None
        self.loop_lag_seconds = 0.0
        """Moving average of the event loop's lag (see _probe_loop)."""
        self._completed_last = 0.0
        """time.monotonic() of the last batch completion: a batch's time starts at its own start or there,
        whichever is later, so overlapping batches are not counted twice."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._drain(), name="group-commit")
        self._probe = asyncio.create_task(self._probe_loop(), name="group-commit-loop-probe")

    async def close(self) -> None:
        """Finishes what is queued, then stops."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe

    async def _probe_loop(self) -> None:
        """Measures how late a short timer fires: the wait every await of a write sees on this loop."""
        loop = asyncio.get_running_loop()
        while not self._closing:
            started = loop.time()
            await asyncio.sleep(LOOP_PROBE_SECONDS)
            lag_seconds = max(0.0, loop.time() - started - LOOP_PROBE_SECONDS)
            self.loop_lag_seconds += COST_EWMA_WEIGHT * (lag_seconds - self.loop_lag_seconds)
            assert self.loop_lag_seconds >= 0.0
            metrics.event_loop_lag_seconds.set(self.loop_lag_seconds)
            metrics.write_expected_wait_seconds.set(self.expected_wait_seconds(1))

    @property
    def queued_transfers(self) -> int:
        return self._queued_transfers

    @property
    def in_flight_transfers(self) -> int:
        """Transfers in batches being committed now."""
        return self._in_flight_transfers

    @property
    def throughput_transfers_per_second(self) -> float:
        """The commit rate of full batches at the measured cost; 0.0 before the first batch."""
        seconds = self.cost.seconds(self._batch_transfers_max, 1)
        return self._batch_transfers_max / seconds if seconds > 0.0 else 0.0

    @property
    def batch_transfers_cap(self) -> int:
        """The most transfers a batch takes now: while small writes come in a stream (interactive_stream),
        what takes `batch_seconds_max` at the measured cost of such batches (BatchCost.chunk_transfer_seconds;
        at least BATCH_TRANSFERS_MIN); otherwise, or without a time bound or a measurement,
        batch_transfers_max (a batch's fixed cost paid as rarely as possible)."""
        transfer_seconds = self.cost.chunk_transfer_seconds
        if self._batch_seconds_max <= 0.0 or transfer_seconds <= 0.0 or not self.interactive_stream:
            return self._batch_transfers_max
        fitting = int(self._batch_seconds_max / transfer_seconds)
        cap = min(self._batch_transfers_max, max(BATCH_TRANSFERS_MIN, fitting))
        assert 1 <= cap <= self._batch_transfers_max
        return cap

    @property
    def interactive_stream(self) -> bool:
        """Whether small writes come in a stream now: one waits, or the last two came within the last
        INTERACTIVE_RECENT_SECONDS, or INTERACTIVE_STREAM_BATCHES_MIN of the last INTERACTIVE_STREAM_BATCHES
        batches carried some. Not only whether one waits: in closed loop, as under overload, they arrive
        just after a batch is answered, so the next batch often forms before they are back, and without a
        cap they would come back to wait behind a long one."""
        if self._interactive or time.monotonic() - self._interactive_submitted_before < INTERACTIVE_RECENT_SECONDS:
            return True
        return sum(self._batches_interactive) >= INTERACTIVE_STREAM_BATCHES_MIN

    def expected_wait_seconds(self, transfers: int = 0) -> float:
        """How long `transfers` more would take to be answered: the batches queued ahead of them (an
        interactive submission queues behind the interactive lane only) and in flight at the measured
        batch cost, plus the event loop's turns at its measured lag."""
        assert transfers >= 0
        ahead = self._interactive_transfers if 0 < transfers <= INTERACTIVE_TRANSFERS_MAX else self._queued_transfers
        queued = ahead + transfers
        batches = self._in_flight_batches + -(-queued // self.batch_transfers_cap)
        loop_seconds = LOOP_TURNS_PER_WRITE * self.loop_lag_seconds
        return self.cost.seconds(self._in_flight_transfers + queued, batches) + loop_seconds

    def retry_after_seconds(self) -> float:
        """A refused caller's retry hint (counted as a refusal): the time for the queue ahead to drain,
        at least the pace that keeps refused callers from flooding the service (RetryPacer), jittered."""
        self.pacer.refused()
        jitter = random.uniform(1.0, 1.0 + RETRY_JITTER)
        wait = max(self.expected_wait_seconds(), self.pacer.seconds) * jitter
        return min(RETRY_AFTER_SECONDS_MAX, max(self._retry_after_seconds_min, wait))

    def admit(self, transfers: int, deadline: float | None = None) -> None:
        """Raises QueueFullError unless `transfers` more could commit within the wait bound and before
        `deadline` (a time.monotonic() value; DeadlineExceededError once it has passed). Cheap: an edge
        calls it before mapping a large request."""
        assert transfers >= 0
        if self._closing:
            # Short: a caller in-process (the Kafka consumer) must come back soon enough to see it stop.
            raise QueueFullError("shutting down", self._retry_after_seconds_min)
        budget_seconds = self._queue_wait_seconds_max
        if deadline is not None:
            budget_seconds = min(budget_seconds, deadline - time.monotonic())
            if budget_seconds <= 0.0:
                raise DeadlineExceededError("deadline passed before the transaction was queued")
        loop_seconds = LOOP_TURNS_PER_WRITE * self.loop_lag_seconds
        if loop_seconds > budget_seconds:  # The loop is saturated: more work only makes everyone late.
            metrics.backpressure_rejections_total.labels("batcher").inc()
            raise QueueFullError(
                f"service busy: about {loop_seconds * 1000:.0f} ms of event-loop delay, "
                f"more than the {max(0.0, budget_seconds) * 1000:.0f} ms this request can wait",
                self.retry_after_seconds(),
            )
        # An empty queue admits any one submission (bounded by the API's batch limit), so a batch larger
        # than the bounds is not refused forever (the cost is measured only from batches that commit).
        interactive = 0 < transfers <= INTERACTIVE_TRANSFERS_MAX
        if not (self._interactive_transfers if interactive else self._queued_transfers):
            return
        if self._queued_transfers + transfers > self._queue_transfers_max:
            metrics.backpressure_rejections_total.labels("batcher").inc()
            raise QueueFullError(
                f"write queue full ({self._queued_transfers} transfers queued)", self.retry_after_seconds()
            )
        wait_seconds = self.expected_wait_seconds(transfers)
        if wait_seconds > budget_seconds:
            metrics.backpressure_rejections_total.labels("batcher").inc()
            raise QueueFullError(
                f"write queue busy: about {wait_seconds * 1000:.0f} ms of work queued, "
                f"more than the {max(0.0, budget_seconds) * 1000:.0f} ms this request can wait",
                self.retry_after_seconds(),
            )

    def submit(
        self, transactions: Sequence[MappedTransaction], deadline: float | None = None
    ) -> list[asyncio.Future[Outcome]]:
        """Queues transactions (all or none); each future resolves with the transaction's outcome once
        it is durable. `deadline` is a time.monotonic() value."""
        count = 0
        for transaction in transactions:
            count += len(transaction.transfers)
        self.admit(count, deadline)
        self.pacer.admitted()
        span_context = trace.get_current_span().get_span_context() if tracing_configured() else INVALID_SPAN_CONTEXT
        loop = asyncio.get_running_loop()  # Once: each lookup is a getpid() system call (CPython 3.11).
        items = [_Item(t, deadline, loop.create_future(), 0, span_context) for t in transactions]
        if items:
            items[0].submission_transfers = count
        if count <= INTERACTIVE_TRANSFERS_MAX:
            self._interactive.extend(items)
            self._interactive_transfers += count
            self._interactive_submitted_before = self._interactive_submitted_last
            self._interactive_submitted_last = time.monotonic()
        else:
            self._queue.extend(items)
        self._queued_futures.update(item.future for item in items)
        self._queued_transfers += count
        metrics.write_queue_depth.set(self._queued_transfers)
        self._wakeup.set()
        assert self._queued_transfers >= count
        return [item.future for item in items]

    def abandon(self, futures: Sequence[asyncio.Future[Outcome]]) -> int:
        """The caller gave up (cancelled): its items still queued are dropped when batches form, so they
        are never committed; items already in a batch complete. Returns how many were dropped."""
        dropped = 0
        for future in futures:
            if future in self._queued_futures and not future.done():
                future.cancel()
                dropped += 1
        assert dropped <= len(futures)
        return dropped

    def _take_batch(self) -> list[_Item]:
        batch: list[_Item] = []
        cap = self.batch_transfers_cap
        # An item whose deadline passes before its batch can commit would be committed for a caller that
        # has given up: it is dropped now, before its intent is written, and never reaches the engine.
        # Its commit ends after the batches in flight and its own: about one average batch later.
        own_transfers = min(self._queued_transfers, cap)
        commit_seconds = self.cost.seconds(self._in_flight_transfers + own_transfers, self._in_flight_batches + 1)
        cutoff = time.monotonic() + commit_seconds
        # A time-capped batch cuts bulk submissions into chunks; an uncapped one takes them whole.
        whole = cap >= self._batch_transfers_max
        # Interactive items first; a waiting bulk submission keeps its share of the batch (all of it when
        # it is larger than the share, whole, or its next transaction is: no stream of small writes starves it).
        interactive_room = cap
        if self._queue:
            first = self._queue[0]
            reserved = first.submission_transfers if whole else len(first.transaction.transfers)
            interactive_room = cap - max(int(cap * BULK_SHARE_MIN), reserved)
        transfers = 0
        if interactive_room > 0:
            taken, transfers = self._fill(batch, self._interactive, interactive_room, cutoff, whole=whole)
            self._interactive_transfers -= taken
        self._batches_interactive.append(transfers > 0)
        _, bulk_transfers = self._fill(batch, self._queue, cap - transfers, cutoff, whole=whole)
        transfers += bulk_transfers
        # Over the cap only as one transaction, never split (time-capped), or as one submission taken whole.
        assert transfers <= cap or len(batch) == 1 or sum(1 for item in batch if item.submission_transfers) <= 1
        assert transfers <= self._batch_transfers_max or len(batch) == 1
        assert 0 <= self._interactive_transfers <= self._queued_transfers
        metrics.write_queue_depth.set(self._queued_transfers)
        return batch

    def _fill(
        self, batch: list[_Item], lane: deque[_Item], room: int, cutoff: float, *, whole: bool
    ) -> tuple[int, int]:
        """Moves transactions from the front of `lane` into `batch` while they fit in `room` transfers (the
        first of an empty batch always fits). With `whole`, a submission not yet begun is taken only if it
        fits whole (one begun goes on up to the room, the engine's limit); without, a submission larger
        than the room is cut between two of its transactions and goes on in the next batch (the module
        docstring says why that keeps the engine's batch semantics). Drops items cancelled or expired by
        `cutoff`. Returns the transfers taken off the lane (dropped ones included) and those added."""
        assert room <= self._batch_transfers_max
        taken = 0
        batched = 0
        while lane:
            item = lane[0]
            size = len(item.transaction.transfers)
            if batch and batched + size > room:
                break  # A transaction itself is never split.
            if whole and item.submission_transfers and batch and batched + item.submission_transfers > room:
                break  # The next submission does not fit whole.
            lane.popleft()
            self._queued_futures.discard(item.future)
            self._queued_transfers -= size
            taken += size
            if item.future.cancelled():
                metrics.dropped_transactions_total.labels("cancelled").inc()
                continue
            if item.deadline is not None and item.deadline <= cutoff:
                metrics.dropped_transactions_total.labels("deadline").inc()
                item.future.set_exception(DeadlineExceededError("deadline passed before the transaction could commit"))
                item.future.exception()  # Retrieved: its caller may have gone, and that is no error to log.
                continue
            batch.append(item)
            batched += size
        assert batched <= taken and self._queued_transfers >= 0
        return taken, batched

    async def _drain(self) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        while True:
            if not self._queue and not self._interactive:
                if self._closing:
                    break
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if len(in_flight) >= BATCHES_IN_FLIGHT_MAX:
                _, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            if in_flight and self._holds_bulk_back():
                # Bulk alone while small writes stream: held back until the batch in flight is done or a
                # small write comes, so that one goes in the next batch instead of waiting behind a bulk
                # chunk formed just before it arrived (one chunk less to wait: ~15-25 ms under load).
                in_flight = await self._until_done_or_submitted(in_flight)
                continue
            batch = self._take_batch()
            if batch:
                transfers = sum(len(item.transaction.transfers) for item in batch)
                self._in_flight_transfers += transfers
                self._in_flight_batches += 1
                in_flight.add(asyncio.create_task(self._commit_or_fail(batch, transfers)))
                # Yield once so this batch's first write is queued before the next batch forms.
                await asyncio.sleep(0)
        if in_flight:
            await asyncio.wait(in_flight)

    def _holds_bulk_back(self) -> bool:
        """Whether a batch of bulk work alone waits while another commits: only with time caps, while small
        writes stream (see the module docstring)."""
        if self._batch_seconds_max <= 0.0 or self._closing or self._interactive:
            return False
        return self.interactive_stream

    async def _until_done_or_submitted(self, in_flight: set[asyncio.Task[None]]) -> set[asyncio.Task[None]]:
        """Waits until a batch of `in_flight` is done or something is submitted; returns those still running."""
        assert in_flight
        self._wakeup.clear()
        submitted = asyncio.ensure_future(self._wakeup.wait())
        try:
            await asyncio.wait({*in_flight, submitted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            submitted.cancel()
        running = {task for task in in_flight if not task.done()}
        assert len(running) <= len(in_flight)
        return running

    def _measure(self, transfers: int, started: float) -> None:
        """Folds one committed batch into the throughput estimate."""
        completed = time.monotonic()
        busy_seconds = completed - max(started, self._completed_last)
        self._completed_last = completed
        if busy_seconds <= 0.0:
            return
        self.cost.observe(transfers, busy_seconds)
        metrics.write_throughput_transfers_per_second.set(self.throughput_transfers_per_second)

    async def _commit_or_fail(self, batch: list[_Item], transfers: int) -> None:
        """Commits a batch of `transfers` transfers (already counted in flight by the caller)."""
        assert transfers <= self._in_flight_transfers
        started = time.monotonic()
        try:
            await self._commit(batch)
            self._measure(transfers, started)
        except Exception as error:  # The batch's callers get the error; the committer lives on.
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
        finally:
            self._in_flight_transfers -= transfers
            self._in_flight_batches -= 1
            assert self._in_flight_transfers >= 0 and self._in_flight_batches >= 0
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
        if tracing_configured():
            parent, links = _batch_parentage(batch)
            with tracer().start_as_current_span("engine.batch", context=parent, links=links) as span:
                span.set_attribute("ledger.batch.transactions", len(batch))
                submitted = await self._commit_leaders(list(leaders.values()))
                span.set_attribute("ledger.batch.transfers", sum(len(i.transaction.transfers) for i in submitted))
        else:  # Every span would be a no-op: not making one saves its context switch-in and -out per batch.
            await self._commit_leaders(list(leaders.values()))
        for item, leader in followers:
            if item.transaction.fingerprint != leader.transaction.fingerprint:
                item.resolve(key_reused())
                continue
            outcome = await asyncio.shield(leader.future)
            item.resolve(Committed(outcome.timestamp, True) if isinstance(outcome, Committed) else outcome)

    async def _commit_leaders(self, leaders: list[_Item]) -> list[_Item]:
        """Decides each leader's idempotency against the store, submits the new ones (and stored intents) to
        the engine, and resolves them all; returns those submitted."""
        transactions = [item.transaction for item in leaders]
        if self._journaled is not None:  # No write here: the intents go with the batch.
            priors = await self._journaled.priors(transactions)
        else:
            priors = await self._store.prepare(transactions)
        submitted: list[_Item] = []
        for item in leaders:
            prior = priors.get(item.transaction.transaction_id)
            if prior is None:
                submitted.append(item)
            elif prior.fingerprint != item.transaction.fingerprint:
                item.resolve(key_reused())
            elif prior.failure is not None:
                item.resolve(LedgerError.from_json(prior.failure))
            else:
                submitted.append(item)  # An intent: committed before or not, the engine knows.
        if submitted:
            await self._submit(submitted)
        assert len(submitted) <= len(leaders)
        return submitted

    async def _submit(self, items: list[_Item]) -> None:
        transfers = [transfer for item in items for transfer in item.transaction.transfers]
        started = time.perf_counter()
        if self._journaled is not None:
            # One append: the transfers, the new intents and every outcome (failures included).
            results = await self._journaled.submit([item.transaction for item in items])
        else:
            results = await self._engine.create_transfers(transfers)
        assert len(results) == len(transfers)
        _BATCH_SIZE_METRIC.observe(len(transfers))
        _BATCH_SECONDS_METRIC.observe(time.perf_counter() - started)
        for status, count in Counter(r.status for r in results).items():
            _results_metric(status).inc(count)
        failed: list[tuple[_Item, LedgerError]] = []
        offset = 0
        for position, item in enumerate(items):
            if position and not position % RESOLVE_CHUNK:
                await asyncio.sleep(0)  # Let the answered calls (and every other) run; see RESOLVE_CHUNK.
            size = len(item.transaction.transfers)
            outcome = judge(results[offset : offset + size])
            offset += size
            if isinstance(outcome, Committed):
                item.resolve(outcome)  # Durable in the engine: answer now.
            else:
                failed.append((item, outcome))
        if failed and self._journaled is None:
            try:
                await self._store.record_failures([(i.transaction.transaction_id, e.to_json()) for i, e in failed])
            except Exception as error:
                for item, _ in failed:
                    item.future.set_exception(error)
                raise
        for item, failure in failed:
            item.resolve(failure)


async def wait_all(futures: Sequence[asyncio.Future[Outcome]]) -> list[Outcome | BaseException]:
    """Awaits every future; a caller that gives up does not cancel work already queued.

    One waiter for the lot (its cancellation leaves the futures alone, as asyncio.shield would for each):
    a shield per future cost a future and two scheduled callbacks per transaction of a batch call."""
    # One callback at a time, on the last future still pending: the committer resolves a submission's
    # items in their order, mostly in one loop turn, so by the time the last one is done the others are
    # too. A callback on every future scheduled one loop callback per transaction (~1 µs each) when they
    # resolved. Each future is passed over once (popped when done): at most len(futures) waits, O(n).
    pending = list(futures)
    loop = asyncio.get_running_loop()
    while pending:
        last = pending[-1]
        if last.done():
            pending.pop()
            continue
        waiter = loop.create_future()

        def done(_future: asyncio.Future[Outcome], waiter: asyncio.Future[None] = waiter) -> None:
            if not waiter.done():
                waiter.set_result(None)

        last.add_done_callback(done)
        try:
            await waiter
        finally:
            if not last.done():  # Cancelled while it was pending: it no longer reports here.
                last.remove_done_callback(done)
    assert all(future.done() for future in futures)
    results: list[Outcome | BaseException] = []
    for future in futures:
        try:
            results.append(future.result())
        except Exception as error:  # Returned per item: one failure must not hide the others.
            results.append(error)
    assert len(results) == len(futures)
    return results
