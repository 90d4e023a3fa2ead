"""Write faults keep reads alive: a full disk (a real, small tmpfs) pauses writes with UNAVAILABLE and a
reason, reads keep serving exactly the acknowledged state, writes resume by themselves once space
returns (no restart), and nothing acknowledged is lost or half-written across a restart. A failed
fdatasync (injected: no real device fails on demand) makes the engine dead for writes only."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from facade.engine import embedded
from facade.engine.embedded import EmbeddedEngine, EmbeddedLedger
from facade.engine.journal import HEADER_SIZE, HEADERS_FILE, JOURNAL_FILE
from facade.engine.journal_check import check
from facade.engine.protocol import EngineUnavailableError
from facade.engine.types import Account, CreateTransferStatus, Transfer
from tests._tmpfs import small_tmpfs

FILESYSTEM_SIZE = "384k"
BALLAST_SIZE = 128 * 1024  # Deleted to "free space".
TRANSFERS_PER_BATCH = 100
BATCHES_MAX = 200  # The file system is full long before this.


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path, FILESYSTEM_SIZE) as mountpoint:
        yield mountpoint


def _batch(number: int) -> list[Transfer]:
    return [
        Transfer(id=(number << 20) + i, debit_account_id=1, credit_account_id=2, amount=number, ledger=1, code=1)
        for i in range(TRANSFERS_PER_BATCH)
    ]


def _fill(ledger: EmbeddedLedger) -> tuple[list[int], int]:
    """Writes batches until the disk is full; returns the acknowledged batches and the refused one."""
    acknowledged: list[int] = []
    for number in range(1, BATCHES_MAX):
        try:
            results = ledger.create_transfers(_batch(number))
        except EngineUnavailableError as error:
            reason = str(error)
            if "ENOSPC" not in reason or "resume" not in reason:
                raise AssertionError(f"unclear reason: {reason}") from error
            return acknowledged, number
        assert all(r.status == CreateTransferStatus.CREATED for r in results)
        acknowledged.append(number)
    raise AssertionError("the file system never filled")


def _assert_serving(ledger: EmbeddedLedger, acknowledged: list[int], absent: int) -> None:
    """Reads answer, with exactly the acknowledged batches."""
    for number in (acknowledged[0], acknowledged[-1]):
        assert [t.amount for t in ledger.lookup_transfers([t.id for t in _batch(number)])] == [
            number
        ] * TRANSFERS_PER_BATCH
    assert ledger.lookup_transfers([t.id for t in _batch(absent)]) == []
    total = sum(acknowledged) * TRANSFERS_PER_BATCH
    accounts = ledger.lookup_accounts([1, 2])
    assert [a.debits_posted for a in accounts] == [total, 0]
    assert [a.credits_posted for a in accounts] == [0, total]
    assert len(ledger.state.transfers_ordered) == len(acknowledged) * TRANSFERS_PER_BATCH


def _assert_files_at_acknowledged_size(ledger: EmbeddedLedger, directory: Path) -> None:
    assert (directory / JOURNAL_FILE).stat().st_size == ledger.journal_size
    assert (directory / HEADERS_FILE).stat().st_size == ledger.journal_op_last * HEADER_SIZE


def test_disk_full_pauses_writes_keeps_reads_and_resumes_without_restart(
    small_filesystem: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ballast = small_filesystem / "ballast"
    ballast.write_bytes(bytes(BALLAST_SIZE))
    directory = small_filesystem / "engine"
    ledger = EmbeddedLedger.open(directory)
    try:
        ledger.create_accounts([Account(id=1, ledger=1, code=1), Account(id=2, ledger=1, code=1)])
        acknowledged, refused = _fill(ledger)
        assert ledger.write_blocked is not None and "ENOSPC" in ledger.write_blocked
        assert ledger.write_failure is None
        _assert_files_at_acknowledged_size(ledger, directory)
        _assert_serving(ledger, acknowledged, refused)
        # Still full: refused at once, before the batch touches the state.
        monkeypatch.setattr(embedded, "WRITE_RETRY_INTERVAL_SECONDS", 0.0)
        with pytest.raises(EngineUnavailableError, match="writes paused"):
            ledger.create_transfers(_batch(refused))
        _assert_serving(ledger, acknowledged, refused)
        # Space returns: the refused batch's ids were not burned, it posts now; no restart.
        ballast.unlink()
        results = ledger.create_transfers(_batch(refused))
        assert all(r.status == CreateTransferStatus.CREATED for r in results)
        assert ledger.write_blocked is None
        acknowledged.append(refused)
        _assert_serving(ledger, acknowledged, refused + 1)
    finally:
        ledger.close()
    reopened = EmbeddedLedger.open(directory)
    try:
        _assert_serving(reopened, acknowledged, refused + 1)
        assert check(directory).healthy
    finally:
        reopened.close()


def test_full_mirror_pauses_writes_on_both_copies(
    small_filesystem: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ballast = small_filesystem / "ballast"
    ballast.write_bytes(bytes(BALLAST_SIZE))
    directory, mirror = tmp_path / "engine", small_filesystem / "mirror"
    ledger = EmbeddedLedger.open(directory, mirror=mirror)
    try:
        ledger.create_accounts([Account(id=1, ledger=1, code=1), Account(id=2, ledger=1, code=1)])
        acknowledged, refused = _fill(ledger)
        _assert_files_at_acknowledged_size(ledger, directory)
        _assert_files_at_acknowledged_size(ledger, mirror)
        _assert_serving(ledger, acknowledged, refused)
        monkeypatch.setattr(embedded, "WRITE_RETRY_INTERVAL_SECONDS", 0.0)
        ballast.unlink()
        assert all(r.status == CreateTransferStatus.CREATED for r in ledger.create_transfers(_batch(refused)))
        acknowledged.append(refused)
    finally:
        ledger.close()
    assert (directory / JOURNAL_FILE).read_bytes() == (mirror / JOURNAL_FILE).read_bytes()
    reopened = EmbeddedLedger.open(directory, mirror=mirror)
    try:
        _assert_serving(reopened, acknowledged, refused + 1)
    finally:
        reopened.close()


async def test_async_engine_reports_blocked_writes_and_serves_reads(small_filesystem: Path) -> None:
    ballast = small_filesystem / "ballast"
    ballast.write_bytes(bytes(BALLAST_SIZE))
    engine = await EmbeddedEngine.open(small_filesystem / "engine")
    try:
        await engine.create_accounts([Account(id=1, ledger=1, code=1), Account(id=2, ledger=1, code=1)])
        refused = 0
        for number in range(1, BATCHES_MAX):
            try:
                await engine.create_transfers(_batch(number))
            except EngineUnavailableError:
                refused = number
                break
        assert refused > 1
        assert engine.write_blocked is not None and engine.write_failure is None
        accounts = await engine.lookup_accounts([1, 2])
        assert accounts[0].debits_posted == sum(range(1, refused)) * TRANSFERS_PER_BATCH
    finally:
        await engine.close()


def test_failed_fdatasync_is_dead_for_writes_but_reads_serve_acknowledged_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = EmbeddedLedger.open(tmp_path)
    try:
        ledger.create_accounts([Account(id=1, ledger=1, code=1), Account(id=2, ledger=1, code=1)])
        acknowledged = [1, 2]
        for number in acknowledged:
            ledger.create_transfers(_batch(number))
        fdatasync = os.fdatasync

        def failing(fd: int) -> None:
            raise OSError(errno.EIO, f"fd {fd}: {os.strerror(errno.EIO)}")

        monkeypatch.setattr(os, "fdatasync", failing)
        with pytest.raises(EngineUnavailableError, match="dead for writes"):
            ledger.create_transfers(_batch(3))
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        assert ledger.write_failure is not None and "fdatasync" in ledger.write_failure
        _assert_serving(ledger, acknowledged, 3)
        # Even with a healthy disk again: no more writes until a restart re-reads the disk.
        with pytest.raises(EngineUnavailableError, match="dead for writes"):
            ledger.create_transfers(_batch(4))
        _assert_serving(ledger, acknowledged, 4)
    finally:
        ledger.close()
    reopened = EmbeddedLedger.open(tmp_path)
    try:
        # The unacknowledged batch is in doubt: whole or absent, never partial.
        in_doubt = len(reopened.lookup_transfers([t.id for t in _batch(3)]))
        assert in_doubt in (0, TRANSFERS_PER_BATCH)
        _assert_serving(reopened, acknowledged + ([3] if in_doubt else []), 4)
    finally:
        reopened.close()


def test_eio_from_a_write_is_dead_for_writes_and_rolled_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = EmbeddedLedger.open(tmp_path)
    try:
        ledger.create_accounts([Account(id=1, ledger=1, code=1), Account(id=2, ledger=1, code=1)])
        ledger.create_transfers(_batch(1))
        write = os.write

        def failing(fd: int, data: bytes) -> int:
            raise OSError(errno.EIO, f"fd {fd}, {len(data)} bytes: {os.strerror(errno.EIO)}")

        monkeypatch.setattr(os, "write", failing)
        with pytest.raises(EngineUnavailableError, match=r"dead for writes.*EIO"):
            ledger.create_transfers(_batch(2))
        monkeypatch.setattr(os, "write", write)
        assert ledger.write_failure is not None and ledger.write_blocked is None
        _assert_files_at_acknowledged_size(ledger, tmp_path)
        _assert_serving(ledger, [1], 2)
    finally:
        ledger.close()
    reopened = EmbeddedLedger.open(tmp_path)
    try:
        _assert_serving(reopened, [1], 2)
    finally:
        reopened.close()
