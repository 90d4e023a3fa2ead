"""Change capture straight into the read model's projector (no Kafka), resuming from what the read
model holds. The projector is any sink that also says where to resume (projections' `Projector` in
this process, `RemoteProjector` in the read model's own): change capture knows it only by this shape,
so neither package imports the other; the composition root hands one to the other."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from facade.changes.poller import BATCH_CHANGES_MAX, ChangeCapture, EntrySink, MetadataSource, Pacing
from facade.engine.protocol import Engine
from ledger_events import checkpoint as checkpoints
from ledger_events.checkpoint import Checkpoint

__all__ = [
    "PROJECTION_POLL_INTERVAL_SECONDS",
    "PROJECTION_SMALL_BATCH_CHANGES",
    "PROJECTION_SMALL_BATCH_WAIT_SECONDS",
    "ResumableSink",
    "change_capture",
]

PROJECTION_POLL_INTERVAL_SECONDS = 0.1
"""How long change capture into the read model waits after a batch that was not full. Each insert
costs per batch (three table inserts, new parts, later merges, hops to the engine's and the metadata
store's threads), so ten batches a second at most instead of a hundred small ones. Measured at ~6-8k
tx/s on 2 cores: 0.25 s gave a lag at insert of 1.2-1.7 s, 0.1 s gave 0.25-0.7 s (scripts/bench_api.py).
0.2 s saved no server CPU: bench_api.py batch rows, defaults, two A/B pairs back to back (load 2.8-3.7),
100 tx/RPC 175 and 167 µs/tx at 0.2 s against 170 and 170 at 0.1 s, 1000 tx/RPC 151/129 against 154/142,
with lag p99 up to 1.0 s (100 tx/RPC) and 1.8 s (1000). Measured in the read model's process alone
(chDB, 760 changes a batch): a batch's three inserts cost ~20 ms of fixed CPU (entries ~7, transactions ~9
of which the label view ~4, balances ~4, one-row inserts), the rest is per row (~35 µs a change in chDB,
~13 in Python building rows and the chain); insert settings (input_format_parallel_parsing,
optimize_on_insert, max_threads, max_compress_block_size) and dropping the skip indexes changed neither
beyond the noise."""
PROJECTION_SMALL_BATCH_CHANGES = 1024
PROJECTION_SMALL_BATCH_WAIT_SECONDS = 0.25
"""A quiet feed (fewer changes than that in a batch) waits longer: at ~1k tx/s ten batches a second
cost the service and the read model's process more CPU per transaction than the transactions did.
It was 0.5 s (two batches a second): with rows built straight from the changes' bytes a batch costs
less, and 0.25 s measured lag p99 0.47-0.64 s against 0.70-1.02 s at 1 tx/RPC x16/x64, with no more
server CPU per transaction (bench_api.py, two A/B pairs, load 7-10)."""


class ResumableSink(EntrySink, Protocol):
    """A sink that knows the last change it holds (the read model's projector)."""

    def resume_checkpoint(self) -> Checkpoint: ...


def change_capture(
    engine: Engine,
    projector: ResumableSink,
    checkpoint_path: Path,
    metadata: MetadataSource | None = None,
    *,
    batch_changes_max: int = BATCH_CHANGES_MAX,
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
            small_batch_changes=min(PROJECTION_SMALL_BATCH_CHANGES, batch_changes_max),
            small_batch_wait_seconds=PROJECTION_SMALL_BATCH_WAIT_SECONDS,
        ),
    )
