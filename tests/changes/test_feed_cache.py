"""The change captures' shared read of the change feed (facade.changes.feed_cache) over the real embedded
engine: every answer is the engine's own, each change is read from the engine once however many captures
read it, the run stays bounded, and captures behind it or reading at once get the engine's answers too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from facade.changes.feed_cache import ChangeFeedCache
from facade.changes.poller import ChangeCapture, Pacing
from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import Account, AccountFlags, ChangeEvent, ChangeEventsFilter, Transfer, TransferFlags
from tests.changes.test_change_capture import CollectingSink, Metadata, transfers, verify_chain


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[EmbeddedEngine]:
    engine = await EmbeddedEngine.open(tmp_path / "engine")
    await engine.create_accounts([Account(id=i, ledger=840, code=1, flags=AccountFlags.HISTORY) for i in range(1, 5)])
    yield engine
    await engine.close()


class CountingEngine:
    """The engine's change feed, counting the changes it hands out (what the cache exists to save)."""

    def __init__(self, engine: EmbeddedEngine) -> None:
        self.engine = engine
        self.reads = 0
        self.changes = 0

    async def get_change_events(self, filter: ChangeEventsFilter) -> list[ChangeEvent]:
        events = await self.engine.get_change_events(filter)
        self.reads += 1
        self.changes += len(events)
        return events


def same(left: list[ChangeEvent], right: list[ChangeEvent]) -> bool:
    return [(e.timestamp, e.type, e.transfer, e.debit_account, e.credit_account) for e in left] == [
        (e.timestamp, e.type, e.transfer, e.debit_account, e.credit_account) for e in right
    ]


async def test_every_answer_is_the_engines_and_each_change_is_read_once(engine: EmbeddedEngine) -> None:
    counting = CountingEngine(engine)
    cache = ChangeFeedCache(counting)
    await engine.create_transfers(transfers(1, 40))
    everything = await engine.get_change_events(ChangeEventsFilter(limit=1000))
    assert len(everything) == 40
    first = everything[0].timestamp
    # A fast capture reads in small pages; a slow one then reads the same changes in larger ones.
    fast = await cache.get_change_events(ChangeEventsFilter(timestamp_min=first, limit=15))
    assert same(fast, everything[:15])
    fast += await cache.get_change_events(ChangeEventsFilter(timestamp_min=fast[-1].timestamp + 1, limit=15))
    assert same(fast, everything[:30])
    read_before = counting.changes
    assert read_before == 30
    slow = await cache.get_change_events(ChangeEventsFilter(timestamp_min=first, limit=30))
    assert same(slow, everything[:30])
    assert counting.changes == read_before  # All 30 from the run.
    # More than the run holds: the run's part, then the engine's after the run's last change.
    more = await cache.get_change_events(ChangeEventsFilter(timestamp_min=everything[20].timestamp, limit=100))
    assert same(more, everything[20:])
    assert counting.changes == 40  # Only the 10 the run lacked.
    # New changes after the run, read as captures do (from their checkpoint's last change + 1; the engine's
    # timestamps jump between batches): read once, then answered from the run.
    await engine.create_transfers(transfers(100, 5))
    everything = await engine.get_change_events(ChangeEventsFilter(limit=1000))
    assert everything[40].timestamp > everything[39].timestamp + 1
    for _ in range(2):
        tail = await cache.get_change_events(ChangeEventsFilter(timestamp_min=everything[39].timestamp + 1, limit=100))
        assert same(tail, everything[40:])
    assert counting.changes == 45
    # A timestamp between changes (a checkpoint's last + 1) and past the end.
    between = await cache.get_change_events(ChangeEventsFilter(timestamp_min=everything[9].timestamp + 1, limit=3))
    assert same(between, everything[10:13])
    assert await cache.get_change_events(ChangeEventsFilter(timestamp_min=everything[-1].timestamp + 1)) == []
    assert cache.changes_read == counting.changes == 45
    assert cache.changes_cached > 0


async def test_the_run_is_bounded_and_a_capture_behind_it_reads_the_engine(engine: EmbeddedEngine) -> None:
    counting = CountingEngine(engine)
    cache = ChangeFeedCache(counting, changes_max=10)
    await engine.create_transfers(transfers(1, 30))
    everything = await engine.get_change_events(ChangeEventsFilter(limit=1000))
    for start in range(0, 30, 8):
        page = await cache.get_change_events(ChangeEventsFilter(timestamp_min=everything[start].timestamp, limit=8))
        assert same(page, everything[start : start + 8])
    assert counting.changes == 30
    # Only the newest 10 are kept: a capture behind them reads the engine, and does not evict them.
    behind = await cache.get_change_events(ChangeEventsFilter(timestamp_min=everything[0].timestamp, limit=25))
    assert same(behind, everything[:25])
    assert counting.changes == 55
    newest = await cache.get_change_events(ChangeEventsFilter(timestamp_min=everything[20].timestamp, limit=10))
    assert same(newest, everything[20:])
    assert counting.changes == 55
    # A read that starts after the run (the feed moved on past a gap no one read) starts a new run.
    await engine.create_transfers(transfers(100, 5))
    everything = await engine.get_change_events(ChangeEventsFilter(limit=1000))
    ahead = await cache.get_change_events(ChangeEventsFilter(timestamp_min=everything[32].timestamp, limit=10))
    assert same(ahead, everything[32:])
    again = await cache.get_change_events(ChangeEventsFilter(timestamp_min=everything[33].timestamp, limit=10))
    assert same(again, everything[33:])
    assert counting.changes == 58
    # A limit above the engine's is capped as the engine caps it, from the run too.
    capped = ChangeFeedCache(counting, changes_max=20_000)
    await engine.create_transfers(transfers(1000, 8189))
    await engine.create_transfers(transfers(20_000, 10))
    everything = await engine.get_change_events(ChangeEventsFilter(limit=8189))
    first = await capped.get_change_events(ChangeEventsFilter(timestamp_min=everything[0].timestamp, limit=8189))
    assert same(first, everything)
    following = everything[-1].timestamp + 1
    assert len(await capped.get_change_events(ChangeEventsFilter(timestamp_min=following, limit=8189))) >= 10
    assert len(await capped.get_change_events(ChangeEventsFilter(timestamp_min=everything[0].timestamp))) == 8189
    # Filters change capture never sends go to the engine as they are.
    bounded = ChangeEventsFilter(timestamp_min=everything[0].timestamp, timestamp_max=everything[4].timestamp)
    assert same(await cache.get_change_events(bounded), everything[:5])
    assert same(await cache.get_change_events(ChangeEventsFilter(limit=3)), everything[:3])


async def test_reads_at_once_each_get_the_engines_answer(engine: EmbeddedEngine) -> None:
    counting = CountingEngine(engine)
    cache = ChangeFeedCache(counting)
    await engine.create_transfers(transfers(1, 12))
    everything = await engine.get_change_events(ChangeEventsFilter(limit=1000))
    await cache.get_change_events(ChangeEventsFilter(timestamp_min=everything[0].timestamp, limit=4))
    await engine.create_transfers(transfers(100, 6))
    everything = await engine.get_change_events(ChangeEventsFilter(limit=1000))
    # Three readers whose run ends at the same place, at once: one extends it, in turn.
    answers = await asyncio.gather(
        *(
            cache.get_change_events(ChangeEventsFilter(timestamp_min=everything[start].timestamp, limit=limit))
            for start, limit in ((0, 100), (2, 5), (4, 100))
        )
    )
    assert same(answers[0], everything)
    assert same(answers[1], everything[2:7])
    assert same(answers[2], everything[4:])
    later = await cache.get_change_events(ChangeEventsFilter(timestamp_min=everything[1].timestamp, limit=100))
    assert same(later, everything[1:])
    # They took turns: what the first read from the engine, the others found in the run.
    assert counting.changes == len(everything)


async def test_readers_asking_at_once_for_the_same_new_changes_read_them_from_the_engine_once(
    engine: EmbeddedEngine,
) -> None:
    """A capture's read-ahead and another capture's poll for the same new changes, at the same instant."""
    counting = CountingEngine(engine)
    cache = ChangeFeedCache(counting)
    await engine.create_transfers(transfers(1, 9))
    everything = await engine.get_change_events(ChangeEventsFilter(limit=1000))
    request = ChangeEventsFilter(timestamp_min=everything[0].timestamp, limit=100)
    answers = await asyncio.gather(*(cache.get_change_events(request) for _ in range(3)))
    assert all(same(answer, everything) for answer in answers)
    # One copy of each change from the engine (the others' reads past the run's end find nothing new).
    assert counting.changes == len(everything)


async def test_captures_sharing_the_cache_publish_what_they_would_alone(engine: EmbeddedEngine, tmp_path: Path) -> None:
    """The audit's, the read model's and Kafka's captures at their own paces over one cache: each publishes
    exactly the entries (ids, chain) a capture straight over the engine does, two-phase changes included."""
    await engine.create_transfers(transfers(1, 20))
    pending = Transfer(
        id=500, debit_account_id=1, credit_account_id=2, amount=7, ledger=840, code=1, flags=TransferFlags.PENDING
    )
    await engine.create_transfers([pending])
    post = Transfer(id=501, pending_id=500, amount=7, ledger=840, code=1, flags=TransferFlags.POST_PENDING_TRANSFER)
    await engine.create_transfers([post, *transfers(600, 9)])
    counting = CountingEngine(engine)
    cache = ChangeFeedCache(counting)
    alone = CollectingSink()
    reference = ChangeCapture(engine, alone, tmp_path / "alone.json", Metadata(), pacing=Pacing(batch_changes_max=50))
    assert await reference.run_once() == 31
    sinks = [CollectingSink() for _ in range(3)]
    captures = [
        ChangeCapture(cache, sink, tmp_path / f"c{n}.json", Metadata(), pacing=Pacing(batch_changes_max=size))
        for n, (sink, size) in enumerate(zip(sinks, (4, 7, 50), strict=True))
    ]
    while any(capture.checkpoint.timestamp_last < reference.checkpoint.timestamp_last for capture in captures):
        for capture in captures:
            await capture.run_once()
    for sink, capture in zip(sinks, captures, strict=True):
        assert sink.entries == alone.entries
        assert capture.checkpoint == reference.checkpoint
        verify_chain(sink.entries)
    assert counting.changes == 31  # Three captures, each change read from the engine once.


async def test_the_services_captures_read_each_change_from_the_engine_once(tmp_path: Path) -> None:
    """`ledger serve` with the read model (its own process) and the audit tree: two captures over one feed."""
    from tests.api.conftest import credit, open_api

    api = await open_api(tmp_path, history=True)
    try:
        feed = api.server.change_feed
        assert feed is not None and api.server.read_model is not None
        alice = await api.account("alice")
        changes = 0
        for n in range(6):
            await api.post(f"fund-{n}", credit(alice, 10 + n))
            changes += 1
            # Both captures (the audit tree's every 0.1-0.5 s, the read model's every 0.3-0.5 s) take it.
            for _ in range(200):
                if feed.changes_read + feed.changes_cached >= 2 * changes:
                    break
                await asyncio.sleep(0.05)
            assert feed.changes_read + feed.changes_cached >= 2 * changes
        # Each change came from the engine once and from the run once (two captures reading the same new
        # change in the same instant would both go to the engine: allowed, but not for every change).
        assert feed.changes_read < 2 * changes
        assert feed.changes_cached >= 1
    finally:
        await api.channel.close()
        await api.server.stop()
