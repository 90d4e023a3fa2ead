"""The GIL switch interval is short while a journal append runs, and only then (facade.engine.embedded,
APPEND_SWITCH_INTERVAL_SECONDS): the engine's thread gets the GIL back quickly after each of the append's
syscalls, and the rest of the process keeps the interval it chose. Checked on a real journal: the
interval the append's fdatasyncs run under is recorded from inside the real call."""

from __future__ import annotations

import errno
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from facade.engine import embedded
from facade.engine.embedded import APPEND_SWITCH_INTERVAL_SECONDS, EmbeddedLedger
from facade.engine.protocol import EngineUnavailableError
from facade.engine.types import Account, CreateTransferStatus, Transfer

PROCESS_SWITCH_INTERVAL_SECONDS = 0.0005
"""What the service chooses (facade.runtime.SWITCH_INTERVAL_SECONDS)."""
TOLERANCE_SECONDS = 1e-6
"""The interpreter keeps the interval in whole microseconds."""


@pytest.fixture
def process_interval() -> Iterator[float]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(PROCESS_SWITCH_INTERVAL_SECONDS)
    try:
        yield sys.getswitchinterval()
    finally:
        sys.setswitchinterval(previous)


def _transfers(first_id: int, count: int) -> list[Transfer]:
    return [
        Transfer(id=first_id + i, debit_account_id=1, credit_account_id=2, amount=1, ledger=1, code=1)
        for i in range(count)
    ]


def test_an_append_runs_under_the_short_interval_and_the_process_keeps_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, process_interval: float
) -> None:
    seen: list[float] = []
    fdatasync = os.fdatasync

    def recording(fd: int) -> None:
        seen.append(sys.getswitchinterval())
        fdatasync(fd)  # The real call: the append stays durable.

    ledger = EmbeddedLedger.open(tmp_path)
    try:
        monkeypatch.setattr(os, "fdatasync", recording)
        ledger.create_accounts([Account(id=1, ledger=1, code=1), Account(id=2, ledger=1, code=1)])
        results = ledger.create_transfers(_transfers(10, 3))
        assert [r.status for r in results] == [CreateTransferStatus.CREATED] * 3
        assert abs(sys.getswitchinterval() - process_interval) < TOLERANCE_SECONDS  # Back after each append.
    finally:
        monkeypatch.undo()
        ledger.close()
    # Two appends (accounts, transfers), each a record and its header copy synced.
    assert len(seen) == 4
    assert all(abs(interval - APPEND_SWITCH_INTERVAL_SECONDS) < TOLERANCE_SECONDS for interval in seen), seen
    reopened = EmbeddedLedger.open(tmp_path)
    try:
        assert [t.id for t in reopened.lookup_transfers([10, 11, 12])] == [10, 11, 12]
    finally:
        reopened.close()


def test_a_failed_append_puts_the_interval_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, process_interval: float
) -> None:
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, f"fd {fd}: injected EIO")

    ledger = EmbeddedLedger.open(tmp_path)
    try:
        ledger.create_accounts([Account(id=1, ledger=1, code=1), Account(id=2, ledger=1, code=1)])
        monkeypatch.setattr(os, "fdatasync", failing)
        with pytest.raises(EngineUnavailableError):
            ledger.create_transfers(_transfers(10, 1))
        assert abs(sys.getswitchinterval() - process_interval) < TOLERANCE_SECONDS
    finally:
        monkeypatch.undo()
        ledger.close()


def test_overlapping_appends_restore_once_the_last_one_ends(process_interval: float) -> None:
    switching = embedded._FastSwitching()
    first_inside = threading.Event()
    second_done = threading.Event()
    during: list[float] = []

    def second() -> None:
        first_inside.wait()
        with switching:
            during.append(sys.getswitchinterval())
        second_done.set()

    thread = threading.Thread(target=second)
    thread.start()
    with switching:
        first_inside.set()
        second_done.wait()
        # The second append ended while this one runs: the interval stays short.
        during.append(sys.getswitchinterval())
    thread.join()
    assert all(abs(interval - APPEND_SWITCH_INTERVAL_SECONDS) < TOLERANCE_SECONDS for interval in during), during
    assert abs(sys.getswitchinterval() - process_interval) < TOLERANCE_SECONDS


def test_never_lengthens_and_leaves_a_value_set_meanwhile(process_interval: float) -> None:
    switching = embedded._FastSwitching()
    shorter = APPEND_SWITCH_INTERVAL_SECONDS / 2
    sys.setswitchinterval(shorter)
    expected = sys.getswitchinterval()
    with switching:
        assert sys.getswitchinterval() == expected  # Already shorter: not touched.
    assert sys.getswitchinterval() == expected
    sys.setswitchinterval(process_interval)
    with switching:
        sys.setswitchinterval(0.002)  # Someone else chooses meanwhile.
        chosen = sys.getswitchinterval()
    assert sys.getswitchinterval() == chosen
