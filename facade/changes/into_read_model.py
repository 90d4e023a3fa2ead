"""Change capture straight into the read model's projector (no Kafka), resuming from what the read
model holds. The projector is any sink that also says where to resume (projections' `Projector` in
this process, `RemoteProjector` in the read model's own): change capture knows it only by this shape,
so neither package imports the other; the composition root hands one to the other."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from facade.changes.feed_cache import ChangeFeed
from facade.changes.poller import ChangeCapture, EntrySink, MetadataSource, Pacing
from ledger_events import checkpoint as checkpoints
from ledger_events.checkpoint import Checkpoint

__all__ = [
    "PROJECTION_BATCH_CHANGES_MAX",
    "PROJECTION_POLL_INTERVAL_SECONDS",
    "PROJECTION_QUIET_BATCH_CHANGES",
    "PROJECTION_QUIET_WAIT_SECONDS",
    "ResumableSink",
    "change_capture",
]

PROJECTION_POLL_INTERVAL_SECONDS = 0.3
"""The time trigger: how long change capture into the read model waits after a batch that was not full (from the
start of that batch), whatever the rate; a full batch (the size trigger) is read again at once. The read
model's process pays mostly per batch: its inserts' fixed cost and their parts' later merges (~20 ms of CPU a
batch below 1,024 changes, ~45 ms above, when this was measured with the binary records of the time;
projections._change_columns' Native blocks have since cut the fixed cost a batch), besides the service's hops
to the engine's and the metadata store's threads. Measured with a steady feed into that process's projection
(chDB 4.4, changes as bench_api.py posts them, merges included, all threads): at 10,000 tx/s batches of 1,000
(the 0.1 s this was) cost 69 µs a change, 4,000 cost 29; at 1,400 tx/s, 350 a batch (the 0.25 s it was for
small batches) cost 94 µs. 0.3 s makes 3,000 a batch at 10,000 tx/s and 420 at 1,400, and keeps the lag in its
budget: the interval plus one batch's read and insert (~0.1-0.2 s for 3,000 changes on a busy host), a p99
under 1 s. Before: 0.25 s measured a lag p99 of 0.47-0.64 s at 1 tx/RPC and 0.5 s 0.70-1.02 s (bench_api.py,
load 7-10), so the interval stays well below 0.5 s. A longer wait for quiet feeds (0.4 s below 1,024 changes,
a quarter fewer batches) measured a lag p99 of 0.93 s at 1 tx/RPC x16 (load ~4): too close to 1 s for ~2% of a
core, so one interval for all (until PROJECTION_QUIET_WAIT_SECONDS)."""
PROJECTION_QUIET_BATCH_CHANGES = 1024
"""A batch below this many changes (a feed below ~3,400 changes/s at the 0.3 s interval) marks a quiet feed,
which waits PROJECTION_QUIET_WAIT_SECONDS instead. It was the read model's threshold for binary records; the
read model now writes every in-order batch as Native blocks (projections._change_columns), and still pays a
fixed cost a batch (parts written, then merged), so this stays the mark of a quiet feed."""
PROJECTION_QUIET_WAIT_SECONDS = 0.5
"""The wait after a quiet feed's batch. At a quiet rate the read model's process pays per batch, not per change:
each of its three inserts writes a part (with its indexes) and the parts are merged later, ~40 ms of CPU a
batch of a few hundred changes (chDB 4.4 / ClickHouse 26.9, quiet host). Statement settings (max_threads = 1,
max_insert_threads = 1, no parallel parsing, query profilers off, no optimize_on_insert) and one INSERT fanned
out to the three tables by materialized views moved that work between threads but did not reduce it beyond the
noise; no SELECT runs per in-order batch (the high-water marks are kept in memory). So the process's CPU per
change falls nearly with the batch's size: at 1,400 changes/s (bench_api.py's single-transaction rows) 0.3 s
makes 420-change batches, 0.5 s makes 700 (scripts/bench_read_model_process.py: 118-177 against 84-113 µs CPU
a change, alternating, six runs each, load 0.4-3.7; a 1 s wait, the whole lag budget, measured 47-50).
The price is lag: a quiet feed's change waits up to 0.5 s instead of 0.3 s before it is read. 0.6 s measured a
lag p99 of 0.63-0.73 s at 1 tx/RPC x16/x64 on a host at load 2.7-5, but 1.22 s at x64 in another run (load
3.4; 0.3 s: 0.32-0.94 s in the same runs), so 0.5. A busy feed (batches of 1,024 or more) keeps the 0.3 s
interval and its lag; the first batch at or above the threshold brings it back."""
PROJECTION_BATCH_CHANGES_MAX = 8189
"""The size trigger and the largest batch (the engine's and the projector's limit): a backlog is caught up
in the fewest, cheapest batches."""


class ResumableSink(EntrySink, Protocol):
    """A sink that knows the last change it holds (the read model's projector)."""

    def resume_checkpoint(self) -> Checkpoint: ...


def change_capture(
    engine: ChangeFeed,
    projector: ResumableSink,
    checkpoint_path: Path,
    metadata: MetadataSource | None = None,
    *,
    batch_changes_max: int = PROJECTION_BATCH_CHANGES_MAX,
) -> ChangeCapture:
    """Change capture from the engine straight into the projector, resuming from what ClickHouse holds:
    the checkpoint file is rewritten from the read model before capture starts, so the two can never
    disagree (the read model is the truth; the file only serves the poller). Calls the projector's
    `resume_checkpoint`: run it on the thread that owns the projector's client."""
    checkpoints.save(checkpoint_path, projector.resume_checkpoint())
    return ChangeCapture(
        engine,
        projector,
        checkpoint_path,
        metadata,
        pacing=Pacing(
            batch_changes_max=batch_changes_max,
            poll_interval_seconds=PROJECTION_POLL_INTERVAL_SECONDS,
            small_batch_changes=min(PROJECTION_QUIET_BATCH_CHANGES, batch_changes_max),
            small_batch_wait_seconds=PROJECTION_QUIET_WAIT_SECONDS,
        ),
    )
