"""The audit log inside `ledger serve`: its own change capture into the Merkle tree (sealing every N
changes or T seconds; each checkpoint stored in the read model's `audit_checkpoints` and published to
Kafka when configured) and the background self-audit."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from facade.audit.log import AuditLog, SealedCheckpoint, open_audit_log
from facade.audit.self_audit import SelfAudit
from facade.audit.sink import AuditSink, Publisher
from facade.changes.feed_cache import ChangeFeed
from facade.changes.poller import ChangeCapture, MetadataSource, Pacing
from facade.engine.protocol import Engine
from facade.engine.types import QUERY_LIMIT_MAX
from facade.observability.logs import get_logger
from facade.settings import Settings
from ledger_events import checkpoint as positions
from projections.read_model import ReadModel

__all__ = ["AuditRuntime", "start_audit"]

logger = get_logger("ledger.audit")

POSITION_FILE = "capture.json"
AUDIT_POLL_INTERVAL_SECONDS = 0.5
"""The tree's change capture polls every 0.5 s whatever the batch's size: every append costs per batch
(the tree's lock, an fsync per level written, ~10 dirty ones at ~50 µs of system CPU each, the head file,
the capture's position file), and at the change feed's default 10 ms a stream of single transactions paid
that ~100 times a second, beside the writes it slows (~8% of the service's samples, py-spy). It polled
every 0.1 s once batches reached 1,024 changes: at 10,000 tx/s that was ~1,000-change batches and ~1 µs
of the service's CPU a change in per-batch costs; now ~5,000 a batch. The tree lags the feed by up to 0.5 s, as it
already did below 1,024 changes a poll; checkpoints are sealed every N changes or T seconds anyway."""
AUDIT_BATCH_CHANGES_MAX = QUERY_LIMIT_MAX
"""Up to a whole engine query a batch, as the read model's capture when behind: at 10,000 tx/s one batch
every 0.5 s rather than 4,096 and the rest (half the per-batch costs a change). Also the bound on the
changes re-emitted after a crash (the tree checks and skips them)."""


@dataclass(slots=True)
class AuditRuntime:
    log: AuditLog
    sink: AuditSink
    capture: ChangeCapture
    self_audit: SelfAudit | None
    interval_seconds: float

    async def _seal_periodically(self, stop: asyncio.Event) -> None:
        """Seals changes left unsealed once they stop arriving (the sink seals only when a batch comes)."""
        interval_seconds = self.log.settings.checkpoint_interval_seconds
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_seconds)
            if stop.is_set():
                return
            try:
                await self.sink.seal_if_pending()
            except Exception as error:  # Kafka or the read model down: the next round retries.
                logger.warning("periodic checkpoint failed", error=str(error))

    async def run(self, stop: asyncio.Event) -> None:
        """Feeds the tree and self-audits until `stop`; then closes the log."""
        try:
            tasks = [
                asyncio.create_task(self.capture.run(stop), name="audit-capture"),
                asyncio.create_task(self._seal_periodically(stop), name="audit-sealer"),
            ]
            if self.self_audit is not None:
                tasks.append(asyncio.create_task(self.self_audit.run(stop, self.interval_seconds), name="self-audit"))
            await asyncio.gather(*tasks)
        finally:
            with contextlib.suppress(Exception):
                self.log.close()


async def start_audit(
    settings: Settings,
    engine: Engine,
    metadata: MetadataSource,
    read_model: ReadModel | None,
    *,
    feed: ChangeFeed | None = None,
) -> AuditRuntime | None:
    """None when settings.audit.enabled is off. The signing key is created here on first run. The tree's
    change capture reads `feed` (the service's captures share one: facade.changes.feed_cache), else the engine."""
    if not settings.audit.enabled:
        return None
    audit_log = await asyncio.to_thread(open_audit_log, settings)
    await asyncio.to_thread(audit_log.keys.active)
    publishers: list[Publisher] = []
    if settings.kafka.bootstrap_servers:
        from facade.kafka.checkpoints_publisher import KafkaCheckpointPublisher

        publishers.append(KafkaCheckpointPublisher(settings.kafka).publish)
    if read_model is not None:
        from projections.audit_checkpoints import store_checkpoint

        async def store(sealed: SealedCheckpoint) -> None:
            await read_model.query(lambda client: store_checkpoint(client, sealed))

        publishers.append(store)
    sink = AuditSink(audit_log, publishers=publishers)
    position = audit_log.directory / POSITION_FILE
    # The tree is the truth: the capture resumes after its last leaf, whatever the position file says.
    await asyncio.to_thread(positions.save, position, sink.resume_position())
    capture = ChangeCapture(
        feed if feed is not None else engine,
        sink,
        position,
        metadata,
        pacing=Pacing(batch_changes_max=AUDIT_BATCH_CHANGES_MAX, poll_interval_seconds=AUDIT_POLL_INTERVAL_SECONDS),
    )
    self_audit = (
        SelfAudit(audit_log, read_model.query, engine=engine, query_in_model=read_model.query_in_model)
        if read_model is not None
        else None
    )
    return AuditRuntime(audit_log, sink, capture, self_audit, settings.audit.self_audit_interval_seconds)
