"""The embedded engine's append pipeline (facade.engine.journal, "Append pipeline"): a batch's header copy
is written and fdatasynced on the journal's header thread while the engine's thread writes and syncs the
next batch's record. Checked on real files with real fdatasync, faults injected only where no real device
fails on demand:

- a crash at any point of the overlapped pipeline (every syscall boundary of both threads, and every way
  the unsynced bytes may or may not have reached the disk) loses nothing acknowledged, and recovery keeps,
  truncates or refuses exactly per the journal's rules; SIGKILL of a real process appending pipelined
  batches in a loop (with and without a mirror) likewise;
- answers arrive in journal order; reads and the change feed never see a batch before it is acknowledged;
- a full disk or a failed fdatasync on the header thread fails that batch and every one after it, rolls the
  files back (disk full) and leaves reads serving exactly the acknowledged state, as in the serial path.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from facade.engine import embedded, open_engine
from facade.engine.codec import EVENT_SIZE, decode_transfers
from facade.engine.embedded import EmbeddedEngine, EmbeddedLedger
from facade.engine.journal import HEADER_SIZE, HEADERS_FILE, JOURNAL_FILE, JournalCorruptError, Operation
from facade.engine.journal_check import FindingKind, check
from facade.engine.protocol import EngineFault, EngineUnavailableError
from facade.engine.types import Account, ChangeEventsFilter, CreateTransferStatus, Transfer
from facade.settings import EngineSettings
from tests._tmpfs import small_tmpfs

from ._crash_writer import batch_transfers
from ._kill_writer import acked_until_killed

WAIT_SECONDS = 10.0
"""A bound on waiting for another thread in these tests (never reached when they pass)."""
HEADER_THREAD = "ledger-journal-headers"
ENGINE_THREAD = "ledger-engine"
TRANSFERS_PER_BATCH = 5


@pytest.fixture
def overlapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every append overlaps: its header step goes to the header thread even when no call waits (the
    engine does step 2 inline for a lone batch, which would leave the pipeline untested here)."""
    monkeypatch.setattr(EmbeddedEngine, "_work_waiting", lambda _self: True)


def _batch(number: int) -> list[Transfer]:
    return [
        Transfer(id=(number << 20) + i, debit_account_id=1, credit_account_id=2, amount=number, ledger=1, code=1)
        for i in range(TRANSFERS_PER_BATCH)
    ]


def _ids(number: int) -> list[int]:
    return [t.id for t in _batch(number)]


@pytest.mark.usefixtures("overlapped")
@pytest.mark.parametrize("enabled", [False, True], ids=["default-serial", "pipelined"])
async def test_the_setting_decides_whether_header_steps_leave_the_engines_thread(tmp_path: Path, enabled: bool) -> None:
    engine = await open_engine(EngineSettings(data_dir=tmp_path, append_pipeline=enabled))
    try:
        assert isinstance(engine, EmbeddedEngine)
        await engine.create_accounts([Account(id=1, ledger=1, code=1), Account(id=2, ledger=1, code=1)])
        await asyncio.gather(*(engine.create_transfers(_batch(n)) for n in range(1, 5)))
        header_threads = [t for t in threading.enumerate() if t.name == HEADER_THREAD]
        assert bool(header_threads) == enabled
        assert len(await engine.lookup_transfers([i for n in range(1, 5) for i in _ids(n)])) == 4 * TRANSFERS_PER_BATCH
    finally:
        await engine.close()
    assert not [t for t in threading.enumerate() if t.name == HEADER_THREAD]  # close() ends it.


async def _open_with_accounts(directory: Path, mirror: Path | None = None) -> EmbeddedEngine:
    engine = await EmbeddedEngine.open(directory, mirror_dir=mirror, append_pipeline=True)
    await engine.create_accounts([Account(id=1, ledger=1, code=1), Account(id=2, ledger=1, code=1)])
    return engine


def _on(thread_prefix: str) -> bool:
    return threading.current_thread().name.startswith(thread_prefix)


def _file_name(fd: int) -> str:
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}")).name
    except OSError:
        return ""


class HeldSync:
    """Holds the header thread's next fdatasync of `journal.headers` until released, then runs it (or fails
    it with EIO): the window in which a batch's record is durable but its header copy is not."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()
        self.fail = False
        self._armed = True
        real = os.fdatasync

        def held(fd: int) -> None:
            if self._armed and _on(HEADER_THREAD) and _file_name(fd) == HEADERS_FILE:
                self._armed = False
                self.inside.set()
                assert self.release.wait(WAIT_SECONDS)
                if self.fail:
                    raise OSError(errno.EIO, os.strerror(errno.EIO))
            real(fd)

        monkeypatch.setattr(os, "fdatasync", held)


@pytest.mark.usefixtures("overlapped")
async def test_reads_and_the_change_feed_wait_for_the_header_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = await _open_with_accounts(tmp_path)
    try:
        op_before = engine.ledger.journal_op_last
        size_before = (tmp_path / JOURNAL_FILE).stat().st_size
        hold = HeldSync(monkeypatch)
        write = asyncio.create_task(engine.create_transfers(_batch(1)))
        assert await asyncio.to_thread(hold.inside.wait, WAIT_SECONDS)
        # Step 1 is done (the record is in the journal) and step 2 is not: not acknowledged yet.
        assert (tmp_path / JOURNAL_FILE).stat().st_size > size_before
        assert engine.ledger.journal_op_last == op_before
        done: list[str] = []
        write.add_done_callback(lambda _: done.append("write"))
        read = asyncio.create_task(engine.lookup_transfers(_ids(1)))
        read.add_done_callback(lambda _: done.append("read"))
        feed = asyncio.create_task(engine.get_change_events(ChangeEventsFilter()))
        feed.add_done_callback(lambda _: done.append("feed"))
        hold.release.set()
        results, transfers, changes = await asyncio.gather(write, read, feed)
        assert done == ["write", "read", "feed"]  # Both waited for the acknowledgement...
        assert [r.status for r in results] == [CreateTransferStatus.CREATED] * TRANSFERS_PER_BATCH
        assert [t.amount for t in transfers] == [1] * TRANSFERS_PER_BATCH  # ...and then saw the batch.
        assert {c.transfer.id for c in changes} == set(_ids(1))
        assert engine.ledger.journal_op_last == op_before + 1
    finally:
        hold.release.set()
        await engine.close()


@pytest.mark.usefixtures("overlapped")
async def test_a_failed_header_sync_fails_the_batch_and_reads_never_saw_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = await _open_with_accounts(tmp_path)
    try:
        await engine.create_transfers(_batch(1))
        hold = HeldSync(monkeypatch)
        hold.fail = True
        write = asyncio.create_task(engine.create_transfers(_batch(2)))
        assert await asyncio.to_thread(hold.inside.wait, WAIT_SECONDS)
        later = asyncio.create_task(engine.create_transfers(_batch(3)))  # Applied on top of batch 2.
        read = asyncio.create_task(engine.lookup_transfers(_ids(2) + _ids(3)))
        feed = asyncio.create_task(engine.get_change_events(ChangeEventsFilter()))
        hold.release.set()
        for failed in (write, later):
            with pytest.raises(EngineUnavailableError, match="dead for writes") as raised:
                await failed
            assert raised.value.fault == EngineFault.STORAGE_FAILED
        assert await read == []
        assert {c.transfer.id for c in await feed} == set(_ids(1))
        assert engine.write_failure is not None and "fdatasync" in engine.write_failure
        accounts = await engine.lookup_accounts([1, 2])
        assert [a.debits_posted for a in accounts] == [TRANSFERS_PER_BATCH, 0]
        with pytest.raises(EngineUnavailableError, match="dead for writes"):
            await engine.create_transfers(_batch(4))
    finally:
        hold.release.set()
        await engine.close()
    reopened = EmbeddedLedger.open(tmp_path)
    try:
        # Batch 2's record was durable, its header copy in doubt: whole or absent, never partial. Batch 3's
        # record may have followed it.
        for number in (2, 3):
            assert len(reopened.lookup_transfers(_ids(number))) in (0, TRANSFERS_PER_BATCH)
        assert len(reopened.lookup_transfers(_ids(1))) == TRANSFERS_PER_BATCH
    finally:
        reopened.close()


@pytest.mark.usefixtures("overlapped")
async def test_disk_full_on_the_header_thread_rolls_back_the_batch_and_the_ones_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = await _open_with_accounts(tmp_path)
    inside, release, record_synced = threading.Event(), threading.Event(), threading.Event()
    armed = [True]
    write_real, fdatasync_real = os.write, os.fdatasync

    def write(fd: int, data: bytes) -> int:
        if armed[0] and _on(HEADER_THREAD) and _file_name(fd) == HEADERS_FILE:
            armed[0] = False
            inside.set()
            assert release.wait(WAIT_SECONDS)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_real(fd, data)

    def fdatasync(fd: int) -> None:
        fdatasync_real(fd)
        if not armed[0] and _on(ENGINE_THREAD) and _file_name(fd) == JOURNAL_FILE:
            record_synced.set()  # The next batch's record is durable while the header write is held.

    try:
        await engine.create_transfers(_batch(1))
        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        first = asyncio.create_task(engine.create_transfers(_batch(2)))
        assert await asyncio.to_thread(inside.wait, WAIT_SECONDS)
        second = asyncio.create_task(engine.create_transfers(_batch(3)))
        assert await asyncio.to_thread(record_synced.wait, WAIT_SECONDS)
        release.set()
        for failed in (first, second):
            with pytest.raises(EngineUnavailableError, match=r"ENOSPC.*resume") as raised:
                await failed
            assert raised.value.fault == EngineFault.STORAGE_FULL
        assert engine.write_blocked is not None and engine.write_failure is None
        # Rolled back to the acknowledged size, both files; reads serve exactly batch 1.
        assert (tmp_path / JOURNAL_FILE).stat().st_size == engine.ledger.journal_size
        assert (tmp_path / HEADERS_FILE).stat().st_size == engine.ledger.journal_op_last * HEADER_SIZE
        assert await engine.lookup_transfers(_ids(2) + _ids(3)) == []
        assert [a.debits_posted for a in await engine.lookup_accounts([1, 2])] == [TRANSFERS_PER_BATCH, 0]
        # Writes resume by themselves (the fault was one write): no restart.
        monkeypatch.setattr(embedded, "WRITE_RETRY_INTERVAL_SECONDS", 0.0)
        results = await engine.create_transfers(_batch(4))
        assert [r.status for r in results] == [CreateTransferStatus.CREATED] * TRANSFERS_PER_BATCH
        assert engine.write_blocked is None
    finally:
        release.set()
        await engine.close()
    reopened = EmbeddedLedger.open(tmp_path)
    try:
        assert check(tmp_path).healthy
        assert [len(reopened.lookup_transfers(_ids(n))) for n in (1, 2, 3, 4)] == [TRANSFERS_PER_BATCH, 0, 0, 5]
    finally:
        reopened.close()


FILESYSTEM_SIZE = "384k"
BALLAST_SIZE = 128 * 1024  # Deleted to "free space".
FULL_BATCHES_MAX = 2_000  # The file system is full long before this.
FULL_SUBMITTERS = 4


@pytest.mark.usefixtures("overlapped")
async def test_a_really_full_disk_under_pipelined_load_pauses_writes_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with small_tmpfs(tmp_path, FILESYSTEM_SIZE) as filesystem:
        ballast = filesystem / "ballast"
        ballast.write_bytes(bytes(BALLAST_SIZE))
        directory = filesystem / "engine"
        engine = await _open_with_accounts(directory)
        acknowledged: list[int] = []
        refusals: list[EngineUnavailableError] = []
        numbers = iter(range(1, FULL_BATCHES_MAX))

        async def submitter() -> None:
            for number in numbers:
                if refusals:
                    return
                try:
                    results = await engine.create_transfers(_batch(number))
                except EngineUnavailableError as error:
                    refusals.append(error)
                    return
                assert all(r.status == CreateTransferStatus.CREATED for r in results)
                acknowledged.append(number)

        try:
            await asyncio.gather(*(submitter() for _ in range(FULL_SUBMITTERS)))
            assert refusals and acknowledged, "the file system never filled"
            assert all(e.fault == EngineFault.STORAGE_FULL and "ENOSPC" in str(e) for e in refusals)
            assert acknowledged == sorted(acknowledged)
            assert engine.write_blocked is not None and engine.write_failure is None
            # Reads serve exactly the acknowledged batches; the files hold exactly them.
            found = await engine.lookup_transfers([i for n in range(1, max(acknowledged) + 8) for i in _ids(n)])
            assert sorted({t.id >> 20 for t in found}) == acknowledged
            assert (directory / JOURNAL_FILE).stat().st_size == engine.ledger.journal_size
            assert (directory / HEADERS_FILE).stat().st_size == engine.ledger.journal_op_last * HEADER_SIZE
            # Room again: writes resume without a restart.
            ballast.unlink()
            monkeypatch.setattr(embedded, "WRITE_RETRY_INTERVAL_SECONDS", 0.0)
            resumed = max(acknowledged) + 100
            await engine.create_transfers(_batch(resumed))
            assert engine.write_blocked is None
        finally:
            await engine.close()
        reopened = EmbeddedLedger.open(directory)
        try:
            assert check(directory).healthy
            present = sorted({t.id >> 20 for t in reopened.state.transfers_ordered})
            assert present == [*acknowledged, resumed]
        finally:
            reopened.close()


async def _post_in_order(engine: EmbeddedEngine, batches: int, answered: list[int]) -> None:
    """Submits batches 1..`batches` at once (each its own call); `answered` gets each number as it is answered."""
    tasks = []
    for number in range(1, batches + 1):
        task = asyncio.create_task(engine.create_transfers(_batch(number)))
        task.add_done_callback(lambda _, number=number: answered.append(number))  # type: ignore[misc]
        tasks.append(task)
    await asyncio.gather(*tasks)


@pytest.mark.usefixtures("overlapped")
async def test_answers_arrive_in_journal_order_and_the_mirror_matches(tmp_path: Path) -> None:
    directory, mirror = tmp_path / "data", tmp_path / "mirror"
    engine = await _open_with_accounts(directory, mirror)
    batches = 64
    answered: list[int] = []
    try:
        await _post_in_order(engine, batches, answered)
    finally:
        await engine.close()
    result = check(directory, mirror)
    assert result.healthy
    assert (directory / JOURNAL_FILE).read_bytes() == (mirror / JOURNAL_FILE).read_bytes()
    assert (directory / HEADERS_FILE).read_bytes() == (mirror / HEADERS_FILE).read_bytes()
    journal_order = [
        decode_transfers(r.body)[0].id >> 20 for r in result.records if r.operation == Operation.CREATE_TRANSFERS
    ]
    assert sorted(journal_order) == list(range(1, batches + 1))
    assert answered == journal_order


@pytest.mark.usefixtures("overlapped")
async def test_concurrent_reads_see_a_prefix_of_the_acknowledged_batches(tmp_path: Path) -> None:
    """Writes and reads interleaved on the engine's thread, every header step on the header thread: each read
    sees batches 1..k (journal order) and, when its answer arrives, every one of them is already answered."""
    engine = await _open_with_accounts(tmp_path)
    batches = 120
    answered: set[int] = set()
    seen: list[tuple[int, set[int]]] = []  # (k, the batches answered when the read's answer arrived)

    def note_read(task: asyncio.Task[list[Account]]) -> None:
        debits = task.result()[0].debits_posted
        k = 0
        while TRANSFERS_PER_BATCH * k * (k + 1) // 2 < debits:  # Batch n posts n per transfer.
            k += 1
        assert TRANSFERS_PER_BATCH * k * (k + 1) // 2 == debits, f"not a prefix: {debits}"
        seen.append((k, set(answered)))

    try:
        tasks: list[asyncio.Task[object]] = []
        for number in range(1, batches + 1):
            write = asyncio.create_task(engine.create_transfers(_batch(number)))
            write.add_done_callback(lambda _, number=number: answered.add(number))  # type: ignore[misc]
            tasks.append(write)
            if number % 3 == 0:
                read = asyncio.create_task(engine.lookup_accounts([1]))
                read.add_done_callback(note_read)
                tasks.append(read)
            if number % 7 == 0:
                await asyncio.sleep(0)  # Let some of them reach the engine's thread before the rest.
        await asyncio.gather(*tasks)
    finally:
        await engine.close()
    assert len(seen) == batches // 3
    for k, answered_then in seen:
        assert set(range(1, k + 1)) <= answered_then, "a read saw a batch before its answer"
    assert max(k for k, _ in seen) == batches  # The last read came after every write.


# A crash at every point of the overlapped pipeline.


RECORDS_AHEAD = 2
"""Records the engine's thread writes while the first header copy waits for its fdatasync."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The files as the page cache held them at one syscall boundary, how much of each was durable then,
    and the batches acknowledged (answered) before it."""

    journal: bytes
    headers: bytes
    journal_synced: int
    headers_synced: int
    acknowledged: frozenset[int]
    overlapped: bool  # The header thread had a header copy pending while the engine wrote a record.


class Recorder:
    """Wraps os.write and os.fdatasync of the journal files: around every call (serialized, so each snapshot
    is consistent) records a Snapshot. The header thread's first fdatasync waits until the engine's thread
    wrote RECORDS_AHEAD more records, so the overlapped states are always among the snapshots, including
    a record followed by a later append's record while its own header copy is not durable."""

    def __init__(self, directory: Path, monkeypatch: pytest.MonkeyPatch, acknowledged: list[int]) -> None:
        self.snapshots: list[Snapshot] = []
        self._directory = directory
        self._acknowledged = acknowledged
        self._lock = threading.Lock()
        # What was written before (the accounts' record) is durable.
        self._synced = {name: (directory / name).stat().st_size for name in (JOURNAL_FILE, HEADERS_FILE)}
        self._headers_pending = False
        self._records_ahead = 0
        self._records_written_ahead = threading.Event()
        self._first_header_sync = True
        write_real, fdatasync_real = os.write, os.fdatasync

        def write(fd: int, data: bytes) -> int:
            name = _file_name(fd)
            if name not in self._synced:
                return write_real(fd, data)
            with self._lock:
                self._snap()
                written = write_real(fd, data)
                if name == HEADERS_FILE:
                    self._headers_pending = True
                elif self._headers_pending:
                    self._records_ahead += 1
                    if self._records_ahead >= RECORDS_AHEAD:
                        self._records_written_ahead.set()
                self._snap()
            return written

        def fdatasync(fd: int) -> None:
            name = _file_name(fd)
            if name not in self._synced:
                fdatasync_real(fd)
                return
            if name == HEADERS_FILE and _on(HEADER_THREAD) and self._first_header_sync:
                self._first_header_sync = False
                assert self._records_written_ahead.wait(WAIT_SECONDS), "the engine never overlapped"
            with self._lock:
                self._snap()
                fdatasync_real(fd)
                self._synced[name] = os.fstat(fd).st_size
                if name == HEADERS_FILE:
                    self._headers_pending = False
                self._snap()

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "fdatasync", fdatasync)

    def _snap(self) -> None:
        journal = (self._directory / JOURNAL_FILE).read_bytes()
        headers = (self._directory / HEADERS_FILE).read_bytes()
        overlapped = self._headers_pending and len(journal) > self._synced[JOURNAL_FILE]
        self.snapshots.append(
            Snapshot(
                journal,
                headers,
                self._synced[JOURNAL_FILE],
                self._synced[HEADERS_FILE],
                frozenset(self._acknowledged),
                overlapped,
            )
        )


def _crash_images(snapshot: Snapshot) -> Iterator[tuple[bytes, bytes]]:
    """Every way the snapshot may be found after a crash: of each file, what was synced plus none, part or
    all of what was not (a header copy is written only after its record is durable, so any combination)."""
    journal_unsynced = len(snapshot.journal) - snapshot.journal_synced
    headers_unsynced = len(snapshot.headers) - snapshot.headers_synced
    journal_cuts = {snapshot.journal_synced, snapshot.journal_synced + journal_unsynced // 2, len(snapshot.journal)}
    headers_cuts = {snapshot.headers_synced, snapshot.headers_synced + min(headers_unsynced, HEADER_SIZE // 2)}
    headers_cuts.add(len(snapshot.headers))
    for journal_cut in sorted(journal_cuts):
        for headers_cut in sorted(headers_cuts):
            yield snapshot.journal[:journal_cut], snapshot.headers[:headers_cut]


def _batches_in(records_bodies: list[tuple[Operation, bytes]]) -> list[int]:
    batches = []
    for operation, body in records_bodies:
        if operation == Operation.CREATE_TRANSFERS:
            transfers = decode_transfers(body[: len(body) // EVENT_SIZE * EVENT_SIZE])
            assert len({t.id >> 20 for t in transfers}) == 1 and len(transfers) == TRANSFERS_PER_BATCH
            batches.append(transfers[0].id >> 20)
    return batches


@pytest.mark.usefixtures("overlapped")
async def test_a_crash_at_every_point_of_the_overlapped_pipeline_keeps_every_acknowledged_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "live"
    engine = await _open_with_accounts(directory)
    acknowledged: list[int] = []
    recorder = Recorder(directory, monkeypatch, acknowledged)
    batches = 8
    try:
        await _post_in_order(engine, batches, acknowledged)
    finally:
        monkeypatch.undo()
        await engine.close()
    final = check(directory)
    ends = [r.header.offset + r.header.record_size for r in final.records]
    starts = [r.header.offset for r in final.records]
    transfer_records = final.records[1:]  # After the accounts' record.
    batches_journaled = _batches_in([(r.operation, r.body) for r in transfer_records])
    batch_of_op = dict(zip([r.op for r in transfer_records], batches_journaled, strict=True))
    assert any(s.overlapped for s in recorder.snapshots)
    images = {image for snapshot in recorder.snapshots for image in _crash_images(snapshot)}
    acknowledged_by_image: dict[tuple[bytes, bytes], frozenset[int]] = defaultdict(frozenset)
    for snapshot in recorder.snapshots:
        for image in _crash_images(snapshot):
            acknowledged_by_image[image] |= snapshot.acknowledged
    outcomes: dict[str, int] = defaultdict(int)
    for number, (journal, headers) in enumerate(sorted(images)):
        acked = acknowledged_by_image[(journal, headers)]
        place = tmp_path / f"crash-{number}"
        place.mkdir()
        (place / JOURNAL_FILE).write_bytes(journal)
        (place / HEADERS_FILE).write_bytes(headers)
        result = check(place)
        assert result.repairable, result.report()  # Undamaged files are never refused.
        complete = sum(1 for end in ends if end <= len(journal))
        assert len(result.records) == complete  # Every intact record kept, only the torn tail dropped.
        assert all(f.kind in (FindingKind.TORN_TAIL, FindingKind.HEADER_COPY_DAMAGED) for f in result.findings)
        present = _batches_in([(r.operation, r.body) for r in result.records])
        assert acked <= set(present), f"acknowledged batches lost: {sorted(acked - set(present))}"
        ledger = EmbeddedLedger.open(place)  # Start-up replays and checks the state's invariants.
        try:
            assert len(ledger.state.transfers_ordered) == len(present) * TRANSFERS_PER_BATCH
        finally:
            ledger.close()
        # Damage (a flipped byte) to each complete record: refused when it provably was durable (a valid
        # header copy for it or later, or a later append's record), else truncated there; never truncated
        # when anything from it on was acknowledged.
        for index in range(1, complete):
            op = index + 1
            damaged = tmp_path / f"crash-{number}-op-{op}"
            damaged.mkdir()
            body = bytearray(journal)
            body[starts[index] + HEADER_SIZE] ^= 0xFF
            (damaged / JOURNAL_FILE).write_bytes(bytes(body))
            (damaged / HEADERS_FILE).write_bytes(headers)
            slot_proof = len(headers) >= op * HEADER_SIZE
            later_proof = op + 2 <= len(starts) and starts[op + 1] + HEADER_SIZE <= len(journal)
            acked_from_here = any(batch_of_op[o] in acked for o in range(op, complete + 1))
            if slot_proof or later_proof:
                with pytest.raises(JournalCorruptError, match=f"op {op} at byte {starts[index]}"):
                    EmbeddedLedger.open(damaged)
                outcomes["refused by a later append" if not slot_proof else "refused by a header copy"] += 1
            else:
                outcomes["truncated"] += 1
                assert not acked_from_here, "an acknowledged record without durable proof"
                ledger = EmbeddedLedger.open(damaged)
                try:
                    assert ledger.journal_op_last == index
                finally:
                    ledger.close()
    # Every rule was exercised: a record proven durable only by a later append's record (the overlap's
    # own state: its header copy not yet written), by a header copy, and a tail with no proof.
    assert set(outcomes) == {"refused by a later append", "refused by a header copy", "truncated"}, outcomes


# SIGKILL of a real process appending pipelined batches.

PIPELINE_WRITER = Path(__file__).with_name("_pipeline_writer.py")
ACCOUNTS = 50
BATCH_SIZE = 30
SUBMITTERS = 4
ROUNDS = 6
ROUND_SECONDS_MAX = 0.5
ACK_WAIT_SECONDS_MAX = 30.0


def _run_until_killed(directory: Path, first_batch: int, rng: random.Random, mirror: Path | None) -> list[int]:
    """Starts the writer, lets it run for a random time, SIGKILLs it; returns the acked batches in the
    order their answers arrived."""
    mirror_args = [str(mirror)] if mirror is not None else []
    command = [
        sys.executable, str(PIPELINE_WRITER), str(directory), str(first_batch), str(ACCOUNTS), str(BATCH_SIZE),
        str(SUBMITTERS), *mirror_args,
    ]  # fmt: skip
    return acked_until_killed(
        command, rng, round_seconds_max=ROUND_SECONDS_MAX, ack_wait_seconds_max=ACK_WAIT_SECONDS_MAX
    )


def _check_recovered(directory: Path, acked_all: set[int], mirror: Path | None) -> int:
    """Reopens (replaying and checking the state's invariants); every acked batch whole, none partial;
    returns the highest batch present."""
    ledger = EmbeddedLedger.open(directory, mirror=mirror)
    try:
        by_batch: dict[int, list[Transfer]] = defaultdict(list)
        for transfer in ledger.state.transfers_ordered:
            by_batch[transfer.id >> 32].append(transfer)
        assert acked_all <= set(by_batch), f"acknowledged batches lost: {sorted(acked_all - set(by_batch))}"
        for batch, transfers in by_batch.items():
            expected = batch_transfers(batch, ACCOUNTS, BATCH_SIZE)
            assert [(t.id, t.amount) for t in transfers] == [(t.id, t.amount) for t in expected], batch
        # Journal order is batch order: the batches present are a gap-free run.
        order = list(dict.fromkeys(t.id >> 32 for t in ledger.state.transfers_ordered))
        assert order == list(range(1, len(order) + 1))
        return max(by_batch, default=0)
    finally:
        ledger.close()


@pytest.mark.slow
@pytest.mark.parametrize("with_mirror", [False, True], ids=["alone", "mirror"])
def test_sigkill_while_pipelined_keeps_every_acknowledged_batch(tmp_path: Path, with_mirror: bool) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    directory = tmp_path / "data"
    mirror = tmp_path / "mirror" if with_mirror else None
    acked_all: set[int] = set()
    next_batch = 1
    for _ in range(ROUNDS):
        acked = _run_until_killed(directory, next_batch, rng, mirror)
        assert acked == sorted(acked), "answers out of journal order"
        acked_all |= set(acked)
        highest = _check_recovered(directory, acked_all, mirror)
        if mirror is not None:
            assert check(directory, mirror).healthy
            assert (directory / JOURNAL_FILE).read_bytes() == (mirror / JOURNAL_FILE).read_bytes()
            assert _check_recovered(mirror, acked_all, None) == highest
        assert highest >= max(acked_all)
        next_batch = highest + 1
    assert len(acked_all) >= ROUNDS
