"""The embedded engine's write-ahead journal (format v2): checksummed, hash-chained operation records
plus a redundant, durable copy of every record's header.

Why this storage (and not SQLite): the state machine is deterministic, so logging its *inputs* (each
write operation's events and prepare timestamp, as TigerBeetle's own WAL does) is enough to rebuild
every balance, index and result by replay. A batch is one record, whatever its size.

Files in the data directory (a mirror directory, if configured, holds identical copies):

    journal          records, back to back: a 128-byte header, then the body (the events, 128 bytes each;
                     CREATE_TRANSACTIONS and METADATA records then carry transaction metadata,
                     see facade.engine.intents)
    journal.headers  slot n-1 holds a copy of op n's 128-byte header (TigerBeetle's redundant headers ring)
    LOCK             flock: one engine process per directory

Header layout (little-endian):

    checksum        u128   blake2b-128 over bytes 16..128 of this header
    checksum_body   u128   blake2b-128 over the body
    parent          u128   the previous record's checksum (op 1: zero): a hash chain, so a record can
                           be neither dropped, reordered nor taken from another journal unnoticed
    magic u32 ("LGJ2"), version u16, operation u8, reserved u8
    op u64                 1, 2, 3, ... with no gaps
    offset u64             this record's byte offset in `journal` (detects misdirected writes)
    timestamp u64          the prepare timestamp (pulse: the expiry cutoff)
    count u32              events in the body (pulse: transfers expired; metadata: entries)
    body_size u32
    results_checksum u32   crc32 of the results' statuses, re-checked on replay (determinism)
    reserved [36]u8        zero

Append protocol (one append = at most APPEND_RECORDS_MAX records, e.g. a pulse and a batch):

    1. write the records to `journal` (each copy), fdatasync;
    2. only then write their header copies to `journal.headers` (each copy), fdatasync;
    3. only then acknowledge.

So a valid header slot for op n is durable proof that record n was completely written and synced
(TigerBeetle writes a prepare before its redundant header for the same reason). Recovery rules, per op
from 1 (the full decision lives in `facade.engine.journal_check`):

- A record is intact if its header checksum, op, offset, parent and body checksum all hold (and its
  slot, where valid, is the same header). Intact records are kept, acknowledged or not.
- A record that is not intact was *provably durable* if any valid slot has op >= n (in any copy), or
  a valid record header with op >= n + APPEND_RECORDS_MAX follows it (a later append began, so this
  one's fdatasync had returned). Such a record is damage, never a torn tail: it is restored from the
  mirror copy if that copy is intact, otherwise start-up refuses, naming the file, op and byte offset.
- Only a record with no such proof may be torn: the journal is truncated there. Acknowledgement comes
  after step 2, so an acknowledged record always has its slot: only an unacknowledged write is ever
  truncated. (Fault model: one fault per record across its copies; a record whose journal bytes *and*
  slot copy are both damaged, with nothing written after it, is indistinguishable from a torn write.)
- A damaged slot whose record is intact is rewritten from the record (it is derived data).

Append pipeline (`append_pipelined`: the async engine's batches). Step 1 runs on the engine's thread,
which then takes the next batch; steps 2 and 3 run on the journal's header thread. So append A's step 2
(its header copies' write and fdatasync) overlaps append A+1's step 1 (its record's write and
fdatasync), and header copies that queue up share one write and one fdatasync per copy. A lone append
(nothing else waiting for the engine's thread) does step 2 on the engine's thread instead, as `append`
does: no hand-off when there is nothing to overlap. The orderings recovery relies on are kept:

    (a) one thread does every step 1, in op order, each returning only after its fdatasync: a record
        is written only after every earlier record is durable;
    (b) A's header copies are handed to the header thread only after A's step 1 returned, and header
        copies are written by one thread at a time (the header thread, or the engine's thread only
        when the header thread is idle), in op order, appended after the last acknowledged slot;
    (c) A is acknowledged only after its own header copies' fdatasync returned, appends in op order;
        a failed step 2 fails that append and every later one (none of them is acknowledged);
    (d) nothing reads the state an unacknowledged append built: reads, the change feed and the serial
        writes wait until the pipeline is empty (`settle`); a batch's index entries are added when it
        is acknowledged; a batch that journals nothing is answered only after the appends before it.

Why the rules hold under the pipeline, step by step. (i) "A valid slot for op >= n proves record n
durable": slot m is written after m's step 1 returned (b), which came after record n's fdatasync for
every n <= m (a). (ii) "A valid record header with op >= n + APPEND_RECORDS_MAX proves record n durable":
that record belongs to a later append, whose step 1 began only after n's step 1 returned (a). Under the
pipeline it no longer implies that n was *acknowledged*, only durable; recovery never needed more: it
refuses a damaged durable record (stricter, never weaker). (iii) "Acknowledged implies a durable slot":
(c). So an acknowledged record is never truncated, and only a record without proof is. A crash at each
point of A's append, with A-1 possibly still in step 2 and A+1 possibly in step 1:

    - during A's record write or its fdatasync: A's bytes may be absent, torn or whole. No slot >= A
      exists (b) and no record >= A+1 (a): A is kept if intact, else truncated as a torn tail; it was
      not acknowledged (c). A-1 is durable (a), kept with or without its slot;
    - after A's step 1, before A's header copy is written (A+1's step 1 may be running, A+2's too
      once A+1's returned): A is intact and kept; A+1 is kept if intact or truncated if torn (its
      proof would be a slot >= A+1 or a record >= A+3, neither of which exists before A+1's step 1
      returned); A was not acknowledged. A damaged A (a fault after its fdatasync) is refused when a
      record >= A+2 follows it, else truncated: unacknowledged either way;
    - during A's header write or its fdatasync: A's slot may be absent, torn or whole; A's record is
      intact and kept, a torn or missing slot rewritten from it, torn bytes past the last record's
      slot truncated. Not acknowledged yet;
    - after A's header fdatasync, before or after the answer: A and its slot are durable; A is kept
      and, damaged, refused (its slot proves it), never truncated.

With a mirror each step writes every copy before its fdatasync of every copy, so every proof above holds
per copy, and a record is restored from whichever copy holds it intact.

The v1 format (no header copies) is refused with a clear message rather than migrated: it only ever
held development data, and a refusal cannot silently lose what a migration bug would.

Write faults (`JournalWriteError`): a failed write is rolled back: the files are truncated to the
last acknowledged size (header copies first, so a crash midway leaves at worst a complete
unacknowledged record) and synced. After a lack of space (ENOSPC, EDQUOT, EFBIG) the journal stays
usable and the next append may succeed. A failed fdatasync, an EIO from a write, or a rollback that
cannot be synced is fatal for writes: after it the page cache cannot be trusted (fsyncgate), so
nothing more is written until a restart re-reads the disk. Pipelined, the same: a failed step 1 first
lets the header thread finish (earlier appends are acknowledged or fail), then rolls back; a failed
step 2 is only reported by the header thread, and the engine's thread (`settle`) rolls back, rebuilds
its state and only then answers the failed appends, so "rolled back" is true when a caller reads it.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import hashlib
import os
import struct
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from facade.engine.codec import EVENT_SIZE
from facade.engine.intents import METADATA_SECTION_SIZE_MAX
from facade.engine.types import BATCH_EVENTS_MAX

__all__ = [
    "APPEND_RECORDS_MAX",
    "HEADERS_FILE",
    "HEADER_SIZE",
    "JOURNAL_FILE",
    "LOCK_FILE",
    "PIPELINE_APPENDS_MAX",
    "Acknowledged",
    "Header",
    "Journal",
    "JournalCorruptError",
    "JournalFormatError",
    "JournalLockedError",
    "JournalWriteError",
    "Operation",
    "Record",
    "encode_record",
    "lock_directory",
    "parse_header",
    "unlock_directory",
]

MAGIC = 0x4C474A32  # "LGJ2"
VERSION = 2
MAGIC_V1 = 0x4C474A31
HEADER = struct.Struct("<16s16s16sIHBBQQQIII36s")
HEADER_SIZE = HEADER.size
assert HEADER_SIZE == 128
MAGIC_OFFSET = 48  # Where `magic` sits in a header: recovery searches for it after a damaged record.
BODY_SIZE_MAX = BATCH_EVENTS_MAX * EVENT_SIZE + METADATA_SECTION_SIZE_MAX
RECORD_SIZE_MAX = HEADER_SIZE + BODY_SIZE_MAX
APPEND_RECORDS_MAX = 2  # A pulse record and a batch record.
PIPELINE_APPENDS_MAX = 64
"""Pipelined appends whose records are durable but whose header copies are not yet acknowledged. The
group committer keeps two batches in flight, so the bound is only reached if the header thread stalls;
the engine's thread then waits for room (backpressure), it never drops or reorders."""
CHECKSUM_ZERO = bytes(16)
JOURNAL_FILE = "journal"
HEADERS_FILE = "journal.headers"
LOCK_FILE = "LOCK"


class Operation(enum.IntEnum):
    CREATE_ACCOUNTS = 1
    CREATE_TRANSFERS = 2
    PULSE = 3
    CREATE_TRANSACTIONS = 4
    """Transfers (count * 128 bytes) followed by the metadata section of the transactions that were new
    (facade.engine.intents): intents, fingerprints and outcomes made durable by the batch's own append."""
    METADATA = 5
    """Only a metadata section (count = entries): stand-alone intents or failures recorded after the fact."""


@dataclass(slots=True, frozen=True)
class Header:
    checksum: bytes
    checksum_body: bytes
    parent: bytes
    operation: Operation
    op: int
    offset: int
    timestamp: int
    count: int
    body_size: int
    results_checksum: int

    @property
    def record_size(self) -> int:
        return HEADER_SIZE + self.body_size


@dataclass(slots=True, frozen=True)
class Record:
    header: Header
    body: bytes

    @property
    def op(self) -> int:
        return self.header.op

    @property
    def operation(self) -> Operation:
        return self.header.operation

    @property
    def timestamp(self) -> int:
        return self.header.timestamp

    @property
    def count(self) -> int:
        return self.header.count

    @property
    def results_checksum(self) -> int:
        return self.header.results_checksum


class JournalCorruptError(RuntimeError):
    """Acknowledged data is damaged and no intact copy exists: the engine refuses to start."""


class JournalFormatError(JournalCorruptError):
    """The data directory holds a journal in another format version."""


class JournalLockedError(RuntimeError):
    """Another process has this data directory open: the engine is single-writer."""


class JournalWriteError(RuntimeError):
    """An append failed. `fatal`: an fdatasync failed (or a rollback did), so the journal refuses every
    further append. Otherwise the append was rolled back completely and a later append may succeed."""

    def __init__(self, message: str, *, fatal: bool, errno_value: int | None) -> None:
        super().__init__(message)
        self.fatal = fatal
        self.errno_value = errno_value


def checksum(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def encode_record(  # noqa: PLR0913  Keyword-only: one per header field the caller decides; no object per batch.
    *, op: int, parent: bytes, offset: int, operation: Operation, timestamp: int, count: int,
    results_checksum: int, body: bytes,
) -> tuple[Header, bytes]:  # fmt: skip
    """Returns the record's header and its bytes (header then body)."""
    assert op > 0 and offset >= 0 and len(parent) == 16
    assert len(body) <= BODY_SIZE_MAX
    if operation in (Operation.CREATE_ACCOUNTS, Operation.CREATE_TRANSFERS):
        assert len(body) == count * EVENT_SIZE
    elif operation == Operation.CREATE_TRANSACTIONS:
        assert count * EVENT_SIZE < len(body) <= count * EVENT_SIZE + METADATA_SECTION_SIZE_MAX
    checksum_body = checksum(body)
    rest = HEADER.pack(
        b"", checksum_body, parent, MAGIC, VERSION, operation, 0, op, offset, timestamp, count, len(body),
        results_checksum, b"",
    )[16:]  # fmt: skip
    header_checksum = checksum(rest)
    header = Header(
        header_checksum, checksum_body, parent, operation, op, offset, timestamp, count, len(body), results_checksum
    )
    data = header_checksum + rest + body
    assert parse_header(data[:HEADER_SIZE]) == header
    return header, data


def pack_header(header: Header) -> bytes:
    return HEADER.pack(
        header.checksum, header.checksum_body, header.parent, MAGIC, VERSION, header.operation, 0, header.op,
        header.offset, header.timestamp, header.count, header.body_size, header.results_checksum, b"",
    )  # fmt: skip


def parse_header(data: bytes | memoryview) -> Header | None:
    """The header in `data` (exactly HEADER_SIZE bytes), or None if it fails any check."""
    assert len(data) == HEADER_SIZE
    (
        header_checksum, checksum_body, parent, magic, version, operation, reserved_byte, op, offset, timestamp,
        count, body_size, results_checksum, reserved,
    ) = HEADER.unpack(data)  # fmt: skip
    if magic != MAGIC or version != VERSION or header_checksum != checksum(data[16:]):
        return None
    # A header with a valid checksum was written by us: a bad field is a bug, not a disk fault.
    assert reserved_byte == 0 and reserved == bytes(36), "journal header reserved bytes set"
    assert op > 0 and body_size <= BODY_SIZE_MAX and operation in Operation._value2member_map_
    return Header(
        header_checksum, checksum_body, parent, Operation(operation), op, offset, timestamp, count, body_size,
        results_checksum,
    )  # fmt: skip


def is_format_v1(journal_head: bytes) -> bool:
    """Whether `journal_head` (a journal's first bytes) starts with a v1 record."""
    return len(journal_head) >= 40 and struct.unpack_from("<I", journal_head, 32)[0] == MAGIC_V1


def lock_directory(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as error:
        os.close(lock_fd)
        raise JournalLockedError(f"{directory} is in use by another engine process") from error
    return lock_fd


def unlock_directory(lock_fd: int) -> None:
    fcntl.flock(lock_fd, fcntl.LOCK_UN)
    os.close(lock_fd)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(slots=True)
class _Copy:
    """One copy (primary or mirror) of the journal files, open for appending."""

    directory: Path
    journal_fd: int
    headers_fd: int


Acknowledged = Callable[[BaseException | None], None]
"""Called once per pipelined append, in journal order: with None once its records *and* their header
copies are durable (the append is acknowledged; on the header thread), or, from `settle` on the engine's
thread, with the error after the append was rolled back or the journal failed."""


@dataclass(slots=True, frozen=True)
class _Pending:
    """A pipelined append whose records are durable (step 1 done), waiting for its header copies (step 2).
    `headers_data` empty: an ordering point only (a batch that journaled nothing but read unacknowledged
    state: it is answered only after the appends before it)."""

    headers_data: bytes
    op_last: int
    size: int
    checksum_last: bytes
    acknowledged: Acknowledged


@dataclass(slots=True, frozen=True)
class _HeadersFailure:
    """Step 2 failed on the header thread. `rollback`: a write failed (the headers file may hold part of a
    copy), so `settle` truncates both files to the acknowledged size; an fdatasync failure is not rolled
    back (fsyncgate: nothing more is written)."""

    error: JournalWriteError
    rollback: bool


def _ignore(_error: BaseException | None) -> None:
    """The serial `append` acknowledges by returning."""


class Journal:
    """Appends to the journal (and its mirror) after recovery (`journal_check.recover`) has verified and
    repaired them. One writer: the engine's thread calls every method; step 2 of a pipelined append runs
    on the journal's own header thread, which touches only the headers files and the acknowledged position
    (`op_last`, `size`, `checksum_last`), and never while the engine's thread rolls back (`_wait_idle`)."""

    def __init__(
        self, *, copies: list[Path], lock_fds: list[int], op_last: int, checksum_last: bytes, size: int
    ) -> None:
        assert copies and len(copies) == len(lock_fds)
        self._copies = [
            _Copy(
                directory,
                os.open(directory / JOURNAL_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
                os.open(directory / HEADERS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
            )
            for directory in copies
        ]
        self._lock_fds = lock_fds
        # Acknowledged: the records and their header copies are durable.
        self.op_last = op_last
        self.checksum_last = checksum_last
        self.size = size
        # Written: the records are durable (step 1); the next record goes here. Ahead of the acknowledged
        # position only while pipelined appends wait for their header copies.
        self.op_written = op_last
        self.checksum_written = checksum_last
        self.size_written = size
        self.failure: str | None = None  # Set for good by a fatal write error.
        self._sync_executor = (
            # Two threads append (the engine's: records; the header thread: header copies), each syncing
            # its mirror file in parallel with its primary one.
            ThreadPoolExecutor(max_workers=2 * (len(copies) - 1), thread_name_prefix="ledger-journal-sync")
            if len(copies) > 1
            else None
        )
        self.headers_switching: Callable[[], AbstractContextManager[object]] = nullcontext
        """Entered around the header thread's write and fdatasync (the engine shortens the GIL switch
        interval meanwhile, as for its own appends)."""
        self.on_headers_failure: Callable[[], None] | None = None
        """Called on the header thread after step 2 failed: the engine's thread must `settle`."""
        self._condition = threading.Condition()
        self._pending: deque[_Pending] = deque()
        self._headers_busy = False
        self._headers_failure: _HeadersFailure | None = None
        self._failed: list[_Pending] = []
        self._headers_thread: threading.Thread | None = None
        self._closing = False
        for copy in self._copies:
            assert os.fstat(copy.journal_fd).st_size == size
            assert os.fstat(copy.headers_fd).st_size == op_last * HEADER_SIZE

    @property
    def directory(self) -> Path:
        return self._copies[0].directory

    @property
    def directories(self) -> list[Path]:
        return [copy.directory for copy in self._copies]

    @property
    def headers_failed(self) -> bool:
        """Whether step 2 of a pipelined append failed and `settle` has not dealt with it yet."""
        return self._headers_failure is not None

    def append(self, records: list[tuple[Header, bytes]]) -> None:
        """Makes the records durable in every copy, then their header copies; returns only then. The
        pipeline must be settled (nothing pending)."""
        with self._condition:
            assert not self._pending and not self._headers_busy and self._headers_failure is None
        pending = self._append_records(records, _ignore)
        failure = self._write_headers(pending.headers_data)
        if failure is not None:
            raise self._resolve(failure)
        self._acknowledge(pending)
        assert self.op_last == self.op_written and self.size == self.size_written

    def append_pipelined(
        self, records: list[tuple[Header, bytes]], acknowledged: Acknowledged, *, overlap: Callable[[], bool]
    ) -> None:
        """Step 1 now: the records, durable in every copy (so the next record may follow). Then, if
        `overlap()` (asked once step 1 is done: is more work waiting for the caller's thread?), step 2
        (the header copies and their fdatasync, coalesced with other appends waiting) runs on the header
        thread, which then calls `acknowledged(None)`, appends in journal order, and this returns at once.
        Otherwise, with nothing pending, step 2 runs here as in `append` (no hand-off for a lone batch)
        and `acknowledged(None)` is called before this returns; a failure then raises, as `append`'s."""
        pending = self._append_records(records, acknowledged)
        if not overlap():
            with self._condition:
                idle = not self._pending and not self._headers_busy and self._headers_failure is None
            if idle:
                failure = self._write_headers(pending.headers_data)
                if failure is not None:
                    raise self._resolve(failure)
                self._acknowledge(pending)
                assert self.op_last == self.op_written
                acknowledged(None)
                return
        self._enqueue(pending)

    def after_pending(self, acknowledged: Acknowledged) -> None:
        """Calls `acknowledged` once every append before this call is acknowledged: at once (on this
        thread) when none is pending, else on the header thread after them."""
        pending = _Pending(b"", self.op_written, self.size_written, self.checksum_written, acknowledged)
        with self._condition:
            idle = not self._pending and not self._headers_busy and self._headers_failure is None
        if idle:
            assert self.op_last == self.op_written
            acknowledged(None)
            return
        self._enqueue(pending)

    def settle(self) -> tuple[JournalWriteError, list[Acknowledged]] | None:
        """Waits until every pipelined append is acknowledged or failed. After a failed step 2: rolls the
        files back to the acknowledged size (a failed write) or marks the journal failed (a failed
        fdatasync), and returns the error with the callbacks of every append it failed (the failed one and
        all after it, in journal order), for the caller to answer; None if nothing failed."""
        self._wait_idle()
        with self._condition:
            failure, failed = self._headers_failure, self._failed
            self._headers_failure, self._failed = None, []
        if failure is None:
            assert not failed
            return None
        assert failed
        error = self._resolve(failure)
        assert self.size_written == self.size or error.fatal
        return error, [pending.acknowledged for pending in failed]

    def _append_records(self, records: list[tuple[Header, bytes]], acknowledged: Acknowledged) -> _Pending:
        """Step 1: the records, in every copy, fdatasynced; after the last step 1's fdatasync returned."""
        assert 0 < len(records) <= APPEND_RECORDS_MAX
        assert self.failure is None
        op, offset, parent = self.op_written, self.size_written, self.checksum_written
        for header, data in records:
            op += 1
            assert header.op == op and header.offset == offset and header.parent == parent
            assert len(data) == header.record_size
            offset += len(data)
            parent = header.checksum
        journal_data = b"".join(data for _, data in records)
        headers_data = b"".join(data[:HEADER_SIZE] for _, data in records)
        self._write_all(journal_data, kind="journal")
        self._sync_all(kind="journal")
        self.op_written, self.size_written, self.checksum_written = op, offset, parent
        assert self.op_written > self.op_last and self.size_written > self.size
        return _Pending(headers_data, op, offset, parent, acknowledged)

    def _enqueue(self, pending: _Pending) -> None:
        with self._condition:
            while len(self._pending) >= PIPELINE_APPENDS_MAX and self._headers_failure is None:
                self._condition.wait()
            if self._headers_failure is not None:
                # An earlier append failed: this one (built on it) fails with it, never acknowledged.
                self._failed.append(pending)
                return
            if self._headers_thread is None:
                self._headers_thread = threading.Thread(
                    target=self._run_headers, name="ledger-journal-headers", daemon=True
                )
                self._headers_thread.start()
            self._pending.append(pending)
            assert len(self._pending) <= PIPELINE_APPENDS_MAX
            self._condition.notify_all()

    def _run_headers(self) -> None:
        """The header thread: step 2 for every waiting append at once (one write, one fdatasync per copy),
        then their acknowledgements in journal order. Stops at the first failure: later appends fail too."""
        while True:
            with self._condition:
                while not self._pending and not self._closing:
                    self._condition.wait()
                if not self._pending:
                    return
                group = list(self._pending)
                self._pending.clear()
                self._headers_busy = True
                self._condition.notify_all()  # Room for the engine's thread.
            failure: _HeadersFailure | None = None
            try:
                data = b"".join(pending.headers_data for pending in group)
                if data:
                    with self.headers_switching():
                        failure = self._write_headers(data)
                if failure is None:
                    self._acknowledge(group[-1])
                    for pending in group:
                        pending.acknowledged(None)
            finally:
                with self._condition:
                    if failure is not None:
                        self._headers_failure = failure
                        self._failed = group + list(self._pending)
                        self._pending.clear()
                    self._headers_busy = False
                    self._condition.notify_all()
            if failure is not None and self.on_headers_failure is not None:
                self.on_headers_failure()

    def _acknowledge(self, pending: _Pending) -> None:
        assert pending.op_last >= self.op_last and pending.size >= self.size
        self.op_last, self.size, self.checksum_last = pending.op_last, pending.size, pending.checksum_last
        assert self.op_last <= self.op_written and self.size <= self.size_written

    def _wait_idle(self) -> None:
        """Until the header thread has nothing pending and is not writing: then only the caller (the
        engine's thread) touches the files."""
        with self._condition:
            while self._pending or self._headers_busy:
                self._condition.wait()

    def _write_all(self, data: bytes, *, kind: str) -> None:
        for copy in self._copies:
            fd = copy.journal_fd if kind == "journal" else copy.headers_fd
            try:
                _write_fully(fd, data)
            except OSError as error:
                path = copy.directory / (JOURNAL_FILE if kind == "journal" else HEADERS_FILE)
                self._wait_idle()  # A header copy being written for an earlier append lands (or fails) first.
                self._rollback()  # Raises a fatal error itself if the rollback cannot be made durable.
                name = errno.errorcode.get(error.errno or 0, "?")
                reason = f"writing {path} failed ({name}: {os.strerror(error.errno) if error.errno else error})"
                if error.errno == errno.EIO:
                    # The device failed, not the space: as after a failed fdatasync, trust nothing more.
                    self.failure = f"{reason}; the append was rolled back and the engine writes nothing more"
                    raise JournalWriteError(self.failure, fatal=True, errno_value=error.errno) from error
                raise JournalWriteError(
                    f"{reason}; the append was rolled back, nothing of it was applied",
                    fatal=False,
                    errno_value=error.errno,
                ) from error

    def _write_headers(self, data: bytes) -> _HeadersFailure | None:
        """Step 2: header copies in every copy, fdatasynced. Reports a failure rather than acting on it:
        on the header thread the engine's thread may be appending records, so only `settle` (on the
        engine's thread, once this one is idle) rolls back."""
        for copy in self._copies:
            try:
                _write_fully(copy.headers_fd, data)
            except OSError as error:
                path = copy.directory / HEADERS_FILE
                name = errno.errorcode.get(error.errno or 0, "?")
                reason = f"writing {path} failed ({name}: {os.strerror(error.errno) if error.errno else error})"
                fatal = error.errno == errno.EIO  # The device failed, not the space: trust nothing more.
                message = f"{reason}; the append was rolled back" + (
                    " and the engine writes nothing more" if fatal else ", nothing of it was applied"
                )
                write_error = JournalWriteError(message, fatal=fatal, errno_value=error.errno)
                write_error.__cause__ = error
                return _HeadersFailure(write_error, rollback=True)
        for copy, sync_error in zip(self._copies, self._sync_errors([c.headers_fd for c in self._copies]), strict=True):
            if sync_error is not None:
                sync_failure = JournalWriteError(
                    _fdatasync_failure(copy.directory / HEADERS_FILE, sync_error),
                    fatal=True,
                    errno_value=sync_error.errno,
                )
                sync_failure.__cause__ = sync_error
                return _HeadersFailure(sync_failure, rollback=False)
        return None

    def _resolve(self, failure: _HeadersFailure) -> JournalWriteError:
        """Acts on a failed step 2 (on the engine's thread, the header thread idle): as a failed write or
        fdatasync of step 1 would. Returns the error to raise (the rollback's own, if it failed)."""
        if failure.rollback:
            try:
                self._rollback()
            except JournalWriteError as rollback_error:
                return rollback_error
        if failure.error.fatal:
            self.failure = str(failure.error)
        return failure.error

    def _sync_errors(self, fds: list[int]) -> list[OSError | None]:
        """fdatasyncs every copy's file; the mirror's in parallel (fdatasync releases the GIL), so a
        mirror costs about one disk flush of latency, not two."""
        if self._sync_executor is None:
            return [_fdatasync(fds[0])]
        futures = [self._sync_executor.submit(_fdatasync, fd) for fd in fds[1:]]
        return [_fdatasync(fds[0])] + [future.result() for future in futures]

    def _sync_all(self, *, kind: str) -> None:
        fds = [copy.journal_fd if kind == "journal" else copy.headers_fd for copy in self._copies]
        errors = self._sync_errors(fds)
        for copy, error in zip(self._copies, errors, strict=True):
            if error is not None:
                path = copy.directory / (JOURNAL_FILE if kind == "journal" else HEADERS_FILE)
                self.failure = _fdatasync_failure(path, error)
                raise JournalWriteError(self.failure, fatal=True, errno_value=error.errno) from error

    def _rollback(self) -> None:
        """Truncates every file back to the last acknowledged append, durably. Header copies first:
        a crash between the two steps then leaves at most a complete record without its slot, which
        recovery keeps (an unacknowledged but intact record), never a slot without its record. Only with
        the header thread idle: it writes the headers files."""
        assert not self._headers_busy and not self._pending
        try:
            for copy in self._copies:
                os.ftruncate(copy.headers_fd, self.op_last * HEADER_SIZE)
                os.fsync(copy.headers_fd)
            for copy in self._copies:
                os.ftruncate(copy.journal_fd, self.size)
                os.fsync(copy.journal_fd)
        except OSError as error:
            self.failure = (
                f"rolling back a failed append failed ({error!r}); the engine writes nothing more. "
                "Restart once the disk is healthy; `ledger doctor` verifies the journal"
            )
            raise JournalWriteError(self.failure, fatal=True, errno_value=error.errno) from error
        self.op_written, self.size_written, self.checksum_written = self.op_last, self.size, self.checksum_last

    def read_acknowledged(self) -> list[Record]:
        """Every acknowledged record, re-read from the primary copy and re-verified: the engine rebuilds
        its state from them after an append it had applied in memory was rolled back or failed."""
        self._wait_idle()
        path = self.directory / JOURNAL_FILE
        with open(path, "rb") as file:
            data = file.read(self.size)
        records: list[Record] = []
        offset, parent = 0, CHECKSUM_ZERO
        while offset < self.size:
            header = parse_header(data[offset : offset + HEADER_SIZE]) if offset + HEADER_SIZE <= len(data) else None
            valid = header is not None and header.offset == offset and header.parent == parent
            if header is None or not valid or header.op != len(records) + 1:
                raise JournalCorruptError(f"{path} at byte {offset}: acknowledged record unreadable on re-read")
            body = data[offset + HEADER_SIZE : offset + header.record_size]
            if checksum(body) != header.checksum_body:
                raise JournalCorruptError(f"{path} op {header.op} at byte {offset}: body damaged on re-read")
            records.append(Record(header, body))
            offset += header.record_size
            parent = header.checksum
        assert offset == self.size and len(records) == self.op_last
        return records

    def space_available(self, size: int) -> bool:
        """Whether every copy's file system has room for `size` more journal bytes and their header
        copies: a blocked engine probes this before re-applying a batch that would fail again."""
        for copy in self._copies:
            stats = os.statvfs(copy.directory)
            if stats.f_bavail * stats.f_frsize < size + APPEND_RECORDS_MAX * HEADER_SIZE:
                return False
        return True

    def close(self) -> None:
        """Lets the header thread finish what is pending (acknowledging it), then closes the files."""
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        if self._headers_thread is not None:
            self._headers_thread.join()
        for copy in self._copies:
            os.close(copy.journal_fd)
            os.close(copy.headers_fd)
        for lock_fd in self._lock_fds:
            unlock_directory(lock_fd)
        if self._sync_executor is not None:
            self._sync_executor.shutdown(wait=True)


def _fdatasync_failure(path: Path, error: OSError) -> str:
    return (
        f"fdatasync of {path} failed ({errno.errorcode.get(error.errno or 0, '?')}): after a failed "
        "fdatasync the page cache cannot be trusted, so the engine writes nothing more; the "
        "unacknowledged append may or may not be present after a restart (retry it with the same "
        "ids). Check the disk, then restart; `ledger doctor` verifies the journal"
    )


def _fdatasync(fd: int) -> OSError | None:
    try:
        os.fdatasync(fd)
    except OSError as error:
        return error
    return None


def _write_fully(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        assert written > 0
        view = view[written:]
