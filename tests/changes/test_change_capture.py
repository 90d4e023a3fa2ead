"""Change capture over the real embedded engine: order, chain, checkpoint, re-emission window."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from facade.changes.poller import ChangeCapture, Pacing
from facade.changes.replay import replay
from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import Account, AccountFlags, Transfer, TransferFlags
from ledger_events.chain import HASH_GENESIS, canonical_bytes
from ledger_events.entries import metadata_bytes
from ledger_events.gen.ledger.v1 import entries_pb2


class CollectingSink:
    """An EntrySink that keeps what it accepted, in order (the sink under test is the poller)."""

    def __init__(self) -> None:
        self.entries: list[entries_pb2.LedgerEntry] = []

    async def publish(self, entries: Sequence[entries_pb2.LedgerEntry]) -> None:
        self.entries.extend(entries)


class Metadata:
    async def metadata_for(self, transfer_ids: Sequence[int]) -> dict[int, entries_pb2.EntryMetadata]:
        return {
            i: entries_pb2.EntryMetadata(
                transaction_id=f"tx-{i}", source="test", correlation_id=f"c-{i % 3}", labels={"k": "v"}
            )
            for i in transfer_ids
            if i % 2 == 0
        }


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[EmbeddedEngine]:
    engine = await EmbeddedEngine.open(tmp_path / "engine")
    await engine.create_accounts([Account(id=i, ledger=840, code=1, flags=AccountFlags.HISTORY) for i in range(1, 5)])
    yield engine
    await engine.close()


def transfers(first_id: int, count: int) -> list[Transfer]:
    return [
        Transfer(id=i, debit_account_id=i % 4 + 1, credit_account_id=(i + 1) % 4 + 1, amount=i, ledger=840, code=1)
        for i in range(first_id, first_id + count)
    ]


def verify_chain(entries: list[entries_pb2.LedgerEntry]) -> None:
    previous = HASH_GENESIS
    for debit, credit in zip(entries[::2], entries[1::2], strict=True):
        assert debit.chain == credit.chain
        assert debit.chain.previous_hash == previous
        transfer = Transfer(
            id=int(debit.transfer_id),
            debit_account_id=int(debit.account_id),
            credit_account_id=int(credit.account_id),
            amount=int(debit.amount),
            pending_id=int(debit.pending_id),
            user_data_128=int(debit.user_data_128),
            user_data_64=debit.user_data_64,
            user_data_32=debit.user_data_32,
            timeout=debit.timeout_seconds,
            ledger=debit.ledger,
            code=debit.code,
            flags=debit.transfer_flags,
            timestamp=debit.transfer_timestamp,
        )
        metadata = metadata_bytes(debit.metadata if debit.HasField("metadata") else None)
        data = canonical_bytes(debit.chain.sequence, debit.engine_timestamp, debit.change, transfer, metadata)
        assert hashlib.sha256(previous + data).digest() == debit.chain.hash
        previous = debit.chain.hash


async def test_entries_in_commit_order_with_balances_metadata_and_chain(engine: EmbeddedEngine, tmp_path: Path) -> None:
    await engine.create_transfers(transfers(1, 10))
    pending = Transfer(
        id=100, debit_account_id=1, credit_account_id=2, amount=5, ledger=840, code=1,
        flags=TransferFlags.PENDING, timeout=1,
    )  # fmt: skip
    await engine.create_transfers([pending])
    await asyncio.sleep(1.3)  # The engine's pulse expires it.
    sink = CollectingSink()
    capture = ChangeCapture(engine, sink, tmp_path / "checkpoint.json", Metadata(), pacing=Pacing(batch_changes_max=4))
    while await capture.run_once():
        pass
    entries = sink.entries
    assert len(entries) == 2 * 12
    timestamps = [e.engine_timestamp for e in entries[::2]]
    assert timestamps == sorted(timestamps) and len(set(timestamps)) == len(timestamps)
    assert [e.side for e in entries[:2]] == [entries_pb2.DEBIT, entries_pb2.CREDIT]
    assert [e.change for e in entries[-4::2]] == [
        entries_pb2.TWO_PHASE_PENDING,
        entries_pb2.TWO_PHASE_EXPIRED,
    ]
    assert entries[-1].balance_after.credits_pending == "0"
    assert entries[-3].balance_after.credits_pending == "5"
    assert entries[2].metadata.transaction_id == "tx-2" and not entries[0].HasField("metadata")
    assert [e.chain.sequence for e in entries[::2]] == list(range(1, 13))
    verify_chain(entries)
    # Balances after the last single-phase change equal the engine's balances at that point.
    [account] = await engine.lookup_accounts([1])
    last_debit_of_1 = [e for e in entries if e.account_id == "1"][-1]
    assert int(last_debit_of_1.balance_after.debits_posted) == account.debits_posted


async def test_restart_resumes_without_gap_or_duplicate(engine: EmbeddedEngine, tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.json"
    sink = CollectingSink()
    await engine.create_transfers(transfers(1, 6))
    first = ChangeCapture(engine, sink, checkpoint, pacing=Pacing(batch_changes_max=8))
    assert await first.run_once() == 6
    await engine.create_transfers(transfers(7, 5))
    second = ChangeCapture(engine, sink, checkpoint, pacing=Pacing(batch_changes_max=8))  # A restarted process.
    assert await second.run_once() == 5
    ids = [e.event_id for e in sink.entries]
    assert len(ids) == len(set(ids)) == 22
    assert [int(e.transfer_id) for e in sink.entries[::2]] == list(range(1, 12))
    verify_chain(sink.entries)


async def test_crash_between_publish_and_checkpoint_re_emits_identical_events(
    engine: EmbeddedEngine, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "checkpoint.json"
    await engine.create_transfers(transfers(1, 3))
    sink = CollectingSink()
    await ChangeCapture(engine, sink, checkpoint).run_once()
    await engine.create_transfers(transfers(4, 3))
    saved = tmp_path / "saved.json"
    shutil.copy(checkpoint, saved)
    await ChangeCapture(engine, sink, checkpoint).run_once()
    shutil.copy(saved, checkpoint)  # The checkpoint save of that batch never happened.
    await ChangeCapture(engine, sink, checkpoint).run_once()
    entries = sink.entries
    assert len(entries) == 2 * 9
    assert entries[6:12] == entries[12:18], "re-emitted events are byte-identical (ids, chain links)"
    unique = {e.event_id: e for e in entries}
    assert len(unique) == 12, "duplicates are detectable by event id"


async def test_replay_re_emits_identical_entries_from_a_timestamp(engine: EmbeddedEngine, tmp_path: Path) -> None:
    await engine.create_transfers(transfers(1, 8))
    live = CollectingSink()
    capture = ChangeCapture(engine, live, tmp_path / "checkpoint.json", Metadata())
    await capture.run_once()
    replayed = CollectingSink()
    assert await replay(engine, replayed, metadata=Metadata(), progress=False) == 8
    assert replayed.entries == live.entries
    middle = live.entries[8].engine_timestamp
    partial = CollectingSink()
    assert await replay(engine, partial, timestamp_from=middle, metadata=Metadata(), progress=False) == 4
    assert partial.entries == live.entries[8:]


class FlakySink(CollectingSink):
    """A sink that is down for its first `failures` publishes (a broker or ClickHouse outage)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.attempts = 0

    async def publish(self, entries: Sequence[entries_pb2.LedgerEntry]) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise ConnectionError("sink unavailable")
        await super().publish(entries)


async def test_a_failing_sink_is_retried_until_it_accepts_and_nothing_is_skipped(
    engine: EmbeddedEngine, tmp_path: Path
) -> None:
    from prometheus_client import REGISTRY

    def retries() -> float:
        return REGISTRY.get_sample_value("ledger_retries_total", {"component": "change_capture"}) or 0.0

    before = retries()
    await engine.create_transfers(transfers(1, 5))
    sink = FlakySink(failures=2)
    capture = ChangeCapture(engine, sink, tmp_path / "checkpoint.json")
    stop = asyncio.Event()
    running = asyncio.create_task(capture.run(stop))
    for _ in range(200):
        if len(sink.entries) == 10:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await running
    assert sink.attempts == 3 and retries() - before == 2
    assert [int(e.transfer_id) for e in sink.entries[::2]] == [1, 2, 3, 4, 5]
    verify_chain(sink.entries)


class FailOnceSink(CollectingSink):
    """A sink whose next publish fails when told (an outage in the middle of a backlog)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next = False

    async def publish(self, entries: Sequence[entries_pb2.LedgerEntry]) -> None:
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("sink unavailable")
        await super().publish(entries)


async def test_a_backlog_is_read_ahead_while_publishing_with_nothing_skipped_or_doubled(
    engine: EmbeddedEngine, tmp_path: Path
) -> None:
    """Full batches: the next one is read while the current one is published, and taken from there; a
    publish that fails drops the read-ahead (the checkpoint did not move) and the same batch goes again."""
    await engine.create_transfers(transfers(1, 10))
    sink = FailOnceSink()
    capture = ChangeCapture(engine, sink, tmp_path / "checkpoint.json", Metadata(), pacing=Pacing(batch_changes_max=3))
    assert [await capture.run_once() for _ in range(5)] == [3, 3, 3, 1, 0]
    assert capture.batches_read_ahead == 3  # Batches 2, 3 and 4 came from a read-ahead.
    assert [int(e.transfer_id) for e in sink.entries[::2]] == list(range(1, 11))
    verify_chain(sink.entries)
    # A failure after a read-ahead started: the read-ahead is dropped and the failed batch read again.
    await engine.create_transfers(transfers(11, 7))
    assert await capture.run_once() == 3  # 11-13 published; 14-16 read ahead.
    sink.fail_next = True
    with pytest.raises(ConnectionError):
        await capture.run_once()  # 14-16 fail; 17 is read ahead.
    assert [await capture.run_once() for _ in range(3)] == [3, 1, 0]  # 14-16 again (read afresh), then 17.
    assert [int(e.transfer_id) for e in sink.entries[::2]] == list(range(1, 18))
    verify_chain(sink.entries)
    await capture.close()
