"""facade.batcher.wait_all: every outcome in order, a failure returned in its place, and a caller that
gives up (cancelled) leaves the transactions' futures alone (the group commit still completes them)."""

from __future__ import annotations

import asyncio

import pytest

from facade.batcher import Committed, Outcome, wait_all


async def test_outcomes_in_order_with_failures_in_place() -> None:
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[Outcome]] = [loop.create_future() for _ in range(3)]
    futures[0].set_result(Committed(7, deduplicated=False))  # Done before the wait starts.
    waiting = asyncio.create_task(wait_all(futures))
    await asyncio.sleep(0)
    assert not waiting.done()
    futures[2].set_exception(RuntimeError("engine failed"))
    await asyncio.sleep(0)
    assert not waiting.done()
    futures[1].set_result(Committed(8, deduplicated=True))
    results = await waiting
    assert results[:2] == [Committed(7, deduplicated=False), Committed(8, deduplicated=True)]
    assert isinstance(results[2], RuntimeError)


async def test_a_cancelled_caller_leaves_the_futures_alone() -> None:
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[Outcome]] = [loop.create_future() for _ in range(2)]
    waiting = asyncio.create_task(wait_all(futures))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not any(future.cancelled() or future.done() for future in futures)
    futures[0].set_result(Committed(1, deduplicated=False))  # Completing them later reports nowhere.
    futures[1].set_result(Committed(2, deduplicated=False))
    await asyncio.sleep(0)
    assert all(future.done() for future in futures)


async def test_outcomes_in_order_whatever_order_they_resolve_in() -> None:
    """The waiter follows the last future still pending: resolved last-first (a wait per future) or in
    a shuffled order, every outcome comes back in its place."""
    loop = asyncio.get_running_loop()
    for order in (list(range(50))[::-1], [7, 3, 49, 0, 12, 48, *range(13, 48), 1, 2, 4, 5, 6, *range(8, 12)]):
        assert sorted(order) == list(range(50))
        futures: list[asyncio.Future[Outcome]] = [loop.create_future() for _ in range(50)]
        waiting = asyncio.create_task(wait_all(futures))
        for index in order:
            await asyncio.sleep(0)
            assert not waiting.done()
            futures[index].set_result(Committed(index, deduplicated=False))
        assert await waiting == [Committed(index, deduplicated=False) for index in range(50)]
