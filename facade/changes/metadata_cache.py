"""The domain metadata of recent changes, shared by the service's change captures.

`ledger serve` runs up to three change captures over the same feed (the audit tree, the read model,
Kafka), and each looked up the same transfers' metadata in the metadata store: one query per batch
per capture, on the store's single thread that the write path also needs. Metadata is written before
its transfer reaches the engine and never changes afterwards, so the first capture's answer is the
others' too: they find it here. Only what was found is kept (an id without metadata is asked again,
never cached as absent), and only the newest ENTRIES_MAX ids, oldest dropped first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import islice

from facade.changes.poller import MetadataSource
from ledger_events.gen.ledger.v1 import entries_pb2

__all__ = ["ENTRIES_MAX", "MetadataCache"]

ENTRIES_MAX = 65_536
"""Transfers kept: ~6 s of changes at 10,000 tx/s, more than the captures' poll intervals apart."""


class MetadataCache:
    """A MetadataSource in front of another, for several change captures reading the same feed."""

    def __init__(self, source: MetadataSource, entries_max: int = ENTRIES_MAX) -> None:
        assert entries_max > 0
        self._source = source
        self._entries_max = entries_max
        self._found: dict[int, entries_pb2.EntryMetadata] = {}
        """By transfer id, in the order first found (dicts keep insertion order: oldest first)."""
        self.hits = 0
        self.misses = 0

    async def metadata_for(self, transfer_ids: Sequence[int]) -> Mapping[int, entries_pb2.EntryMetadata]:
        found = self._found
        # One pass, one lookup an id (the service's only reader of its metadata in a config without the
        # read model is the audit capture, which paid ~1 µs a change here for the several passes).
        answer: dict[int, entries_pb2.EntryMetadata] = {}
        missing: list[int] = []
        for transfer_id in transfer_ids:
            known = found.get(transfer_id)
            if known is None:
                missing.append(transfer_id)
            else:
                answer[transfer_id] = known
        self.hits += len(transfer_ids) - len(missing)
        self.misses += len(missing)
        if missing:
            fetched = await self._source.metadata_for(missing)
            for transfer_id in missing:  # In the feed's order, whatever the store's: the oldest go first.
                metadata = fetched.get(transfer_id)
                if metadata is not None:
                    answer[transfer_id] = found[transfer_id] = metadata
            excess = len(found) - self._entries_max
            if excess > 0:
                for transfer_id in list(islice(found, excess)):
                    del found[transfer_id]
        assert len(found) <= self._entries_max
        assert len(answer) <= len(transfer_ids)  # Only ids asked for: each is set from one of them.
        return answer
