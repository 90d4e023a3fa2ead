"""The embedded engine's one thread (EmbeddedEngine._run): results and errors reach their callers, calls run
in submission order, and a call still queued when its caller gives up never runs (nothing is written for a
caller who is gone). Pinned here because the hand-off is where the single-transaction path's speed work goes
(fewer hops, other hand-offs): whatever replaces run_in_executor must keep these. A small batch runs on the
caller's thread only while the engine's thread is idle and the disk fast, and never ahead of a call handed
off before it."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from facade.engine.embedded import INLINE_APPEND_SECONDS_MAX, INLINE_TRANSFERS_MAX, EmbeddedEngine
from facade.engine.types import (
    BATCH_EVENTS_MAX,
    Account,
    CreateAccountStatus,
    CreateTransferStatus,
    TooMuchDataError,
    Transfer,
)

WAIT_SECONDS = 10.0
"""A bound on waiting for the engine's thread in these tests (never reached when they pass)."""
SLOW_APPENDS_MAX = 100
"""A bound on the appends it takes the moving average of append times to cross INLINE_APPEND_SECONDS_MAX
(at its weight of a fifth, about ten)."""


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
    fdatasync = os.fdatasync
    inside, release = _hold_fdatasync(monkeypatch)
    try:
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


def _hold_fdatasync(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """From now on an fdatasync (on the engine's thread: the next append) sets `inside` and waits until
    `release` is set; the caller restores os.fdatasync once the append it meant to hold is inside."""
    inside = threading.Event()
    release = threading.Event()
    fdatasync = os.fdatasync

    def held(fd: int) -> None:
        inside.set()
        assert release.wait(WAIT_SECONDS)
        fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", held)
    return inside, release


def _transfers(first_id: int, count: int) -> list[Transfer]:
    return [
        Transfer(id=first_id + n, debit_account_id=1, credit_account_id=2, amount=1, ledger=1, code=1)
        for n in range(count)
    ]


_FDATASYNC = os.fdatasync


def _recording_fdatasync(monkeypatch: pytest.MonkeyPatch, delay_seconds: float = 0.0) -> list[int]:
    """Records the thread of every real fdatasync (optionally made slower first); returns the record."""
    threads: list[int] = []
    fdatasync = _FDATASYNC

    def recording(fd: int) -> None:
        threads.append(threading.get_ident())
        if delay_seconds:
            time.sleep(delay_seconds)
        fdatasync(fd)  # The real call: the append stays durable.

    monkeypatch.setattr(os, "fdatasync", recording)
    return threads


async def test_a_small_batch_is_journaled_on_the_callers_thread_while_the_engine_is_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = await EmbeddedEngine.open(tmp_path)
    try:
        assert [r.status for r in await engine.create_accounts([_account(1), _account(2)])] == [
            CreateAccountStatus.CREATED
        ] * 2
        threads = _recording_fdatasync(monkeypatch)
        small = await engine.create_transfers(_transfers(10, INLINE_TRANSFERS_MAX))
        assert [r.status for r in small] == [CreateTransferStatus.CREATED] * INLINE_TRANSFERS_MAX
        assert threads == [threading.get_ident()] * 2  # Record and header copy, both on this (the loop's) thread.
        threads.clear()
        large = await engine.create_transfers(_transfers(100, INLINE_TRANSFERS_MAX + 1))
        assert [r.status for r in large] == [CreateTransferStatus.CREATED] * (INLINE_TRANSFERS_MAX + 1)
        assert len(threads) == 2 and threading.get_ident() not in threads  # The engine's thread.
    finally:
        await engine.close()
    reopened = await EmbeddedEngine.open(tmp_path)
    try:
        stored = await reopened.lookup_transfers([10, 10 + INLINE_TRANSFERS_MAX - 1, 100 + INLINE_TRANSFERS_MAX])
        assert len(stored) == 3  # Both batches were durable when answered.
    finally:
        await reopened.close()


async def test_a_batch_never_overtakes_a_call_handed_to_the_engine_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = await EmbeddedEngine.open(tmp_path)
    fdatasync = os.fdatasync
    inside, release = _hold_fdatasync(monkeypatch)
    try:
        accounts = asyncio.create_task(engine.create_accounts([_account(1), _account(2)]))
        assert await asyncio.to_thread(inside.wait, WAIT_SECONDS)
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        # Small enough to run inline, but the engine's thread is busy: it must queue behind the accounts
        # (had it run now, both accounts would be missing).
        transfers = asyncio.create_task(engine.create_transfers(_transfers(10, 1)))
        await asyncio.sleep(0)
        assert not transfers.done()
        release.set()
        assert [r.status for r in await accounts] == [CreateAccountStatus.CREATED] * 2
        assert [r.status for r in await transfers] == [CreateTransferStatus.CREATED]
    finally:
        release.set()
        await engine.close()


async def test_a_slow_disk_sends_small_batches_back_to_the_engines_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = await EmbeddedEngine.open(tmp_path)
    try:
        await engine.create_accounts([_account(1), _account(2)])
        threads = _recording_fdatasync(monkeypatch, delay_seconds=2 * INLINE_APPEND_SECONDS_MAX)
        appends = 0
        while engine.ledger.append_seconds_recent <= INLINE_APPEND_SECONDS_MAX:
            assert appends < SLOW_APPENDS_MAX, "appends twice as slow as the bound never moved the average over it"
            await engine.create_transfers(_transfers(10 + appends, 1))
            appends += 1
        threads.clear()
        assert [r.status for r in await engine.create_transfers(_transfers(1_000, 1))] == [CreateTransferStatus.CREATED]
        assert len(threads) == 2 and threading.get_ident() not in threads  # Slow disk: the engine's thread.
        threads = _recording_fdatasync(monkeypatch)  # Fast again: back on the caller's thread.
        appends = 0
        while engine.ledger.append_seconds_recent > INLINE_APPEND_SECONDS_MAX:
            assert appends < SLOW_APPENDS_MAX, "fast appends never brought the average back under the bound"
            await engine.create_transfers(_transfers(2_000 + appends, 1))
            appends += 1
        threads.clear()
        await engine.create_transfers(_transfers(3_000, 1))
        assert threads == [threading.get_ident()] * 2
    finally:
        await engine.close()
