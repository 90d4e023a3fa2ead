"""`ledger replay`: re-emit confirmed entries from the engine's history, for consumers that rebuild.

Chain links are recomputed from the first change, so replayed entries are identical to the live
stream's (same event ids, same links) and consumers deduplicate them as usual. Entries before
`timestamp_from` are hashed (to carry the chain) but not published.
"""

from __future__ import annotations

from tqdm import tqdm

from facade.changes.entries import build_entries
from facade.changes.poller import BATCH_CHANGES_MAX, EntrySink, MetadataSource
from facade.engine.protocol import Engine
from facade.engine.types import ChangeEventsFilter
from ledger_events.chain import GENESIS
from ledger_events.gen.ledger.v1 import entries_pb2


async def replay(
    engine: Engine,
    sink: EntrySink,
    timestamp_from: int = 0,
    metadata: MetadataSource | None = None,
    progress: bool = True,
) -> int:
    """Publishes every change with engine timestamp >= timestamp_from; returns how many changes."""
    link = GENESIS
    cursor = 0
    published = 0
    with tqdm(desc="replay", unit="change", disable=not progress) as bar:
        while True:
            events = await engine.get_change_events(
                ChangeEventsFilter(timestamp_min=cursor + 1, limit=BATCH_CHANGES_MAX)
            )
            if not events:
                return published
            found = await metadata.metadata_for([e.transfer.id for e in events]) if metadata else {}
            entries: list[entries_pb2.LedgerEntry] = []
            for event in events:
                debit, credit, link = build_entries(event, found.get(event.transfer.id), link)
                if event.timestamp >= timestamp_from:
                    entries += (debit, credit)
            if entries:
                await sink.publish(entries)
                published += len(entries) // 2
            cursor = events[-1].timestamp
            bar.update(len(events))
