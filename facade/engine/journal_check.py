"""Journal verification, recovery and repair; `ledger doctor`, `ledger backup` and `ledger restore`.

`check` reads every copy of the journal (the data directory and, if configured, the mirror) and walks
the hash chain op by op, applying the rules in `facade.engine.journal`'s docstring. It returns the
intact records and a list of findings, each naming the file, op and byte offset and whether it can be
repaired. Repair (`apply_repairs`) only ever writes bytes that are intact in some copy (or truncates
bytes that provably were never acknowledged), so it cannot turn damage into a silently shorter ledger.

Recovery need not start from scratch after a disaster: `backup` copies the verified, acknowledged
prefix of a (possibly live) journal into a new directory, which is itself a valid data directory, and
`restore` copies a verified backup into an empty data directory (and its mirror). We chose backup and
restore over state-machine snapshots: it reuses the exact recovery path and can be tested completely,
and a snapshot would not shorten start-up here. Measured on a 6 MB journal (49,134 transfers): replay
0.57 s, while loading a pickled state machine took 1.02 s (dumping it 1.69 s); the state is millions of
small objects, which replay builds about as fast as any deserializer.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from facade.engine.journal import (
    APPEND_RECORDS_MAX,
    CHECKSUM_ZERO,
    HEADER_SIZE,
    HEADERS_FILE,
    JOURNAL_FILE,
    MAGIC,
    MAGIC_OFFSET,
    Header,
    Journal,
    JournalCorruptError,
    JournalFormatError,
    Record,
    checksum,
    fsync_directory,
    is_format_v1,
    lock_directory,
    pack_header,
    parse_header,
    unlock_directory,
)
from facade.observability.logs import get_logger

__all__ = [
    "CheckResult",
    "Finding",
    "FindingKind",
    "apply_repairs",
    "backup",
    "check",
    "doctor",
    "recover",
    "restore",
]

log = get_logger("ledger.journal")

ADVICE = (
    "restore the record from a healthy mirror (set LEDGER_ENGINE__MIRROR_DIR and restart, or run "
    "`ledger doctor --data-dir DIR --mirror-dir MIRROR --repair`) or restore a backup (`ledger restore`)"
)
_MAGIC_BYTES = MAGIC.to_bytes(4, "little")


class FindingKind(enum.Enum):
    RECORD_DAMAGED = "record damaged"
    RECORD_MISSING = "record missing"
    TORN_TAIL = "torn tail"
    HEADER_COPY_DAMAGED = "header copy damaged"
    HEADERS_FILE_MISSING = "headers file missing"
    COPIES_DIFFER = "copies differ"


@dataclass(frozen=True, slots=True)
class Finding:
    kind: FindingKind
    path: Path
    op: int
    offset: int
    detail: str
    repairable: bool
    ops_following: int = 0  # Like findings for the next ops, folded into this one (e.g. a new mirror).

    def __str__(self) -> str:
        verdict = "repairable" if self.repairable else "NOT repairable"
        more = f" (and the {self.ops_following} ops after it)" if self.ops_following else ""
        return f"{self.kind.value}: {self.path} op {self.op} at byte {self.offset}{more}: {self.detail} [{verdict}]"


def _add(findings: list[Finding], finding: Finding) -> None:
    """Appends, folding a run of like findings for consecutive ops into one."""
    if findings:
        last = findings[-1]
        if (
            (last.kind, last.path, last.repairable) == (finding.kind, finding.path, finding.repairable)
            and last.op + last.ops_following + 1 == finding.op
            and finding.kind in (FindingKind.RECORD_MISSING, FindingKind.HEADER_COPY_DAMAGED)
        ):
            findings[-1] = replace(last, ops_following=last.ops_following + 1)
            return
    findings.append(finding)


@dataclass(slots=True)
class CheckResult:
    directories: list[Path]
    records: list[Record] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    durable_op_max: int = 0  # The highest op any valid header copy vouches for.

    @property
    def healthy(self) -> bool:
        return not self.findings

    @property
    def repairable(self) -> bool:
        return all(finding.repairable for finding in self.findings)

    @property
    def size(self) -> int:
        return sum(record.header.record_size for record in self.records)

    def report(self) -> str:
        where = " + ".join(str(directory) for directory in self.directories)
        lines = [
            f"journal {where}: {len(self.records)} intact records, {self.size} bytes; "
            f"header copies vouch for {self.durable_op_max} records"
        ]
        lines += [f"  {finding}" for finding in self.findings]
        return "\n".join(lines)


@dataclass(slots=True)
class _Files:
    """One copy's files, read whole: the journal is bounded by the disk and read once at start-up."""

    directory: Path
    journal: bytes
    headers: bytes
    headers_present: bool

    @property
    def journal_path(self) -> Path:
        return self.directory / JOURNAL_FILE

    @property
    def headers_path(self) -> Path:
        return self.directory / HEADERS_FILE

    def slot(self, op: int) -> Header | None:
        start = (op - 1) * HEADER_SIZE
        if not self.headers_present or start + HEADER_SIZE > len(self.headers):
            return None
        header = parse_header(self.headers[start : start + HEADER_SIZE])
        return header if header is not None and header.op == op else None

    def slot_op_max(self) -> int:
        """The highest op with a valid slot: proof that every record up to it was durable."""
        for op in range(len(self.headers) // HEADER_SIZE, 0, -1):
            if self.slot(op) is not None:
                return op
        return 0

    def later_record_op(self, offset: int) -> tuple[int, int]:
        """(op, offset) of the highest-op valid record header found after `offset`, or (0, 0)."""
        best = (0, 0)
        position = self.journal.find(_MAGIC_BYTES, offset + MAGIC_OFFSET)
        while position != -1:
            start = position - MAGIC_OFFSET
            if start + HEADER_SIZE <= len(self.journal):
                header = parse_header(self.journal[start : start + HEADER_SIZE])
                if header is not None and header.offset == start and header.op > best[0]:
                    best = (header.op, start)
            position = self.journal.find(_MAGIC_BYTES, position + 1)
        return best


@dataclass(frozen=True, slots=True)
class _Examined:
    record: Record | None
    data: bytes  # The record's bytes when intact.
    reason: str  # Why not intact.
    present: bool  # Whether the copy has any bytes at this record's offset.


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _load(directory: Path) -> _Files:
    journal = _read(directory / JOURNAL_FILE) or b""
    if is_format_v1(journal[:HEADER_SIZE]):
        raise JournalFormatError(
            f"{directory / JOURNAL_FILE} is a format v1 journal; this version reads format v2 only and does not "
            "migrate v1 data. Start this version on an empty data directory (move the old one away), or run the "
            "previous version to export the ledger"
        )
    headers = _read(directory / HEADERS_FILE)
    return _Files(directory, journal, headers or b"", headers is not None)


def _examine(files: _Files, op: int, offset: int, parent: bytes) -> _Examined:
    journal = files.journal
    present = len(journal) > offset
    slot = files.slot(op)
    if slot is not None and (slot.offset != offset or slot.parent != parent):
        slot = None  # A valid slot for another chain: a misdirected or stale write, not evidence here.
    header: Header | None = None
    if offset + HEADER_SIZE <= len(journal):
        header = parse_header(journal[offset : offset + HEADER_SIZE])
        if header is not None and (header.op != op or header.offset != offset or header.parent != parent):
            header = None
    if header is None:
        if not present:
            return _Examined(None, b"", "absent", present)
        if slot is not None and offset + slot.record_size <= len(journal):
            body = journal[offset + HEADER_SIZE : offset + slot.record_size]
            intact_body = checksum(body) == slot.checksum_body
            return _Examined(None, b"", "header damaged" + ("" if intact_body else ", body damaged"), present)
        return _Examined(None, b"", "header damaged or incomplete", present)
    end = offset + header.record_size
    if end > len(journal):
        return _Examined(None, b"", f"incomplete ({len(journal) - offset} of {header.record_size} bytes)", present)
    body = journal[offset + HEADER_SIZE : end]
    if checksum(body) != header.checksum_body:
        return _Examined(None, b"", "body damaged", present)
    if slot is not None and slot != header:
        return _Examined(None, b"", "header differs from its durable copy", present)
    return _Examined(Record(header, body), journal[offset:end], "", present)


def _durability_proof(copies: list[_Files], op: int, offset: int) -> str | None:
    """Why record `op` must have been completely durable (so damage to it is not a torn write)."""
    for files in copies:
        op_max = files.slot_op_max()
        if op_max >= op:
            return f"{files.headers_path} holds a valid header copy for op {op_max} >= {op}"
    for files in copies:
        later_op, later_offset = files.later_record_op(offset)
        if later_op >= op + APPEND_RECORDS_MAX:
            return f"a later append's record (op {later_op}) follows at byte {later_offset} of {files.journal_path}"
    return None


def check(directory: Path, mirror: Path | None = None, *, trust_journal_without_headers: bool = False) -> CheckResult:
    """Verifies every copy; read-only. `trust_journal_without_headers` (doctor --repair only) accepts a
    journal whose headers file is lost in every copy, at the cost of not telling a damaged last record
    from a torn one."""
    copies = [_load(directory)] + ([_load(mirror)] if mirror is not None else [])
    result = CheckResult([files.directory for files in copies])
    result.durable_op_max = max(files.slot_op_max() for files in copies)
    with_headers = [files for files in copies if files.headers_present]
    for files in copies:
        if files.journal and not files.headers_present:
            repairable = bool(with_headers) or trust_journal_without_headers
            result.findings.append(
                Finding(
                    FindingKind.HEADERS_FILE_MISSING,
                    files.headers_path,
                    0,
                    0,
                    "the durable header copies are gone: a damaged last record could not be told from a torn "
                    "write" + ("" if repairable else "; `ledger doctor --repair` rebuilds it from the journal"),
                    repairable,
                )
            )
    if not result.repairable:
        return result
    offset, parent, op = 0, CHECKSUM_ZERO, 1
    while True:
        examined = [_examine(files, op, offset, parent) for files in copies]
        intact = [(files, e) for files, e in zip(copies, examined, strict=True) if e.record is not None]
        if not intact:
            _check_end(result, copies, examined, op, offset)
            break
        chosen_files, chosen = intact[0]
        differing = [files for files, e in intact[1:] if e.data != chosen.data]
        if differing:
            result.findings.append(
                Finding(
                    FindingKind.COPIES_DIFFER,
                    differing[0].journal_path,
                    op,
                    offset,
                    f"intact but different from {chosen_files.journal_path}: the copies belong to different "
                    "ledgers; point the mirror at this ledger's copy",
                    False,
                )
            )
            break
        for files, e in zip(copies, examined, strict=True):
            if e.record is None:
                kind = FindingKind.RECORD_DAMAGED if e.present else FindingKind.RECORD_MISSING
                detail = f"{e.reason}; intact in {chosen_files.directory}"
                _add(result.findings, Finding(kind, files.journal_path, op, offset, detail, True))
        assert chosen.record is not None
        result.records.append(chosen.record)
        offset += len(chosen.data)
        parent = chosen.record.header.checksum
        op += 1
    if result.repairable:
        _check_slots(result, copies)
    return result


def _check_end(result: CheckResult, copies: list[_Files], examined: list[_Examined], op: int, offset: int) -> None:
    """No copy holds an intact record `op`: either the end of the journal (maybe a torn write) or damage."""
    proof = _durability_proof(copies, op, offset)
    for files, e in zip(copies, examined, strict=True):
        if not e.present:
            continue
        if proof is not None:
            result.findings.append(
                Finding(
                    FindingKind.RECORD_DAMAGED,
                    files.journal_path,
                    op,
                    offset,
                    f"{e.reason}; it was durable ({proof}), so this is damage, not a torn write, and no intact "
                    f"copy exists. Refusing to start: {ADVICE}",
                    False,
                )
            )
        else:
            result.findings.append(
                Finding(
                    FindingKind.TORN_TAIL,
                    files.journal_path,
                    op,
                    offset,
                    f"{len(files.journal) - offset} bytes ({e.reason}) after the last intact record, never "
                    "acknowledged (no durable header copy, no later append): truncated",
                    True,
                )
            )
    if proof is not None and not any(e.present for e in examined):
        result.findings.append(
            Finding(
                FindingKind.RECORD_MISSING,
                copies[0].journal_path,
                op,
                offset,
                f"the journal ends here but {proof}: acknowledged records are missing. Refusing to start: {ADVICE}",
                False,
            )
        )


def _check_slots(result: CheckResult, copies: list[_Files]) -> None:
    expected = b"".join(pack_header(record.header) for record in result.records)
    for files in copies:
        if not files.headers_present or files.headers == expected:
            continue
        for index, record in enumerate(result.records):
            start = index * HEADER_SIZE
            if files.headers[start : start + HEADER_SIZE] != expected[start : start + HEADER_SIZE]:
                _add(
                    result.findings,
                    Finding(
                        FindingKind.HEADER_COPY_DAMAGED,
                        files.headers_path,
                        record.op,
                        start,
                        "rewritten from the intact record" if start < len(files.headers) else "missing; rewritten",
                        True,
                    ),
                )
        if len(files.headers) > len(expected):
            result.findings.append(
                Finding(
                    FindingKind.TORN_TAIL,
                    files.headers_path,
                    len(result.records) + 1,
                    len(expected),
                    f"{len(files.headers) - len(expected)} bytes of an unacknowledged header copy: truncated",
                    True,
                )
            )


def apply_repairs(result: CheckResult) -> None:
    """Makes every copy hold exactly the intact records and their header copies, durably. Only bytes
    that differ are written; journals before headers, so a crash midway never leaves a header copy
    proving a record that no copy holds."""
    assert result.repairable
    records = [pack_header(r.header) + r.body for r in result.records]
    headers = [pack_header(r.header) for r in result.records]
    for directory in result.directories:
        _rewrite(directory / JOURNAL_FILE, records)
    for directory in result.directories:
        _rewrite(directory / HEADERS_FILE, headers)
    for directory in result.directories:
        fsync_directory(directory)


def _rewrite(path: Path, pieces: list[bytes]) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        size_old = os.fstat(fd).st_size
        offset = 0
        changed = False
        for piece in pieces:
            if offset >= size_old or os.pread(fd, len(piece), offset) != piece:
                os.pwrite(fd, piece, offset)
                changed = True
            offset += len(piece)
        if size_old != offset:
            os.ftruncate(fd, offset)
            changed = True
        if changed:
            os.fsync(fd)
    finally:
        os.close(fd)


def recover(directory: Path, mirror: Path | None = None) -> tuple[Journal, list[Record], list[Finding]]:
    """Locks the directories, verifies the journal, repairs what an intact copy allows (logged loudly),
    and returns the journal ready for appends with every intact record. Raises JournalCorruptError,
    naming the damage, when an acknowledged record has no intact copy."""
    directories = [directory] + ([mirror] if mirror is not None else [])
    if len(set(map(os.path.realpath, directories))) != len(directories):
        raise ValueError(f"the mirror directory {mirror} must not be the data directory {directory}")
    lock_fds: list[int] = []
    try:
        for path in directories:
            lock_fds.append(lock_directory(path))
        for path in directories:
            journal_path = path / JOURNAL_FILE
            new = not journal_path.exists()
            if new or (journal_path.stat().st_size == 0 and not (path / HEADERS_FILE).exists()):
                # A new data directory (or a new mirror, filled from the primary below). The entries
                # are made durable before anything is acknowledged into them.
                (path / HEADERS_FILE).touch()
                journal_path.touch()
                fsync_directory(path)
        result = check(directory, mirror)
        if not result.repairable:
            raise JournalCorruptError("journal damaged, refusing to start:\n" + result.report())
        for finding in result.findings:
            log.warning("journal_repaired", finding=str(finding), kind=finding.kind.value, op=finding.op)
        if result.findings:
            apply_repairs(result)
        checksum_last = result.records[-1].header.checksum if result.records else CHECKSUM_ZERO
        journal = Journal(
            copies=directories, lock_fds=lock_fds, op_last=len(result.records), checksum_last=checksum_last,
            size=result.size,
        )  # fmt: skip
    except BaseException:
        for lock_fd in lock_fds:
            unlock_directory(lock_fd)
        raise
    return journal, result.records, result.findings


def doctor(directory: Path, mirror: Path | None = None, *, repair: bool = False) -> tuple[int, str]:
    """Offline check (and repair): (exit code, report). 0: healthy (or fully repaired); 1: damage found
    (without --repair) or unrepairable."""
    directories = [directory] + ([mirror] if mirror is not None else [])
    if not (directory / JOURNAL_FILE).exists() and not (mirror and (mirror / JOURNAL_FILE).exists()):
        return 1, f"no journal in {directory}" + (f" or {mirror}" if mirror else "")
    lock_fds = [lock_directory(path) for path in directories]
    try:
        result = check(directory, mirror, trust_journal_without_headers=repair)
        report = result.report()
        if result.healthy:
            return 0, report + "\nhealthy"
        if not repair:
            verdict = "repairable: run with --repair" if result.repairable else "NOT repairable"
            return 1, report + f"\ndamage found, {verdict}"
        if not result.repairable:
            return 1, report + f"\nNOT repairable: {ADVICE}"
        apply_repairs(result)
        after = check(directory, mirror)
        assert after.healthy, after.report()
        return 0, report + f"\nrepaired: {len(result.findings)} findings; journal now healthy"
    finally:
        for lock_fd in lock_fds:
            unlock_directory(lock_fd)


def backup(directory: Path, target: Path, mirror: Path | None = None) -> CheckResult:
    """Copies the verified, acknowledged prefix (records with a durable header copy) of a journal, which
    may be live, into `target` (new or empty), durably. Raises JournalCorruptError on damage."""
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} is not empty")
    result = check(directory, mirror)
    damage = [f for f in result.findings if f.kind != FindingKind.TORN_TAIL]
    if damage:
        raise JournalCorruptError("journal damaged, not backing it up:\n" + result.report())
    acknowledged = min(len(result.records), len(_load(directory).headers) // HEADER_SIZE)
    records = result.records[:acknowledged]
    _write_copy(target, records)
    copied = check(target)
    assert copied.healthy and len(copied.records) == len(records), copied.report()
    return copied


def restore(source: Path, directory: Path, mirror: Path | None = None) -> CheckResult:
    """Copies a healthy backup into an empty data directory (and mirror). Refuses to overwrite data."""
    result = check(source)
    if not result.healthy:
        raise JournalCorruptError("backup damaged, not restoring it:\n" + result.report())
    directories = [directory] + ([mirror] if mirror is not None else [])
    for path in directories:
        if (path / JOURNAL_FILE).exists() and (path / JOURNAL_FILE).stat().st_size > 0:
            raise FileExistsError(f"{path / JOURNAL_FILE} holds data: move it away before restoring")
    lock_fds = [lock_directory(path) for path in directories]
    try:
        for path in directories:
            _write_copy(path, result.records)
    finally:
        for lock_fd in lock_fds:
            unlock_directory(lock_fd)
    return result


def _write_copy(target: Path, records: list[Record]) -> None:
    """Writes a journal and its headers atomically (temporary files renamed into place)."""
    target.mkdir(parents=True, exist_ok=True)
    for name, pieces in (
        (JOURNAL_FILE, [pack_header(r.header) + r.body for r in records]),
        (HEADERS_FILE, [pack_header(r.header) for r in records]),
    ):
        temporary = target / f"{name}.tmp"
        with open(temporary, "wb") as file:
            for piece in pieces:
                file.write(piece)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target / name)
    fsync_directory(target)
