"""Process-wide runtime tuning shared by the service and the benchmarks."""

from __future__ import annotations

import asyncio
import gc
import sys

GC_THRESHOLD_YOUNG = 100_000
"""Allocations between young collections (CPython's default is 700).

The ledger keeps millions of long-lived, acyclic records (accounts, transfers, history). With the
default thresholds the cyclic collector rescans them over and over: measured on the 8189-transfer
engine benchmark, durable throughput rose from ~80k to ~123k transfers/s with these thresholds.
"""
GC_THRESHOLD_MIDDLE = 50
GC_THRESHOLD_OLD = 100


def tune_gc() -> None:
    gc.set_threshold(GC_THRESHOLD_YOUNG, GC_THRESHOLD_MIDDLE, GC_THRESHOLD_OLD)


SWITCH_INTERVAL_SECONDS = 0.0005
"""How long a thread may hold the GIL while another waits (CPython's default is 5 ms).

The event loop releases the GIL at every syscall (each socket read and write, each epoll) and must then
wait for it; with a CPU-bound thread running (mapping a large batch, the engine applying one, the
projector), each of those waits lasts up to the interval: a convoy that slows every call on the loop.
Measured with scripts/bench_overload.py: the service's CPU share and throughput rose ~1.4x at 0.5 ms."""


def tune_switch_interval() -> None:
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)


def freeze_heap() -> None:
    """Moves every object alive now (e.g. the state just recovered from the journal) out of the
    collector's reach: they are freed by reference counting as usual, never rescanned for cycles."""
    gc.collect()
    gc.freeze()


YOUNG_ONLY_THRESHOLD = 10_000
"""Allocations between young collections once the service serves (`YoungOnlyCollection`).

Measured under `scripts/bench_api.py` (100 transactions per call): with GC_THRESHOLD_YOUNG a young
collection found 100,000-235,000 live objects (the engine's transfers and balances, the transaction index:
~12 tracked objects kept per transaction) and held the GIL 20-90 ms, about once a second: every call in
flight waited that long, most of the gap between p50 and p99. At this threshold (with the survivors
frozen, `YoungOnlyCollection`) a young collection holds it 5-25 ms, for ~25 % more collector CPU."""
FULL_COLLECTION_GROWTH = 1.0
"""The heap grows by this share of itself (in allocated blocks, `sys.getallocatedblocks`: O(1) to ask)
before a full collection. A full collection scans the whole heap (the state recovered at start included:
~250 ms per million objects here), so it must be rare: doubling keeps its total work to about one
traversal per object allocated and the number of such pauses logarithmic in the heap's growth (CPython's
own rule for its oldest generation, 25 %, would pause every few seconds under sustained writes)."""
FULL_COLLECTION_BLOCKS_MIN = 4_000_000
"""The least heap (allocated blocks) the growth rule is measured against (a fresh, empty service)."""


class YoungOnlyCollection:
    """Cyclic garbage collection without the middle and old generations' rescans of the ledger's state.

    After every collection the survivors are frozen (`gc.freeze`): nearly all of them are the ledger's
    long-lived, acyclic state, which the collector would otherwise rescan in every middle-generation
    collection (what 50 young collections kept: up to 50 x GC_THRESHOLD_YOUNG objects in one pause) and
    every full one. Frozen objects are still freed by reference counting as usual; only a cycle that was
    alive at a collection and became garbage later stays until the next full collection, which runs (on
    the event loop, `gc.unfreeze` + `gc.collect`) once the heap has grown by FULL_COLLECTION_GROWTH since
    the last one: cyclic garbage is bounded by that share of the heap (in practice far less: only cycles
    caught alive by a collection). The cost: objects that live a little longer than a young collection's
    interval (in-flight requests, recent-metadata caches) are traversed once each, where the 100,000
    threshold let more of them die first. Measured under bench_api (defaults, 100 and 1000 tx/call, 20 s
    each): collector CPU 7.1 µs/tx against 5.6 with GC_THRESHOLD_YOUNG alone, its longest pause 24 ms against
    89 ms (28 young collections of 40-89 ms each, one every ~1.3 s)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._blocks_base = max(sys.getallocatedblocks(), FULL_COLLECTION_BLOCKS_MIN)
        self._full_scheduled = False
        self.full_collections = 0

    def install(self) -> None:
        assert self._collected not in gc.callbacks
        gc.set_threshold(YOUNG_ONLY_THRESHOLD, GC_THRESHOLD_MIDDLE, GC_THRESHOLD_OLD)
        gc.callbacks.append(self._collected)
        assert gc.isenabled(), "the service relies on the collector for cycles"

    def uninstall(self) -> None:
        if self._collected in gc.callbacks:
            gc.callbacks.remove(self._collected)
        assert self._collected not in gc.callbacks

    def _collected(self, phase: str, _info: dict[str, int]) -> None:
        """gc's callback: runs in whichever thread allocated, with the GIL, after each collection."""
        if phase != "stop":
            return
        gc.freeze()  # The survivors (gc.collect cannot run in here: the collector is not reentrant).
        if self._full_scheduled or sys.getallocatedblocks() <= self._blocks_base * (1 + FULL_COLLECTION_GROWTH):
            return
        self._full_scheduled = True
        try:
            self._loop.call_soon_threadsafe(self.collect_fully)
        except RuntimeError:  # The loop has closed (shutting down): nothing is served any more.
            self._full_scheduled = False

    def collect_fully(self) -> None:
        """Unfreezes and collects the whole heap (reclaiming cycles frozen while alive), then refreezes it."""
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.full_collections += 1
        self._blocks_base = max(sys.getallocatedblocks(), FULL_COLLECTION_BLOCKS_MIN)
        self._full_scheduled = False
        assert self._blocks_base >= FULL_COLLECTION_BLOCKS_MIN
