"""The one retry-until-stopped loop of change capture and Kafka ingestion."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from facade.background import run_until_stopped


def retries(component: str) -> float:
    return REGISTRY.get_sample_value("ledger_retries_total", {"component": component}) or 0.0


async def test_failed_rounds_are_recovered_and_retried_until_one_succeeds() -> None:
    stop = asyncio.Event()
    calls: list[str] = []
    before = retries("test_loop")

    async def round_() -> float:
        calls.append("round")
        if calls.count("round") <= 2:
            raise ConnectionError("broker away")
        stop.set()
        return 0.0

    async def recover() -> None:
        calls.append("recover")

    await run_until_stopped(stop, round_, component="test_loop", recover=recover)
    assert calls == ["round", "recover", "round", "recover", "round"]
    assert retries("test_loop") == before + 2


async def test_a_set_stop_ends_the_wait_between_rounds() -> None:
    stop = asyncio.Event()
    rounds = 0

    async def round_() -> float:
        nonlocal rounds
        rounds += 1
        asyncio.get_running_loop().call_soon(stop.set)
        return 3600.0  # Waits an hour unless `stop` cuts the wait short.

    await asyncio.wait_for(run_until_stopped(stop, round_, component="test_loop"), 60)
    assert rounds == 1
