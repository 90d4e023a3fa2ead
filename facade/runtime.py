"""Process-wide runtime tuning shared by the service and the benchmarks."""

from __future__ import annotations

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
