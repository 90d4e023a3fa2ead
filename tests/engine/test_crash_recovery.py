"""Durability: SIGKILL at random points never loses an acknowledged batch or leaves a partial one."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from facade.engine.embedded import EmbeddedLedger
from facade.engine.journal import JOURNAL_FILE, JournalCorruptError, JournalLockedError
from facade.engine.journal_check import check
from facade.engine.types import Account, CreateTransferStatus, Transfer

from ._crash_writer import batch_transfers
from ._kill_writer import acked_until_killed

WRITER = Path(__file__).with_name("_crash_writer.py")
ACCOUNTS = 50
BATCH_SIZE = 300
ROUNDS = 8
ROUNDS_MIRROR = 4
ROUND_SECONDS_MAX = 0.8
ACK_WAIT_SECONDS_MAX = 30.0


def run_writer_until_killed(
    directory: Path, first_batch: int, rng: random.Random, mirror: Path | None = None
) -> set[int]:
    """Starts the writer, lets it run for a random time, SIGKILLs it; returns the acked batches."""
    mirror_args = [str(mirror)] if mirror is not None else []
    command = [
        sys.executable, str(WRITER), str(directory), str(first_batch), str(ACCOUNTS), str(BATCH_SIZE), *mirror_args,
    ]  # fmt: skip
    return set(
        acked_until_killed(command, rng, round_seconds_max=ROUND_SECONDS_MAX, ack_wait_seconds_max=ACK_WAIT_SECONDS_MAX)
    )


def check_recovered(directory: Path, acked_all: set[int], mirror: Path | None = None) -> int:
    """Reopens the ledger and checks every invariant; returns the highest batch present."""
    # Replays the journal and asserts the state invariants; evens out the mirror if it fell behind.
    ledger = EmbeddedLedger.open(directory, mirror=mirror)
    try:
        by_batch: dict[int, list[Transfer]] = defaultdict(list)
        for transfer in ledger.state.transfers_ordered:
            by_batch[transfer.id >> 32].append(transfer)
        for batch in acked_all:
            assert batch in by_batch, f"acknowledged batch {batch} lost"
        for batch, transfers in by_batch.items():
            expected = batch_transfers(batch, ACCOUNTS, BATCH_SIZE)
            assert len(transfers) == len(expected), f"batch {batch} is partial"
            for got, want in zip(transfers, expected, strict=True):
                assert (got.id, got.debit_account_id, got.credit_account_id, got.amount) == (
                    want.id, want.debit_account_id, want.credit_account_id, want.amount,
                )  # fmt: skip
        # Balances equal the sum of the transfers.
        debits: dict[int, int] = defaultdict(int)
        credits: dict[int, int] = defaultdict(int)
        for transfer in ledger.state.transfers_ordered:
            debits[transfer.debit_account_id] += transfer.amount
            credits[transfer.credit_account_id] += transfer.amount
        for account in ledger.lookup_accounts(list(range(1, ACCOUNTS + 1))):
            assert account.debits_posted == debits[account.id]
            assert account.credits_posted == credits[account.id]
            assert account.debits_pending == account.credits_pending == 0
        return max(by_batch, default=0)
    finally:
        ledger.close()


@pytest.mark.slow
def test_sigkill_at_random_points_keeps_every_acknowledged_batch(tmp_path: Path) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    acked_all: set[int] = set()
    next_batch = 1
    for _ in range(ROUNDS):
        acked_all |= run_writer_until_killed(tmp_path, next_batch, rng)
        highest = check_recovered(tmp_path, acked_all)
        assert highest >= max(acked_all)
        next_batch = highest + 1
    assert len(acked_all) >= ROUNDS


@pytest.mark.slow
def test_sigkill_with_a_mirror_keeps_every_acknowledged_batch_in_both_copies(tmp_path: Path) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    directory, mirror = tmp_path / "data", tmp_path / "mirror"
    acked_all: set[int] = set()
    next_batch = 1
    for _ in range(ROUNDS_MIRROR):
        acked_all |= run_writer_until_killed(directory, next_batch, rng, mirror)
        highest = check_recovered(directory, acked_all, mirror)
        assert check(directory, mirror).healthy
        assert (directory / JOURNAL_FILE).read_bytes() == (mirror / JOURNAL_FILE).read_bytes()
        # The mirror alone holds every acknowledged batch too.
        assert check_recovered(mirror, acked_all) == highest
        next_batch = highest + 1
    assert len(acked_all) >= ROUNDS_MIRROR


def test_torn_tail_is_truncated_and_unacknowledged(tmp_path: Path) -> None:
    ledger = EmbeddedLedger.open(tmp_path)
    ledger.create_accounts([Account(id=1, ledger=1, code=1), Account(id=2, ledger=1, code=1)])
    results = ledger.create_transfers(
        [Transfer(id=9, debit_account_id=1, credit_account_id=2, amount=5, ledger=1, code=1)]
    )
    assert results[0].status == CreateTransferStatus.CREATED
    size_durable = ledger.journal_size
    ledger.close()
    # A crash mid-append leaves a partial record after the last durable one.
    with open(tmp_path / JOURNAL_FILE, "ab") as journal:
        journal.write(os.urandom(100))
    ledger = EmbeddedLedger.open(tmp_path)
    try:
        assert ledger.journal_size == size_durable
        assert (tmp_path / JOURNAL_FILE).stat().st_size == size_durable
        assert [t.amount for t in ledger.lookup_transfers([9])] == [5]
    finally:
        ledger.close()


def test_damaged_record_before_the_tail_refuses_to_start(tmp_path: Path) -> None:
    ledger = EmbeddedLedger.open(tmp_path)
    ledger.create_accounts([Account(id=i, ledger=1, code=1) for i in range(1, 3)])
    for batch in range(12):
        transfers = [
            Transfer(id=(batch << 32) + i, debit_account_id=1, credit_account_id=2, amount=1, ledger=1, code=1)
            for i in range(8189)
        ]
        ledger.create_transfers(transfers)
    ledger.close()
    with open(tmp_path / JOURNAL_FILE, "r+b") as journal:
        journal.seek(200)  # Inside the first record's body.
        byte = journal.read(1)
        journal.seek(200)
        journal.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(JournalCorruptError, match=r"op 1 at byte 0: body damaged"):
        EmbeddedLedger.open(tmp_path)


def test_data_directory_is_single_writer(tmp_path: Path) -> None:
    ledger = EmbeddedLedger.open(tmp_path)
    try:
        code = f"import pathlib, facade.engine.embedded as e; e.EmbeddedLedger.open(pathlib.Path({str(tmp_path)!r}))"
        process = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            check=False,
        )
        assert process.returncode != 0
        assert JournalLockedError.__name__ in process.stderr.decode()
    finally:
        ledger.close()
