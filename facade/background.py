"""Background work: the threads that own a resource, and loops that run until the service stops.

- `single_thread_executor`: one named thread for a resource that is not safe to share across threads
  (the embedded engine's ledger, a SQLite connection, a chDB session). Every call on the resource
  runs there, in submission order, and the event loop never blocks on it.
- `run_until_stopped`: a round of work repeated until `stop` is set; a failing round is retried with
  exponential backoff between named bounds, never skipped (change capture and Kafka ingestion: the
  work is idempotent, so a retried round repeats, it does not lose).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from facade.observability import metrics
from facade.observability.logs import get_logger

__all__ = [
    "RETRY_BACKOFF_MAX_SECONDS",
    "RETRY_BACKOFF_MIN_SECONDS",
    "run_until_stopped",
    "single_thread_executor",
]

RETRY_BACKOFF_MIN_SECONDS = 0.1
RETRY_BACKOFF_MAX_SECONDS = 5.0
"""A failing round is retried after a backoff that doubles from the minimum up to the maximum."""

log = get_logger("ledger.background")


def single_thread_executor(name: str) -> ThreadPoolExecutor:
    """An executor of exactly one thread, named `name` in thread dumps and profiles."""
    assert name
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)


async def run_until_stopped(
    stop: asyncio.Event,
    round_: Callable[[], Awaitable[float]],
    *,
    component: str,
    recover: Callable[[], Awaitable[None]] | None = None,
    log_fields: Mapping[str, str] | None = None,
) -> None:
    """Runs `round_` until `stop` is set. A round returns how long to wait before the next (0: at once;
    `stop` ends the wait early). A round that raises is counted (`ledger_retries_total{component}`),
    logged, followed by `recover` (e.g. rewind a consumer), and retried after the backoff."""
    assert component
    backoff = RETRY_BACKOFF_MIN_SECONDS
    while not stop.is_set():
        try:
            wait_seconds = await round_()
        except Exception as error:  # Never stop silently: the caller's work is retried, never skipped.
            metrics.retries_total.labels(component).inc()
            log.warning("retrying", component=component, error=str(error), backoff_s=backoff, **(log_fields or {}))
            if recover is not None:
                await recover()
            await _wait(stop, backoff)
            backoff = min(backoff * 2, RETRY_BACKOFF_MAX_SECONDS)
            continue
        assert wait_seconds >= 0
        backoff = RETRY_BACKOFF_MIN_SECONDS
        if wait_seconds > 0:
            await _wait(stop, wait_seconds)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
