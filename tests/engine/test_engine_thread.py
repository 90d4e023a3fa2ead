"""The embedded engine's one thread (EmbeddedEngine._run): results and errors reach their callers, calls run
in submission order, and a call still queued when its caller gives up never runs (nothing is written for a
caller who is gone). Pinned here because the hand-off is where the single-transaction path's speed work goes
(fewer hops, other hand-offs): whatever replaces run_in_executor must keep these."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import BATCH_EVENTS_MAX, Account, CreateAccountStatus, TooMuchDataError, Transfer

WAIT_SECONDS = 10.0
"""A bound on waiting for the engine's thread in these tests (never reached when they pass)."""


def _account(account_id: int) -> Account:
    return Account(id=account_id, ledger=1, code=1)


async def test_results_and_errors_reach_their_callers_in_order(tmp_path: Path) -> None:
    engine = await EmbeddedEngine.open(tmp_path)
    try:
        created = await asyncio.gather(*(engine.create_accounts([_account(n)]) for n in range(1, 6)))
        assert [[r.status for r in results] for results in created] == [[CreateAccountStatus.CREATED]] * 5
        accounts = await engine.lookup_accounts(list(range(1, 6)))
        assert [a.id for a in accounts] == [1, 2, 3, 4, 5]
        # Submission order: the earlier account's timestamp is the smaller one.
        assert [a.timestamp for a in accounts] == sorted(a.timestamp for a in accounts)
        too_many = [
            Transfer(id=n + 1, debit_account_id=1, credit_account_id=2, amount=1, ledger=1, code=1)
            for n in range(BATCH_EVENTS_MAX + 1)
        ]
        with pytest.raises(TooMuchDataError):
            await engine.create_transfers(too_many)
        assert await engine.lookup_transfers([1]) == []  # The refused batch wrote nothing.
    finally:
        await engine.close()


async def test_a_call_queued_behind_a_running_one_never_runs_once_its_caller_is_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = await EmbeddedEngine.open(tmp_path)
    inside = threading.Event()
    release = threading.Event()
    fdatasync = os.fdatasync

    def held(fd: int) -> None:  # The first append waits here, on the engine's thread, until released.
        inside.set()
        assert release.wait(WAIT_SECONDS)
        fdatasync(fd)

    try:
        monkeypatch.setattr(os, "fdatasync", held)
        first = asyncio.create_task(engine.create_accounts([_account(1)]))
        assert await asyncio.to_thread(inside.wait, WAIT_SECONDS)
        second = asyncio.create_task(engine.create_accounts([_account(2)]))
        await asyncio.sleep(0)  # Queued behind the first on the engine's thread.
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        release.set()
        assert len(await first) == 1
        assert [a.id for a in await engine.lookup_accounts([1, 2])] == [1]  # The cancelled one never ran.
    finally:
        release.set()
        await engine.close()
    reopened = await EmbeddedEngine.open(tmp_path)
    try:
        assert [a.id for a in await reopened.lookup_accounts([1, 2])] == [1]
    finally:
        await reopened.close()
