"""facade.runtime.YoungOnlyCollection: survivors of a collection are frozen, acyclic objects are still freed
by reference counting, and cyclic garbage frozen while alive is reclaimed by the full collection the
growth rule schedules on the event loop."""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref
from collections.abc import Iterator

import pytest

from facade import runtime
from facade.runtime import FULL_COLLECTION_GROWTH, YoungOnlyCollection


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture(autouse=True)
def gc_restored() -> Iterator[None]:
    """The test process's collector as it was: thresholds, callbacks, nothing left frozen."""
    thresholds = gc.get_threshold()
    callbacks = list(gc.callbacks)
    yield
    gc.callbacks[:] = callbacks
    gc.set_threshold(*thresholds)
    gc.unfreeze()
    gc.collect()


def _cycle() -> weakref.ref[_Node]:
    first, second = _Node(), _Node()
    first.other, second.other = second, first
    return weakref.ref(first)


async def test_survivors_are_frozen_and_acyclic_ones_still_freed() -> None:
    collection = YoungOnlyCollection(asyncio.get_running_loop())
    collection.install()
    assert gc.get_threshold()[0] == runtime.YOUNG_ONLY_THRESHOLD
    kept = _Node()
    frozen_before = gc.get_freeze_count()
    gc.collect(0)  # Any collection: its callback freezes what survived.
    assert gc.get_freeze_count() > frozen_before
    assert gc.get_count()[0] == 0
    acyclic = weakref.ref(kept)
    del kept
    assert acyclic() is None  # Frozen, yet freed by its reference count as soon as it is dropped.
    collection.uninstall()
    assert collection._collected not in gc.callbacks


async def test_a_cycle_frozen_alive_is_reclaimed_by_the_full_collection() -> None:
    collection = YoungOnlyCollection(asyncio.get_running_loop())
    collection.install()
    alive = _cycle()
    holder = alive()
    gc.collect(0)  # The cycle is alive now: frozen with the rest.
    del holder
    gc.collect()  # A collection of every generation does not look at frozen objects.
    assert alive() is not None, "frozen cyclic garbage waits for the full collection"
    collection.collect_fully()
    assert alive() is None
    assert collection.full_collections == 1
    collection.uninstall()


async def test_growth_schedules_one_full_collection_on_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "FULL_COLLECTION_BLOCKS_MIN", 1)
    collection = YoungOnlyCollection(asyncio.get_running_loop())
    collection.install()
    base = sys.getallocatedblocks()
    grown = [_Node() for _ in range(int(base * FULL_COLLECTION_GROWTH) + 1_000)]  # Past the growth share.
    assert sys.getallocatedblocks() > base * (1 + FULL_COLLECTION_GROWTH)
    gc.collect(0)
    assert collection.full_collections == 0  # Scheduled, not run inside the collector's callback.
    gc.collect(0)  # A second collection before the loop turns schedules nothing more.
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert collection.full_collections == 1
    assert len(grown) > base
    collection.uninstall()
