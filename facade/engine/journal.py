"""The embedded engine's write-ahead journal: an append-only file of checksummed operation records.

Why this storage (and not SQLite): the state machine is deterministic, so logging its *inputs* (each
write operation's events and prepare timestamp, as TigerBeetle's own WAL does) is enough to rebuild
every balance, index and result by replay. A batch is one record and one write + fdatasync, whatever
its size: no per-item syscalls, no secondary index maintenance on disk, and the hot state stays in
memory where the state machine needs it. SQLite would add a B-tree update per transfer for data we
never read back from disk except at start-up.

Record layout (little-endian), header then body:

    checksum_header u128   blake2b-128 over the rest of the header (bytes 16..80)
    checksum_body   u128   blake2b-128 over the body
    magic u32, version u16, operation u8, reserved u8
    op u64                 1, 2, 3, ... with no gaps: a missing record is detectable
    timestamp u64          the prepare timestamp (pulse: the expiry cutoff)
    count u32              events in the body (pulse: transfers expired)
    body_size u32
    results_checksum u32   crc32 of the results' statuses, re-checked on replay (determinism)
    reserved [12]u8        zero

Durability: `append` returns only after fdatasync. Recovery reads records until the first one that
is incomplete or fails its checksums. Only the tail can be torn (a crash mid-append, before the
append was acknowledged), so the journal is truncated there; a bad record with more data after it
than one maximal record is not a torn tail but corruption, and recovery refuses to start.
"""

from __future__ import annotations

import enum
import fcntl
import hashlib
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from facade.engine.codec import EVENT_SIZE
from facade.engine.types import BATCH_EVENTS_MAX

MAGIC = 0x4C474A31  # "LGJ1"
VERSION = 1
HEADER = struct.Struct("<16s16sIHBBQQIII12s")
HEADER_SIZE = HEADER.size
assert HEADER_SIZE == 80
BODY_SIZE_MAX = BATCH_EVENTS_MAX * EVENT_SIZE
RECORD_SIZE_MAX = HEADER_SIZE + BODY_SIZE_MAX
JOURNAL_FILE = "journal"
LOCK_FILE = "LOCK"


class Operation(enum.IntEnum):
    CREATE_ACCOUNTS = 1
    CREATE_TRANSFERS = 2
    PULSE = 3


@dataclass(slots=True, frozen=True)
class Record:
    op: int
    operation: Operation
    timestamp: int
    count: int
    results_checksum: int
    body: bytes


class JournalCorruptError(RuntimeError):
    """A record before the tail fails its checksum: acknowledged data is damaged. Never auto-repaired."""


class JournalLockedError(RuntimeError):
    """Another process has this data directory open: the engine is single-writer."""


def _checksum(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def encode_record(
    op: int, operation: Operation, timestamp: int, count: int, results_checksum: int, body: bytes
) -> bytes:
    assert op > 0
    assert len(body) <= BODY_SIZE_MAX
    assert operation == Operation.PULSE or len(body) == count * EVENT_SIZE
    # checksum_header covers bytes 16..80: checksum_body and every field after it.
    header_rest = HEADER.pack(
        b"", _checksum(body), MAGIC, VERSION, operation, 0, op, timestamp, count, len(body),
        results_checksum, b"",
    )[16:]  # fmt: skip
    return _checksum(header_rest) + header_rest + body


class Journal:
    """Owns the journal file and the directory lock. Not thread-safe: the engine's single writer
    thread is its only user."""

    def __init__(self, directory: Path, fd: int, lock_fd: int, op_last: int, size: int) -> None:
        self.directory = directory
        self._fd = fd
        self._lock_fd = lock_fd
        self.op_last = op_last
        self.size = size

    @classmethod
    def open(cls, directory: Path) -> tuple[Journal, list[Record]]:
        """Locks the directory, recovers the journal and returns it with every valid record."""
        directory.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            os.close(lock_fd)
            raise JournalLockedError(f"{directory} is in use by another engine process") from error
        path = directory / JOURNAL_FILE
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        if created:
            _fsync_directory(directory)
        records, size_valid = _recover(fd)
        size = os.fstat(fd).st_size
        if size_valid < size:
            # A torn tail: the crash came mid-append, so that append was never acknowledged.
            os.ftruncate(fd, size_valid)
            os.fsync(fd)
        op_last = records[-1].op if records else 0
        return cls(directory, fd, lock_fd, op_last, size_valid), records

    def append(self, records: list[bytes]) -> None:
        """Writes records and returns once they are durable (fdatasync)."""
        assert records
        data = b"".join(records)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fdatasync(self._fd)
        self.size += len(data)

    def next_op(self) -> int:
        self.op_last += 1
        return self.op_last

    def close(self) -> None:
        os.close(self._fd)
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _recover(fd: int) -> tuple[list[Record], int]:
    size = os.fstat(fd).st_size
    if size == 0:
        return [], 0
    with mmap.mmap(fd, size, prot=mmap.PROT_READ) as data:
        records: list[Record] = []
        offset = 0
        for record, end in _records(data, size):
            if record is None:
                break
            if record.op != len(records) + 1:
                raise JournalCorruptError(f"journal op {record.op} at byte {offset}: expected {len(records) + 1}")
            records.append(record)
            offset = end
        if offset < size and size - offset > RECORD_SIZE_MAX:
            raise JournalCorruptError(
                f"journal record at byte {offset} is damaged and {size - offset} bytes follow it: "
                "not a torn tail; refusing to start (restore from a replica or backup)"
            )
        return records, offset


def _records(data: mmap.mmap, size: int) -> Iterator[tuple[Record | None, int]]:
    offset = 0
    while offset < size:
        if size - offset < HEADER_SIZE:
            yield None, offset
            return
        header = data[offset : offset + HEADER_SIZE]
        (
            checksum_header, checksum_body, magic, version, operation, _, op, timestamp, count,
            body_size, results_checksum, _,
        ) = HEADER.unpack(header)  # fmt: skip
        if checksum_header != _checksum(header[16:]) or magic != MAGIC or version != VERSION:
            yield None, offset
            return
        end = offset + HEADER_SIZE + body_size
        if body_size > BODY_SIZE_MAX or end > size:
            yield None, offset
            return
        body = data[offset + HEADER_SIZE : end]
        if checksum_body != _checksum(body):
            yield None, offset
            return
        yield Record(op, Operation(operation), timestamp, count, results_checksum, body), end
        offset = end
