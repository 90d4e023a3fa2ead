"""The embedded engine: TigerBeetle's semantics in-process, durable on one machine.

`EmbeddedLedger` is the synchronous core: the state machine plus its journal. A write operation
    1. encodes the batch to TigerBeetle's binary layout (this also validates every field width),
    2. decodes it back and applies exactly those bytes' events to the state machine (so what runs is
       exactly what is journaled, and replay is exact),
    3. appends one journal record (plus a pulse record if pending transfers expired) and fdatasyncs,
    4. only then returns the results.
A batch that changed nothing (every event failed without burning an id, or every event `exists`)
is not journaled: an idempotent retry costs no fsync.

If the journal append fails, the in-memory state is ahead of the disk, so it is rebuilt from the
acknowledged journal (reads never see an unacknowledged batch) and:
- a failed *write* (disk full, quota, EIO on write) was rolled back completely by the journal: writes
  answer EngineUnavailableError with the reason (`write_blocked`) and resume by themselves once the
  file system has room again (probed with statvfs, at most every WRITE_RETRY_INTERVAL_SECONDS);
- a failed *fdatasync* makes the engine dead for writes until a restart (`write_failure`): after it the
  page cache cannot be trusted (TigerBeetle crashes in that situation for the same reason). Reads keep
  serving the acknowledged state; liveness checks should read `write_failure`.

`EmbeddedEngine` is the async Engine: every operation, read or write, runs on one dedicated thread,
in arrival order. That single writer gives linearizability for free: a read issued after an
acknowledged write runs after it, and no read can observe a batch before it is durable.

One exception, for speed, keeps that order: a small create_transfers batch (at most
INLINE_TRANSFERS_MAX transfers) is applied and journaled on the caller's (the event loop's) thread
when the engine's thread is idle (every call handed to it has started and none runs: the ledger lock
is free) and recent appends were fast (INLINE_APPEND_SECONDS_MAX). Why: a batch of one transaction
cost the service ~490-660 µs of CPU, ~90 µs of it the two thread hand-offs (a futex wake of the engine's
thread, the self-pipe wake of the loop, and the event-loop turns between them; on this virtualised host
a cross-thread wake-up costs tens of µs). The ledger lock makes the two threads mutually exclusive, and
an inline batch runs only after every call handed off before it has finished (linearizable as before).
The loop is blocked for the append (two fdatasyncs, ~0.1-0.3 ms here), so a slow disk (or a big batch)
still goes to the engine's thread and the loop serves other calls meanwhile.

With `append_pipeline` (a setting, off by default: see EngineSettings.append_pipeline for why) its
create_transfers is pipelined (`EmbeddedLedger.submit_transfers`, facade.engine.journal's "Append
pipeline"): once a batch's record is durable the engine's thread takes the next call while the journal's
header thread makes the batch's header copy durable and then answers it, batches in journal order. The
state may then hold batches not yet acknowledged, so every read (and the change feed, and every other
write) first waits for the pipeline to empty (`settle`), a batch's transaction index entries are added
only when it is acknowledged, and a batch that journals nothing (its results may rest on an earlier,
unacknowledged batch) is answered only after the batches before it. A failed header step fails that
batch and every batch after it, with the state rebuilt from the acknowledged journal before any of them
is answered (and, for a full disk, the files rolled back). With no other call waiting, a batch does its
header step on the engine's thread (no hand-off to pay when there is nothing to overlap).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import queue
import selectors
import sys
import threading
import time
import zlib
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

from facade.engine.codec import EVENT_SIZE, decode_accounts, decode_transfers, encode_accounts, encode_transfers
from facade.engine.intents import (
    TransactionIndex,
    TransactionIntent,
    encode_section,
    outcomes,
    read_entries,
    read_entry,
)
from facade.engine.journal import (
    HEADER_SIZE,
    JOURNAL_FILE,
    Header,
    Journal,
    JournalWriteError,
    Operation,
    Record,
    encode_record,
)
from facade.engine.journal_check import recover
from facade.engine.protocol import EngineFault, EngineUnavailableError
from facade.engine.state_machine import StateMachine
from facade.engine.types import (
    BATCH_EVENTS_MAX,
    Account,
    AccountBalance,
    AccountFilter,
    ChangeEvent,
    ChangeEventsFilter,
    CreateAccountResult,
    CreateTransferResult,
    QueryFilter,
    TooMuchDataError,
    Transfer,
    validate_ids,
)
from facade.observability import metrics

PULSE_INTERVAL_SECONDS = 0.1
"""How often the engine checks for expired pending transfers when no writes arrive."""
WRITE_RETRY_INTERVAL_SECONDS = 1.0
"""While writes are blocked (disk full), how often a write may re-try the disk instead of being refused
at once: each failed attempt costs a rebuild of the state from the journal."""

GC_GENERATION0_THRESHOLD = 10_000
"""Allocations between CPython's youngest-generation collections while an embedded engine is open (the
default is 700). The engine allocates dozens of tracked objects per transfer (the transfer, its change,
balance snapshots, index entries) that live for good, so at the default a collection runs every few
transactions and each one re-walks survivors: ~10 µs per transaction of the batch path's ~30
(scripts/bench_metadata.py --batch-path). The older generations keep their defaults, so cyclic garbage
is still collected; only the young generation is collected in larger, rarer steps."""

APPEND_SWITCH_INTERVAL_SECONDS = 0.0001
"""The GIL switch interval while a journal append runs (the process's own, facade.runtime, is 0.5 ms).

An append is four syscalls (the record's write and fdatasync, its header copy's write and fdatasync), each
releasing the GIL; after each the engine's thread must take it back from whoever holds it, and a busy
event loop holds it until the interval forces a switch. Traced under bench_api's single-transaction rows
(strace -T on the engine's thread), every one of those waits ran to the full 0.5 ms: ~2 ms of an append's
~3.5 ms, with the engine's thread the busiest part of the write path (4 transactions a batch). A shorter
interval for the whole process cost the batch rows ~15 % more CPU per transaction (mapping threads and the
loop switched five times as often), so it is shortened only while an append is in flight."""

INLINE_TRANSFERS_MAX = 32
"""The largest create_transfers batch applied on the caller's thread when the engine's thread is idle
(module docstring): ~25-50 µs of engine work a transfer, so at most ~1-2 ms of the event loop's time."""
INLINE_APPEND_SECONDS_MAX = 0.002
"""Batches are applied inline only while recent appends (APPEND_SECONDS_EWMA_WEIGHT) took at most this:
on a disk with slow flushes the event loop would otherwise sit in fdatasync instead of serving calls."""
APPEND_SECONDS_EWMA_WEIGHT = 0.2
"""Weight of the newest append in `EmbeddedLedger.append_seconds_recent`: one slow flush moves it by a
fifth, so a disk turning slow sends batches back to the engine's thread within an append or two."""

INLINE_BACKOFF_BATCHES_MAX = 1024
"""After work came for the event loop during an inline append, batches go to the engine's thread for a
while before one is tried inline again (_LoopIdleness): 1, 2, 4... up to this many while it keeps coming, so
a busy loop pays a blocked append (1-3 ms under bench_api's load) about once in 1,024 batches (at 64 it was
~1.7 % of the batches, ~1 % of the loop's time), and a lone caller's loop (an occasional timer's work coming
meanwhile) hands off a batch or two."""

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _results_checksum(statuses: Sequence[int]) -> int:
    return zlib.crc32(array("I", statuses).tobytes())


class _FastSwitching:
    """Shortens the GIL switch interval to APPEND_SWITCH_INTERVAL_SECONDS while any engine appends (a count:
    several engines may share a process), then puts back what the process had chosen. Never lengthens it,
    and leaves alone a value someone else set meanwhile."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._restore_seconds: float | None = None
        """The process's interval, while this shortened it; None when it was already short enough."""
        self._shortened_seconds = 0.0
        """The interval as the interpreter reports it after shortening (it keeps whole microseconds)."""

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                chosen = sys.getswitchinterval()
                self._restore_seconds = chosen if chosen > APPEND_SWITCH_INTERVAL_SECONDS else None
                if self._restore_seconds is not None:
                    sys.setswitchinterval(APPEND_SWITCH_INTERVAL_SECONDS)
                    self._shortened_seconds = sys.getswitchinterval()
            self._depth += 1
            assert self._depth >= 1

    def __exit__(self, *_exc: object) -> None:
        with self._lock:
            assert self._depth >= 1
            self._depth -= 1
            restore = self._restore_seconds
            # Only our own value is put back (a value set meanwhile by someone else stays).
            if self._depth == 0 and restore is not None and sys.getswitchinterval() == self._shortened_seconds:
                sys.setswitchinterval(restore)
            if self._depth == 0:
                self._restore_seconds = None


_fast_switching = _FastSwitching()

_IndexEntries = tuple[Sequence[TransactionIntent], list[int], list[int]]
"""What a batch adds to the index once durable: its intents, each one's byte offset in the journal, and
the record's transfer ids (TransactionIndex.add_record)."""


class JournalReplayError(RuntimeError):
    """Replaying the journal produced different results than were acknowledged: the state machine's
    semantics changed under existing data. Refuse to serve rather than post different money."""


class EmbeddedLedger:
    """The synchronous core. One thread at a time (the engine's writer thread)."""

    def __init__(
        self, journal: Journal, state: StateMachine, clock: Callable[[], int], index: TransactionIndex | None = None
    ) -> None:
        self._journal = journal
        self.state = state
        self.index = index if index is not None else TransactionIndex()
        """Transaction metadata journaled with the batches (facade.engine.intents), rebuilt at open."""
        self._read_fd = os.open(journal.directory / JOURNAL_FILE, os.O_RDONLY)
        self._clock = clock
        self.write_blocked: str | None = None
        """Why writes are refused for now (e.g. disk full); cleared by the first append that succeeds."""
        self._write_attempt_monotonic = 0.0
        # Set if the state could not be rebuilt after a failed append: it may hold an unacknowledged
        # batch, so nothing more is served from it, reads included.
        self._state_failure: str | None = None
        self.append_seconds_recent = 0.0
        """Moving average of a serial append's seconds (write, fdatasync, header copy, fdatasync): whether
        the disk is fast enough for inline batches (EmbeddedEngine)."""
        journal.headers_switching = lambda: _fast_switching

    @classmethod
    def open(
        cls, directory: Path, clock: Callable[[], int] = time.time_ns, *, mirror: Path | None = None
    ) -> EmbeddedLedger:
        journal, records, _ = recover(directory, mirror)
        try:
            state, index = _rebuild(records)
        except BaseException:
            journal.close()
            raise
        return cls(journal, state, clock, index)

    @property
    def journal_size(self) -> int:
        return self._journal.size

    @property
    def journal_op_last(self) -> int:
        """The op of the last acknowledged journal record."""
        return self._journal.op_last

    @property
    def write_failure(self) -> str | None:
        """Why the engine is dead for writes until a restart (a failed fdatasync), or None."""
        return self._journal.failure or self._state_failure

    def on_headers_failure(self, wake: Callable[[], None]) -> None:
        """`wake` (called on the journal's header thread) must get `settle` run on the engine's thread."""
        self._journal.on_headers_failure = wake

    def settle(self) -> None:
        """Waits until every pipelined append is acknowledged, so the state holds only acknowledged
        batches. After a failed header-copy step (journal.settle rolled the files back, or marked the
        journal failed), rebuilds the state from the acknowledged journal and answers every batch that
        failed with it, in journal order."""
        outcome = self._journal.settle()
        if outcome is None:
            return
        error, failed = outcome
        unavailable = self._recover(error)
        assert failed
        assert self._journal.op_written == self._journal.op_last or error.fatal
        for acknowledged in failed:
            acknowledged(unavailable)

    def _check_readable(self) -> None:
        self.settle()  # Reads see acknowledged state only: they wait for pipelined appends.
        if self._state_failure is not None:
            raise EngineUnavailableError(self._state_failure)

    def _check_writable(self, size: int, *, pipelined: bool = False) -> None:
        """Refuses a write at once, before touching the state, when it cannot be journaled. A pipelined
        write waits for nothing, unless an earlier append failed (then the state is rebuilt first)."""
        if not pipelined or self._journal.headers_failed:
            self.settle()
        if self._state_failure is not None:
            raise EngineUnavailableError(self._state_failure)
        failure = self._journal.failure
        if failure is not None:
            raise EngineUnavailableError(
                f"engine is dead for writes until restarted: {failure}", EngineFault.STORAGE_FAILED
            )
        if self.write_blocked is None:
            return
        retry_due = time.monotonic() - self._write_attempt_monotonic >= WRITE_RETRY_INTERVAL_SECONDS
        if not retry_due or not self._journal.space_available(size):
            raise EngineUnavailableError(
                f"writes paused until the disk has room (last failure: {self.write_blocked})", EngineFault.STORAGE_FULL
            )

    def _record(  # noqa: PLR0913  Private; keyword-only: encode_record's fields less those the journal decides.
        self, operation: Operation, *, timestamp: int, count: int, results_checksum: int, body: bytes,
        previous: Header | None,
    ) -> tuple[Header, bytes]:  # fmt: skip
        journal = self._journal
        if previous is None:
            op, offset, parent = journal.op_written + 1, journal.size_written, journal.checksum_written
        else:
            op, offset, parent = previous.op + 1, previous.offset + previous.record_size, previous.checksum
        return encode_record(
            op=op, parent=parent, offset=offset, operation=operation, timestamp=timestamp, count=count,
            results_checksum=results_checksum, body=body,
        )  # fmt: skip

    def _pulse_record(self, realtime_ns: int) -> tuple[Header, bytes] | None:
        next_expiry = self.state.next_expiry()
        if next_expiry is None or next_expiry > realtime_ns:
            return None
        expired = self.state.pulse(realtime_ns)
        assert expired > 0
        return self._record(
            Operation.PULSE, timestamp=realtime_ns, count=expired, results_checksum=0, body=b"", previous=None
        )

    def _recover(self, error: JournalWriteError) -> EngineUnavailableError:
        """After a failed append (rolled back, or the journal failed): the state already holds the batch
        (and, pipelined, the batches after it), so it goes back to exactly what was acknowledged. Returns
        the error for the batches' callers."""
        unavailable: EngineUnavailableError
        try:
            self.state, self.index = _rebuild(self._journal.read_acknowledged())
        except BaseException as rebuild_error:
            self._state_failure = (
                f"engine failed: the append failed ({error}) and re-reading the acknowledged journal "
                f"failed too ({rebuild_error!r}); restart to recover from the journal"
            )
            unavailable = EngineUnavailableError(self._state_failure)
            unavailable.__cause__ = rebuild_error
            return unavailable
        if error.fatal:
            unavailable = EngineUnavailableError(
                f"engine is dead for writes until restarted: {error}", EngineFault.STORAGE_FAILED
            )
        else:
            self.write_blocked = str(error)
            unavailable = EngineUnavailableError(
                f"writes paused: {error}; they resume when the disk has room", EngineFault.STORAGE_FULL
            )
        unavailable.__cause__ = error
        assert self.state.prepare_timestamp >= 0
        return unavailable

    def _commit(self, records: list[tuple[Header, bytes]]) -> None:
        """Appends serially (the pipeline settled by _check_writable): returns once acknowledged."""
        started = time.perf_counter()
        self._write_attempt_monotonic = time.monotonic()
        try:
            with _fast_switching:
                self._journal.append(records)
        except JournalWriteError as error:
            raise self._recover(error) from error
        append_seconds = time.perf_counter() - started
        metrics.journal_fsync_seconds.observe(append_seconds)
        self.append_seconds_recent += APPEND_SECONDS_EWMA_WEIGHT * (append_seconds - self.append_seconds_recent)
        assert self.append_seconds_recent >= 0.0
        self.write_blocked = None

    def pulse(self) -> int:
        """Expires due pending transfers durably; returns how many expired."""
        self._check_writable(HEADER_SIZE)
        before = len(self.state.changes)
        record = self._pulse_record(self._clock())
        if record is not None:
            self._commit([record])
        return len(self.state.changes) - before

    def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        if len(accounts) > BATCH_EVENTS_MAX:
            raise TooMuchDataError(f"{len(accounts)} accounts exceed batch_events_max={BATCH_EVENTS_MAX}")
        if not accounts:
            return []
        body = encode_accounts(accounts)
        self._check_writable(HEADER_SIZE + len(body))
        events = decode_accounts(body)
        state = self.state
        timestamp = state.prepare(len(events), self._clock())
        state.dirty = False
        results = state.create_accounts(events, timestamp)
        if state.dirty:
            checksum = _results_checksum([r.status for r in results])
            record = self._record(
                Operation.CREATE_ACCOUNTS, timestamp=timestamp, count=len(events), results_checksum=checksum,
                body=body, previous=None,
            )  # fmt: skip
            self._commit([record])
        return results

    def create_transfers(
        self, transfers: Sequence[Transfer], intents: Sequence[TransactionIntent] = ()
    ) -> list[CreateTransferResult]:
        """Applies and journals the batch. `intents`: metadata of the batch's transactions to record in the
        same record (CREATE_TRANSACTIONS), each with the outcome its legs' results give; such a record
        is written even when the state did not change (a refused transaction's failure must be durable)."""
        results, records, entries = self._apply_transfers(transfers, intents, pipelined=False)
        if records:
            self._commit(records)
        self._index_add(entries)
        return results

    def submit_transfers(
        self,
        transfers: Sequence[Transfer],
        intents: Sequence[TransactionIntent],
        *,
        deliver: Callable[[list[CreateTransferResult] | BaseException], None],
        overlap: Callable[[], bool],
    ) -> None:
        """`create_transfers`, pipelined (EmbeddedEngine): returns once the batch's record is durable (step 1),
        so the next batch can be applied and written while this one's header copy is synced (step 2, on
        the journal's header thread). `deliver` gets the results once the batch is acknowledged, batches in
        journal order, or the error (the batch and every one after it failed; state rebuilt first). A batch
        that journals nothing is delivered only after the batches before it: its results may rest on
        them. `overlap()`: whether work waits for the engine's thread (else step 2 runs on this thread: a
        lone batch costs no hand-off). Raises (nothing applied, or the state already rebuilt) when the batch
        is refused outright or its inline step 2 failed."""
        results, records, entries = self._apply_transfers(transfers, intents, pipelined=True)
        started = time.perf_counter()

        def acknowledged(error: BaseException | None) -> None:
            if error is not None:
                deliver(error)
                return
            try:
                self._index_add(entries)  # Only now: the index is read off this thread (GetTransaction).
            except BaseException as index_error:  # A bug: answer it, never leave the caller (or the thread) hanging.
                self._state_failure = f"engine failed: indexing an acknowledged batch failed ({index_error!r})"
                deliver(index_error)
                return
            if records:
                metrics.journal_fsync_seconds.observe(time.perf_counter() - started)
            deliver(results)

        if not records:
            self._journal.after_pending(acknowledged)
            return
        self._write_attempt_monotonic = time.monotonic()
        try:
            with _fast_switching:
                self._journal.append_pipelined(records, acknowledged, overlap=overlap)
        except JournalWriteError as error:
            self.settle()  # Answers the batches whose header step failed meanwhile, if any.
            raise self._recover(error) from error
        self.write_blocked = None

    def _apply_transfers(
        self, transfers: Sequence[Transfer], intents: Sequence[TransactionIntent], *, pipelined: bool
    ) -> tuple[list[CreateTransferResult], list[tuple[Header, bytes]], _IndexEntries]:
        """Applies the batch to the state; returns its results, the records to journal and the index
        entries to add once they are durable."""
        if len(transfers) > BATCH_EVENTS_MAX:
            raise TooMuchDataError(f"{len(transfers)} transfers exceed batch_events_max={BATCH_EVENTS_MAX}")
        if not transfers:
            return [], [], ((), [], [])
        body = encode_transfers(transfers)
        self._check_writable(2 * HEADER_SIZE + len(body), pipelined=pipelined)
        events = decode_transfers(body)
        state = self.state
        realtime_ns = self._clock()
        # Expire first, in its own record, so limits see released reservations as TigerBeetle's
        # pulse would have released them.
        records: list[tuple[Header, bytes]] = []
        pulse = self._pulse_record(realtime_ns)
        if pulse is not None:
            records.append(pulse)
        timestamp = state.prepare(len(events), realtime_ns)
        state.dirty = False
        results = state.create_transfers(events, timestamp)
        section, offsets = b"", list[int]()
        if intents:
            outcomes(intents, results)
            section, offsets = encode_section(intents, with_transfer_ids=False)
        if state.dirty or intents:
            checksum = _results_checksum([r.status for r in results])
            records.append(
                self._record(
                    Operation.CREATE_TRANSACTIONS if intents else Operation.CREATE_TRANSFERS,
                    timestamp=timestamp,
                    count=len(events),
                    results_checksum=checksum,
                    body=body + section if intents else body,
                    previous=pulse[0] if pulse is not None else None,
                )
            )
        entries: _IndexEntries = ((), [], [])
        if intents:
            header = records[-1][0]
            location = header.offset + HEADER_SIZE + len(body)
            # The record's transfer ids once, each transaction's legs a slice of them (TransactionIndex.add_record).
            entries = (intents, [location + offset for offset in offsets], [t.id for t in events])
        assert len(results) == len(transfers) and len(records) <= 2
        return results, records, entries

    def _index_add(self, entries: _IndexEntries) -> None:
        intents, locations, transfer_ids = entries
        if intents:
            self.index.add_record(intents, locations, transfer_ids)
        assert len(intents) == len(locations)

    def record_metadata(self, intents: Sequence[TransactionIntent]) -> None:
        """Journals metadata alone (a METADATA record): intents before their transfers, or failures
        recorded after the fact. Durable when this returns; the index follows only then."""
        if not intents:
            return
        section, offsets = encode_section(intents, with_transfer_ids=True)
        self._check_writable(HEADER_SIZE + len(section))
        record = self._record(
            Operation.METADATA, timestamp=0, count=len(intents), results_checksum=0, body=section, previous=None
        )
        self._commit([record])
        location = record[0].offset + HEADER_SIZE
        for intent, offset in zip(intents, offsets, strict=True):
            self.index.add(intent, location + offset, intent.transfer_ids)
        assert all(intent.transaction_id in self.index.transactions for intent in intents)

    def read_intent(self, location: int) -> TransactionIntent:
        """The journal entry an index entry points at (client, key, body)."""
        return read_entry(self._read_fd, location)

    def read_intents(self, locations: Sequence[int]) -> dict[int, TransactionIntent]:
        """Many entries by location (neighbours read together)."""
        return read_entries(self._read_fd, locations)

    def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        self._check_readable()
        validate_ids(list(ids))
        return self.state.lookup_accounts(ids)

    def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        self._check_readable()
        validate_ids(list(ids))
        return self.state.lookup_transfers(ids)

    def get_account_transfers(self, filter: AccountFilter) -> list[Transfer]:
        self._check_readable()
        return self.state.get_account_transfers(filter)

    def get_account_balances(self, filter: AccountFilter) -> list[AccountBalance]:
        self._check_readable()
        return self.state.get_account_balances(filter)

    def query_accounts(self, filter: QueryFilter) -> list[Account]:
        self._check_readable()
        return self.state.query_accounts(filter)

    def query_transfers(self, filter: QueryFilter) -> list[Transfer]:
        self._check_readable()
        return self.state.query_transfers(filter)

    def get_change_events(self, filter: ChangeEventsFilter) -> list[ChangeEvent]:
        self._check_readable()
        return self.state.get_change_events(filter)

    def next_expiry(self) -> int | None:
        return self.state.next_expiry()

    def close(self) -> None:
        self.settle()
        os.close(self._read_fd)
        self._journal.close()


def _answer(answer: asyncio.Future[_R], outcome: _R | BaseException) -> None:
    if answer.done():  # The caller gave up (cancelled) after the batch started: it completes unanswered.
        return
    if isinstance(outcome, BaseException):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)


def _rebuild(records: list[Record]) -> tuple[StateMachine, TransactionIndex]:
    """A state machine and transaction index holding exactly `records`, replayed in order and checked."""
    state = StateMachine()
    index = TransactionIndex()
    for record in records:
        _replay(state, index, record)
    state.check_invariants()
    assert not records or state.prepare_timestamp > 0 or all(r.operation == Operation.METADATA for r in records)
    return state, index


def _replay(state: StateMachine, index: TransactionIndex, record: Record) -> None:
    """Re-applies one journaled operation; the results must match what was acknowledged."""
    location = record.header.offset + HEADER_SIZE
    if record.operation == Operation.METADATA:
        index.apply(record.body, location=location, transfer_ids=None)
        return
    if record.operation == Operation.CREATE_TRANSACTIONS:
        size = record.count * EVENT_SIZE
        events = decode_transfers(record.body[:size])
        transfer_statuses = [r.status for r in state.create_transfers(events, record.timestamp)]
        if _results_checksum(transfer_statuses) != record.results_checksum:
            raise JournalReplayError(f"op {record.op}: replayed results differ from the acknowledged ones")
        index.apply(memoryview(record.body)[size:], location=location + size, transfer_ids=[e.id for e in events])
        return
    if record.operation == Operation.PULSE:
        expired = state.pulse(record.timestamp)
        if expired != record.count:
            raise JournalReplayError(f"op {record.op}: pulse expired {expired}, journal says {record.count}")
        return
    statuses: list[int]
    if record.operation == Operation.CREATE_ACCOUNTS:
        statuses = [r.status for r in state.create_accounts(decode_accounts(record.body), record.timestamp)]
    else:
        assert record.operation == Operation.CREATE_TRANSFERS
        statuses = [r.status for r in state.create_transfers(decode_transfers(record.body), record.timestamp)]
    if _results_checksum(statuses) != record.results_checksum:
        raise JournalReplayError(f"op {record.op}: replayed results differ from the acknowledged ones")


class _EngineThread:
    """The engine's one thread: runs the calls handed to it, one at a time, in the order they came.

    Not a ThreadPoolExecutor + run_in_executor: their hand-off costs a concurrent Future, its chained
    asyncio Future and a callback turn of the event loop per call (~10 µs of CPU each way, measured with a
    bare round trip: ~32 µs against ~22 µs), paid by every single-transaction batch. A call here answers
    its asyncio Future itself (`_answer`, through call_soon_threadsafe). The queue is bounded by its
    callers: the group committer keeps BATCHES_IN_FLIGHT_MAX batches in flight, reads one per request."""

    def __init__(self, name: str) -> None:
        assert name
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._stopping = False
        # A daemon: a process that exits without closing its engine must not hang on it. Nothing is lost
        # that was acknowledged (an answer follows the fdatasyncs); an unanswered batch is as after a crash.
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, call: Callable[[], None]) -> None:
        """Queues `call` (it must not raise: it answers its caller itself). RuntimeError once stopped."""
        if self._stopping:
            raise RuntimeError("the engine's thread is stopped")
        self._calls.put(call)

    def _serve(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            call()

    def stop(self, *, wait: bool) -> None:
        """Runs what is queued, then ends the thread (joined if `wait`)."""
        self._stopping = True
        self._calls.put(None)
        if wait:
            self._thread.join()
        assert not wait or not self._thread.is_alive()


async def _on_thread(thread: _EngineThread, call: Callable[[], _R]) -> _R:
    """Runs `call` on `thread` and returns its result (or raises its error). A call whose caller gives up
    (cancelled) before the thread takes it never runs; one already running completes unanswered."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[_R] = loop.create_future()

    def run() -> None:
        if answer.cancelled():  # A read of a flag the loop sets: it never runs once its caller is gone.
            return
        outcome: _R | BaseException
        try:
            outcome = call()
        except BaseException as error:  # The caller's, as run_in_executor had it: the thread lives on.
            outcome = error
        with contextlib.suppress(RuntimeError):  # The loop is gone: nobody waits for this answer.
            loop.call_soon_threadsafe(_answer, answer, outcome)

    thread.submit(run)
    return await answer


class _LoopIdleness:
    """Whether the event loop would sit idle while a batch is appended, so that appending it inline (on the
    loop's thread, blocking it for the append) costs the loop nothing and saves the two hand-offs.

    Judged by what happened during the last inline append: a callback scheduled or a file descriptor
    (a socket: a client's call, gRPC's completion queue) readable once it returned means the loop had work
    it could not do meanwhile; then the next batches go to the engine's thread (a back-off doubled at each
    such append up to INLINE_BACKOFF_BATCHES_MAX, halved at each append without) before one is tried inline
    again. Measured end to end (bench_api, 16 unary callers over gRPC): inline batches there
    made the blocked loop the bottleneck (0.7-0.8x tx/s), while a lone caller (and callers in-process, which
    only wait for the batch) gained. Reads the loop's ready queue and selector (asyncio's selector loops);
    without them (another loop implementation) batches are never inline."""

    def __init__(self) -> None:
        self._handed_off_remaining = 0
        self._backoff_batches = 1

    def expected(self, loop: asyncio.AbstractEventLoop) -> bool:
        if self._handed_off_remaining > 0:
            return False
        return isinstance(getattr(loop, "_ready", None), deque) and hasattr(loop, "_selector")

    def handed_off(self) -> None:
        if self._handed_off_remaining > 0:
            self._handed_off_remaining -= 1
        assert self._handed_off_remaining >= 0

    def before(self, loop: asyncio.AbstractEventLoop) -> int:
        """The callbacks ready before an inline append."""
        ready: deque[object] = getattr(loop, "_ready")  # noqa: B009  Private: checked in `expected`.
        return len(ready)

    def after(self, loop: asyncio.AbstractEventLoop, ready_before: int) -> None:
        """Notes whether work came for the loop during the inline append that began with `ready_before`."""
        ready: deque[object] = getattr(loop, "_ready")  # noqa: B009  Private: checked in `expected`.
        selector: selectors.BaseSelector = getattr(loop, "_selector")  # noqa: B009
        assert self._handed_off_remaining == 0
        if len(ready) > ready_before or selector.select(0):  # Level-triggered: a peek consumes nothing.
            self._handed_off_remaining = self._backoff_batches
            self._backoff_batches = min(INLINE_BACKOFF_BATCHES_MAX, 2 * self._backoff_batches)
        else:
            self._backoff_batches = max(1, self._backoff_batches // 2)
        assert 1 <= self._backoff_batches <= INLINE_BACKOFF_BATCHES_MAX


class EmbeddedEngine:
    """The async Engine over an EmbeddedLedger; one writer thread serializes every call."""

    name = "embedded"

    def __init__(self, ledger: EmbeddedLedger, thread: _EngineThread, *, append_pipeline: bool = False) -> None:
        self._ledger = ledger
        self._thread = thread
        self._append_pipeline = append_pipeline
        self._closed = False
        self._ledger_lock = threading.Lock()
        """Held by whichever thread runs the ledger: the engine's (every call handed to it) or the event
        loop's (an inline batch). Never waited for on the loop: an inline batch only tries it."""
        # Calls handed to the engine's thread are numbered by the loop's thread; the engine's thread notes
        # the number of the one it runs. Each written by one thread only: equal means nothing handed off is
        # waiting to run (a call cancelled before it ran counts until the next one starts).
        self._calls_submitted = 0
        self._call_started = 0
        self._idleness = _LoopIdleness()
        # Pipelined writes are numbered as handed to the engine's thread (by the loop's thread); the engine's
        # thread notes the number of the one it runs. Each written by one thread only: a race-free hint of
        # a write waiting (a cancelled write that never runs counts only until the next write begins). Reads
        # are not counted: one queued behind a batch waits for its header step anyway.
        self._writes_submitted = 0
        self._write_running = 0
        self._pulse_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        clock: Callable[[], int] = time.time_ns,
        *,
        mirror_dir: Path | None = None,
        append_pipeline: bool = False,
    ) -> EmbeddedEngine:
        """`append_pipeline`: create_transfers overlaps a batch's header step with the next batch's record
        (settings.EngineSettings.append_pipeline); off, every append is serial, as `EmbeddedLedger`'s."""
        thread = _EngineThread("ledger-engine")
        mirror = Path(mirror_dir) if mirror_dir is not None else None
        try:
            ledger = await _on_thread(thread, lambda: EmbeddedLedger.open(Path(data_dir), clock, mirror=mirror))
        except BaseException:
            thread.stop(wait=False)
            raise
        engine = cls(ledger, thread, append_pipeline=append_pipeline)

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # Shut down already: close settles.
                thread.submit(ledger.settle)

        ledger.on_headers_failure(wake)
        engine._pulse_task = asyncio.create_task(engine._pulse_loop(), name="ledger-engine-pulse")
        threshold0, threshold1, threshold2 = gc.get_threshold()
        if 0 < threshold0 < GC_GENERATION0_THRESHOLD:  # Never re-enables or lowers what the process chose.
            gc.set_threshold(GC_GENERATION0_THRESHOLD, threshold1, threshold2)
        assert gc.get_threshold()[0] == 0 or gc.get_threshold()[0] >= GC_GENERATION0_THRESHOLD
        return engine

    @property
    def ledger(self) -> EmbeddedLedger:
        return self._ledger

    @property
    def write_failure(self) -> str | None:
        """Set for good when the engine is dead for writes (a failed fdatasync): liveness should fail.
        Reads keep serving the acknowledged state."""
        return self._ledger.write_failure

    @property
    def write_blocked(self) -> str | None:
        """Why writes are refused for now (disk full); they resume by themselves. Readiness only."""
        return self._ledger.write_blocked

    async def _run(self, function: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if self._closed:
            raise EngineUnavailableError("engine is closed")
        return await _on_thread(self._thread, self._numbered(function, *args, **kwargs))

    def _numbered(self, function: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> Callable[[], _R]:
        """`function` as a call for the engine's thread: numbered (see __init__), under the ledger lock."""
        self._calls_submitted += 1
        number = self._calls_submitted

        def call() -> _R:
            with self._ledger_lock:
                self._call_started = number
                return function(*args, **kwargs)

        return call

    def _inline_allowed(self, transfers: int) -> bool:
        """Whether a create_transfers batch of `transfers` may run on the caller's thread (module docstring);
        the caller must still get the ledger lock without waiting."""
        return (
            not self._append_pipeline
            and not self._closed
            and 0 < transfers <= INLINE_TRANSFERS_MAX
            and self._call_started == self._calls_submitted
            and self._ledger.append_seconds_recent <= INLINE_APPEND_SECONDS_MAX
        )

    def _work_waiting(self) -> bool:
        """Whether a write was handed to the engine's thread after the one it runs (a hint, see __init__)."""
        return self._writes_submitted > self._write_running

    async def _pulse_loop(self) -> None:
        """Releases expired reservations even when no writes arrive (TigerBeetle's pulse)."""
        while not self._closed:
            await asyncio.sleep(PULSE_INTERVAL_SECONDS)
            next_expiry = self._ledger.next_expiry()  # A racy peek is fine: pulse re-checks.
            if next_expiry is not None and next_expiry <= time.time_ns():
                try:
                    await self._run(self._ledger.pulse)
                except EngineUnavailableError:
                    # Disk full: expiry resumes with the writes. Dead for writes: nothing more to do.
                    if self._ledger.write_failure is not None or self._closed:
                        return

    async def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        return await self._run(self._ledger.create_accounts, list(accounts))

    async def create_transfers(
        self, transfers: Sequence[Transfer], intents: Sequence[TransactionIntent] = ()
    ) -> list[CreateTransferResult]:
        """Pipelined (EmbeddedLedger.submit_transfers), if enabled: the engine's thread takes the next batch
        as soon as this one's record is durable; this returns once its header copy is durable too."""
        if not self._append_pipeline:
            loop = asyncio.get_running_loop() if self._inline_allowed(len(transfers)) else None
            if loop is not None and self._idleness.expected(loop):
                if self._ledger_lock.acquire(blocking=False):
                    try:  # The engine's thread is idle and stays so: nothing is handed to it meanwhile.
                        calls_submitted = self._calls_submitted
                        started = self._idleness.before(loop)
                        results = self._ledger.create_transfers(list(transfers), list(intents))
                        self._idleness.after(loop, started)
                        assert self._calls_submitted == calls_submitted and len(results) == len(transfers)
                        return results
                    finally:
                        self._ledger_lock.release()
            else:
                self._idleness.handed_off()
            return await self._run(self._ledger.create_transfers, list(transfers), list(intents))
        if self._closed:
            raise EngineUnavailableError("engine is closed")
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[list[CreateTransferResult]] = loop.create_future()
        batch, batch_intents = list(transfers), list(intents)

        def deliver(outcome: list[CreateTransferResult] | BaseException) -> None:
            with contextlib.suppress(RuntimeError):  # The loop is gone: nobody waits for this answer.
                loop.call_soon_threadsafe(_answer, answer, outcome)

        self._writes_submitted += 1
        number = self._writes_submitted

        def write() -> None:
            if answer.cancelled():  # The caller gave up before the batch reached the engine's thread.
                return
            self._write_running = number
            try:
                self._ledger.submit_transfers(batch, batch_intents, deliver=deliver, overlap=self._work_waiting)
            except Exception as error:  # The caller's, as with run_in_executor: the engine's thread lives on.
                deliver(error)

        self._thread.submit(self._numbered(write))
        return await answer

    async def record_metadata(self, intents: Sequence[TransactionIntent]) -> None:
        await self._run(self._ledger.record_metadata, list(intents))

    @property
    def index(self) -> TransactionIndex:
        """The journaled transaction metadata (read-only outside the engine's thread)."""
        return self._ledger.index

    async def read_intents(self, locations: Sequence[int]) -> dict[int, TransactionIntent]:
        """Journal entries by location. On the engine's thread: after `close` the file is gone."""
        return await self._run(self._ledger.read_intents, list(locations))

    async def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        return await self._run(self._ledger.lookup_accounts, list(ids))

    async def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        return await self._run(self._ledger.lookup_transfers, list(ids))

    async def get_account_transfers(self, filter: AccountFilter) -> list[Transfer]:
        return await self._run(self._ledger.get_account_transfers, filter)

    async def get_account_balances(self, filter: AccountFilter) -> list[AccountBalance]:
        return await self._run(self._ledger.get_account_balances, filter)

    async def query_accounts(self, filter: QueryFilter) -> list[Account]:
        return await self._run(self._ledger.query_accounts, filter)

    async def query_transfers(self, filter: QueryFilter) -> list[Transfer]:
        return await self._run(self._ledger.query_transfers, filter)

    async def get_change_events(self, filter: ChangeEventsFilter) -> list[ChangeEvent]:
        return await self._run(self._ledger.get_change_events, filter)

    async def close(self) -> None:
        if self._closed:
            return
        if self._pulse_task is not None:
            self._pulse_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pulse_task
        await _on_thread(self._thread, self._numbered(self._ledger.close))
        self._closed = True
        self._thread.stop(wait=True)
