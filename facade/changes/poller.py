"""The change-capture poller: engine change feed → LedgerEntry events → a sink, at least once.

Loop: read up to `batch_changes_max` committed changes after the checkpoint (engine commit order),
look up their domain metadata, build two entries per change (debit side, credit side) with the audit
chain link, hand them to the sink, and once the sink has durably accepted them, save the checkpoint.

At-least-once window: a crash after the sink accepted a batch but before the checkpoint was saved
re-emits that batch (at most `batch_changes_max` changes, i.e. 2x entries) on restart, with the same
event ids and chain links (they are computed from the checkpointed chain head). Nothing is skipped:
the checkpoint only ever advances past changes the sink has accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from facade.background import run_until_stopped
from facade.changes.entries import build_entries
from facade.changes.feed_cache import ChangeFeed
from facade.engine.types import ChangeEvent, ChangeEventsFilter
from facade.observability import metrics
from facade.observability.logs import get_logger
from ledger_events import checkpoint as checkpoints
from ledger_events.chain import Link
from ledger_events.checkpoint import Checkpoint
from ledger_events.gen.ledger.v1 import entries_pb2

BATCH_CHANGES_MAX = 4096
"""Changes per poll; also the bound on re-emitted changes after a crash."""
POLL_INTERVAL_SECONDS = 0.01
"""Sleep between polls that did not fill a batch (the default: Kafka publishing, latency first)."""
POLL_INTERVAL_SECONDS_MAX = 1.0
"""The longest a sink may ask to wait between such polls (its lag grows by up to that much)."""

log = get_logger("ledger.change_capture")


class EntrySink(Protocol):
    async def publish(self, entries: Sequence[entries_pb2.LedgerEntry]) -> None:
        """Returns once every entry is durably accepted (Kafka: acks=all delivered)."""
        ...


@runtime_checkable
class ChangeSink(Protocol):
    """A sink that builds the entries itself, elsewhere (the read model's own process): it gets the raw
    changes, their metadata and the chain head, and returns the new head once every entry is accepted.
    Change capture then does no per-change work in this process beyond reading the feed."""

    async def publish_changes(
        self, events: Sequence[ChangeEvent], metadata: Mapping[int, entries_pb2.EntryMetadata], previous: Link
    ) -> Link: ...


class MetadataSource(Protocol):
    async def metadata_for(self, transfer_ids: Sequence[int]) -> Mapping[int, entries_pb2.EntryMetadata]:
        """Domain metadata of the transfers that have any (others are simply absent)."""
        ...


@dataclass(frozen=True, slots=True)
class Pacing:
    """How much change capture reads per poll and how long it waits after a batch that was not full."""

    batch_changes_max: int = BATCH_CHANGES_MAX
    poll_interval_seconds: float = POLL_INTERVAL_SECONDS
    """A time/size trigger: a full batch polls again at once, anything less waits this long (a sink
    whose cost is per batch, like ClickHouse inserts and merges, asks for fewer, larger batches)."""
    small_batch_changes: int = 0
    small_batch_wait_seconds: float = 0.0
    """A batch of fewer than `small_batch_changes` (a quiet feed) waits `small_batch_wait_seconds`
    instead: at low rates the per-batch cost would otherwise dominate the per-change cost."""


@dataclass(frozen=True, slots=True)
class _Batch:
    timestamp_min: int
    events: list[ChangeEvent]
    metadata: Mapping[int, entries_pb2.EntryMetadata]


@dataclass(frozen=True, slots=True)
class _ReadAhead:
    """At most one batch is read ahead, from where the batch being published ends."""

    timestamp_min: int
    task: asyncio.Task[_Batch]


async def _discard(task: asyncio.Task[_Batch]) -> None:
    """Cancels a read-ahead no one will use; its outcome, whatever it was, is retrieved and dropped."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


class ChangeCapture:
    def __init__(
        self,
        engine: ChangeFeed,
        sink: EntrySink,
        checkpoint_path: Path,
        metadata: MetadataSource | None = None,
        *,
        pacing: Pacing = Pacing(),
    ) -> None:
        batch_changes_max = pacing.batch_changes_max
        poll_interval_seconds = pacing.poll_interval_seconds
        small_batch_changes = pacing.small_batch_changes
        small_batch_wait_seconds = pacing.small_batch_wait_seconds
        assert 0 < batch_changes_max <= 8189
        assert 0 < poll_interval_seconds <= POLL_INTERVAL_SECONDS_MAX
        assert 0 <= small_batch_changes <= batch_changes_max
        assert (
            small_batch_changes == 0 or poll_interval_seconds <= small_batch_wait_seconds <= POLL_INTERVAL_SECONDS_MAX
        )
        self._engine = engine
        self._sink = sink
        self._checkpoint_path = checkpoint_path
        self._metadata = metadata
        self._batch_changes_max = batch_changes_max
        self._poll_interval_seconds = poll_interval_seconds
        self._small_batch_changes = small_batch_changes
        self._small_batch_wait_seconds = small_batch_wait_seconds
        self.checkpoint: Checkpoint = checkpoints.load(checkpoint_path)
        self._ahead: _ReadAhead | None = None
        self.batches_read_ahead = 0
        """Batches taken from a read-ahead (a backlog was being caught up)."""
        self._change_sink = sink if isinstance(sink, ChangeSink) else None
        self._sink_name = type(sink).__name__
        """The metrics label: a bounded set (KafkaEntryPublisher, Projector)."""

    async def _read(self, timestamp_min: int) -> _Batch:
        """The changes from `timestamp_min` on (at most a batch) and their metadata."""
        events = await self._engine.get_change_events(
            ChangeEventsFilter(timestamp_min=timestamp_min, limit=self._batch_changes_max)
        )
        metadata: Mapping[int, entries_pb2.EntryMetadata] = {}
        if events and self._metadata is not None:
            metadata = await self._metadata.metadata_for([event.transfer.id for event in events])
        assert len(events) <= self._batch_changes_max
        return _Batch(timestamp_min, events, metadata)

    async def _next_batch(self) -> _Batch:
        """The batch after the checkpoint: read ahead while the previous one was published, or now."""
        timestamp_min = self.checkpoint.timestamp_last + 1
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            if ahead.timestamp_min == timestamp_min:
                batch = await ahead.task
                assert batch.timestamp_min == timestamp_min
                assert not batch.events or batch.events[0].timestamp >= timestamp_min
                self.batches_read_ahead += 1
                return batch
            await _discard(ahead.task)  # The previous publish failed: the checkpoint did not move.
        return await self._read(timestamp_min)

    async def close(self) -> None:
        """Drops a read-ahead in progress (called when capture stops)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            await _discard(ahead.task)

    async def run_once(self) -> int:
        """Publishes the next batch of changes; returns how many changes it published."""
        batch = await self._next_batch()
        events, metadata = batch.events, batch.metadata
        if not events:
            # Caught up: nothing committed is unpublished, whatever the age of the last change.
            metrics.change_capture_lag_seconds.labels(self._sink_name).set(0)
            return 0
        if len(events) == self._batch_changes_max:
            # A backlog: the next batch is read (from the engine's and the metadata store's threads,
            # behind the writes queued there) while this one is published, not after.
            following = events[-1].timestamp + 1
            self._ahead = _ReadAhead(following, asyncio.create_task(self._read(following)))
        link = self.checkpoint.link
        assert events[0].timestamp > self.checkpoint.timestamp_last
        if self._change_sink is not None:
            link = await self._change_sink.publish_changes(events, metadata, link)
            assert link.sequence == self.checkpoint.link.sequence + len(events)
        else:
            entries: list[entries_pb2.LedgerEntry] = []
            for event in events:
                assert event.timestamp > self.checkpoint.timestamp_last
                debit, credit, link = build_entries(event, metadata.get(event.transfer.id), link)
                entries.append(debit)
                entries.append(credit)
            await self._sink.publish(entries)
        checkpoint = Checkpoint(timestamp_last=events[-1].timestamp, link=link)
        await asyncio.to_thread(checkpoints.save, self._checkpoint_path, checkpoint)
        self.checkpoint = checkpoint
        metrics.change_capture_published_total.labels(self._sink_name).inc(len(events))
        metrics.change_capture_lag_seconds.labels(self._sink_name).set(
            max(0, time.time_ns() - checkpoint.timestamp_last) / 1e9
        )
        return len(events)

    async def run(self, stop: asyncio.Event) -> None:
        """Polls until `stop` is set; a full batch polls again at once (catching up)."""
        # A failing sink (broker, ClickHouse down) is retried, never skipped: the checkpoint did not move,
        # so the retry re-publishes the same batch with the same event ids (the at-least-once window).
        try:
            await run_until_stopped(stop, self._poll, component="change_capture", log_fields={"sink": self._sink_name})
        finally:
            await self.close()

    async def _poll(self) -> float:
        """One batch; how long to wait before the next (0 after a full batch: catching up)."""
        started = time.monotonic()
        published = await self.run_once()
        if published >= self._batch_changes_max:
            return 0.0
        wait_seconds = self._poll_interval_seconds
        if published < self._small_batch_changes:
            wait_seconds = self._small_batch_wait_seconds
        # The interval runs from the start of the batch: a slow publish is not followed by a full wait
        # as well (a batch every interval, not every interval plus its work).
        return max(0.0, wait_seconds - (time.monotonic() - started))
