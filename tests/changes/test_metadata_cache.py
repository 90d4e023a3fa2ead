"""The change captures' shared metadata lookup (facade.changes.metadata_cache) over a real service's
metadata store: the same answers as the store, the store asked once per transfer, bounded."""

from __future__ import annotations

from pathlib import Path

from facade.changes.metadata_cache import MetadataCache
from facade.engine.types import ChangeEventsFilter
from tests.api.conftest import credit, open_api, transfer


async def test_a_second_capture_is_answered_from_the_cache_with_the_stores_answers(tmp_path: Path) -> None:
    api = await open_api(tmp_path)
    try:
        alice, bob = await api.account("alice"), await api.account("bob")
        await api.post("fund", credit(alice, 1_000))
        for n in range(5):
            await api.post(f"pay-{n}", transfer(alice, bob, 10))
        events = await api.server.engine.get_change_events(ChangeEventsFilter(limit=100))
        ids = [event.transfer.id for event in events]
        assert len(ids) == 6
        store_answer = await api.server.store.metadata_for(ids)
        assert len(store_answer) == 6 and store_answer[ids[-1]].idempotency_key == "pay-4"
        cache = MetadataCache(api.server.store)
        assert await cache.metadata_for(ids) == store_answer  # The first capture: asked the store.
        assert (cache.hits, cache.misses) == (0, 6)
        assert await cache.metadata_for(ids) == store_answer  # The next: from the cache.
        assert (cache.hits, cache.misses) == (6, 6)
        # An id without metadata is never cached as absent: asked again each time.
        unknown = 12345
        assert await cache.metadata_for([unknown]) == {}
        assert await cache.metadata_for([unknown]) == {}
        assert cache.misses == 8
        # Bounded: the oldest found ids are dropped first.
        small = MetadataCache(api.server.store, entries_max=2)
        assert await small.metadata_for(ids) == store_answer
        assert await small.metadata_for(ids[-2:]) == {i: store_answer[i] for i in ids[-2:]}
        assert (small.hits, small.misses) == (2, 6)
        assert await small.metadata_for(ids[:1]) == {ids[0]: store_answer[ids[0]]}
        assert small.misses == 7
    finally:
        await api.channel.close()
        await api.server.stop()
