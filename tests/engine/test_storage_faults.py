"""Storage faults on real files: a damaged acknowledged record is never read as the end of the journal.

Every case ends in one of two ways, and never a third: start-up refuses, naming the damaged file, op
and byte offset; or (with an intact copy) the ledger recovers with every acknowledged account, transfer
and balance exactly as acknowledged. Bit flips land at seeded random offsets (LEDGER_FAULT_SEED replays a
run) in every record kind, in headers and bodies, in the first, middle, second-to-last and last record,
in a small journal and a large one. Counts are printed (pytest -s) for the closing report.
"""

from __future__ import annotations

import os
import random
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from facade.engine.embedded import EmbeddedLedger
from facade.engine.intents import TransactionIntent
from facade.engine.journal import (
    HEADER_SIZE,
    HEADERS_FILE,
    JOURNAL_FILE,
    JournalCorruptError,
    JournalFormatError,
    Operation,
)
from facade.engine.journal_check import check
from facade.engine.types import Account, CreateTransferStatus, Transfer, TransferFlags

from ._journal_workload import (
    CODE,
    LEDGER,
    NANOSECONDS_PER_SECOND,
    Acknowledged,
    Clock,
    transactions_of,
    write_workload,
)

SEED = int(os.environ.get("LEDGER_FAULT_SEED", random.SystemRandom().randrange(1 << 32)))
FLIPS_PER_PART = 2  # Random bits per record part (header, body) per copy.
LARGE_TRANSFERS_PER_BATCH = 8189
UNIFORM_CASES = 200
BATCH_OPERATIONS = (Operation.CREATE_TRANSFERS, Operation.CREATE_TRANSACTIONS)
SMALL_JOURNAL_RECORDS = 42
SMALL_JOURNAL_OVERSHOOT_MAX = 4
"""Records the workload's last step may add past its target (accounts, pulse, metadata, batch): a small
journal is damaged in every record."""


@dataclass(frozen=True, slots=True)
class Span:
    op: int
    operation: Operation
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class Pristine:
    directory: Path
    mirror: Path
    acknowledged: Acknowledged
    spans: list[Span]


def _pristine(root: Path, *, records: int, transfers_per_batch: int) -> Pristine:
    directory, mirror = root / "data", root / "mirror"
    acknowledged = write_workload(
        directory, records=records, transfers_per_batch=transfers_per_batch, seed=SEED, mirror=mirror
    )
    spans = [Span(r.op, r.operation, r.header.offset, r.header.record_size) for r in check(directory, mirror).records]
    assert (directory / JOURNAL_FILE).read_bytes() == (mirror / JOURNAL_FILE).read_bytes()
    assert {span.operation for span in spans} == set(Operation), "every record kind is on disk"
    return Pristine(directory, mirror, acknowledged, spans)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    return _pristine(tmp_path_factory.mktemp("small"), records=SMALL_JOURNAL_RECORDS, transfers_per_batch=50)


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    return _pristine(tmp_path_factory.mktemp("large"), records=8, transfers_per_batch=LARGE_TRANSFERS_PER_BATCH)


def _copy(pristine: Pristine, target: Path) -> tuple[Path, Path]:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(pristine.directory, target / "data")
    shutil.copytree(pristine.mirror, target / "mirror")
    return target / "data", target / "mirror"


def _flip(path: Path, offset: int, bit: int) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)[0]
        file.seek(offset)
        file.write(bytes([byte ^ (1 << bit)]))


def _parts(span: Span) -> list[tuple[str, int, int]]:
    """(name, first byte, size) of the record's header and, if it has one, its body."""
    parts = [("header", span.offset, HEADER_SIZE)]
    if span.size > HEADER_SIZE:
        parts.append(("body", span.offset + HEADER_SIZE, span.size - HEADER_SIZE))
    return parts


def _spans_to_damage(pristine: Pristine) -> list[Span]:
    """Every record of a small journal; in a large one the first, middle, second-to-last and last, and
    one of each kind."""
    spans = pristine.spans
    if len(spans) <= SMALL_JOURNAL_RECORDS + SMALL_JOURNAL_OVERSHOOT_MAX:
        return spans
    chosen = {0, len(spans) // 2, len(spans) - 2, len(spans) - 1}
    for operation in Operation:
        chosen.add(next(i for i, span in enumerate(spans) if span.operation == operation))
    return [spans[i] for i in sorted(chosen)]


def _open_and_judge(directory: Path, mirror: Path | None, acknowledged: Acknowledged) -> str:
    """'refused' (with the error) or 'recovered' with every acknowledged item checked."""
    try:
        ledger = EmbeddedLedger.open(directory, mirror=mirror)
    except JournalCorruptError:
        return "refused"
    try:
        acknowledged.assert_present_in(ledger)
    finally:
        ledger.close()
    return "recovered"


@pytest.mark.parametrize("size", ["small", "large"])
def test_bit_flip_in_any_acknowledged_record_refuses_naming_it(
    size: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    pristine: Pristine = request.getfixturevalue(size)
    rng = random.Random(SEED)
    counts: Counter[str] = Counter()
    directory, _ = _copy(pristine, tmp_path / "case")
    journal = directory / JOURNAL_FILE
    original = journal.read_bytes()
    for span in _spans_to_damage(pristine):
        for part, start, length in _parts(span):
            for _ in range(FLIPS_PER_PART):
                offset, bit = start + rng.randrange(length), rng.randrange(8)
                journal.write_bytes(original)
                _flip(journal, offset, bit)
                where = f"seed {SEED}: {span.operation.name} op {span.op} {part} byte {offset} bit {bit}"
                with pytest.raises(JournalCorruptError) as refused:
                    EmbeddedLedger.open(directory)
                message = str(refused.value)
                assert f"{journal} op {span.op} at byte {span.offset}" in message, where + "\n" + message
                assert "ledger doctor" in message and "mirror" in message, message
                counts["tried"] += 1
                counts["refused"] += 1
    print(f"\nbit flips ({size} journal, no mirror, seed {SEED}): {dict(counts)}, acknowledged lost: 0")
    assert counts["tried"] >= 2 * len(_spans_to_damage(pristine))


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("damaged", ["data", "mirror"])
def test_bit_flip_with_a_mirror_is_repaired_with_nothing_lost(
    size: str, damaged: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    pristine: Pristine = request.getfixturevalue(size)
    rng = random.Random(SEED + 1)
    counts: Counter[str] = Counter()
    original = (pristine.directory / JOURNAL_FILE).read_bytes()
    spans = _spans_to_damage(pristine)
    if size == "large":
        spans = spans[:: max(1, len(spans) // 4)]  # Each recovery replays 50k transfers: keep it bounded.
    for span in spans:
        for part, start, length in _parts(span):
            directory, mirror = _copy(pristine, tmp_path / "case")
            offset, bit = start + rng.randrange(length), rng.randrange(8)
            _flip((directory if damaged == "data" else mirror) / JOURNAL_FILE, offset, bit)
            outcome = _open_and_judge(directory, mirror, pristine.acknowledged)
            where = f"seed {SEED}: {span.operation.name} op {span.op} {part} byte {offset} bit {bit}"
            assert outcome == "recovered", where
            # The damaged copy was restored byte for byte.
            assert (directory / JOURNAL_FILE).read_bytes() == original, where
            assert (mirror / JOURNAL_FILE).read_bytes() == original, where
            counts["tried"] += 1
            counts[outcome] += 1
    print(f"\nbit flips ({size} journal, {damaged} copy, mirror): {dict(counts)}, acknowledged lost: 0")


def test_bit_flip_in_a_header_copy_is_rewritten_from_the_record(small: Pristine, tmp_path: Path) -> None:
    rng = random.Random(SEED + 2)
    counts: Counter[str] = Counter()
    original = (small.directory / HEADERS_FILE).read_bytes()
    for span in small.spans:
        directory, _ = _copy(small, tmp_path / "case")
        offset, bit = (span.op - 1) * HEADER_SIZE + rng.randrange(HEADER_SIZE), rng.randrange(8)
        _flip(directory / HEADERS_FILE, offset, bit)
        outcome = _open_and_judge(directory, None, small.acknowledged)
        assert outcome == "recovered", f"seed {SEED}: slot of op {span.op} byte {offset} bit {bit}"
        assert (directory / HEADERS_FILE).read_bytes() == original
        counts["tried"] += 1
        counts[outcome] += 1
    print(f"\nbit flips in header copies (no mirror): {dict(counts)}, acknowledged lost: 0")


# ------------------------------------------------------------------------------------------------
# Torn writes: only a write that cannot have been acknowledged is truncated.


@dataclass(frozen=True, slots=True)
class Extension:
    """One more record, as an append would write it, and the state once it is acknowledged."""

    record: bytes
    slot: bytes
    acknowledged: Acknowledged


def _base(root: Path) -> tuple[Path, Acknowledged]:
    """A small journal ending with pending transfers (so a pulse can expire them)."""
    directory = root / "base"
    acknowledged = write_workload(directory, records=4, transfers_per_batch=8, seed=SEED)
    clock = Clock()
    clock.now_ns += 10 * NANOSECONDS_PER_SECOND
    ledger = EmbeddedLedger.open(directory, clock)
    try:
        ids = [a.id for a in acknowledged.accounts]
        pending = [
            Transfer(
                id=10**9 + i,
                debit_account_id=ids[0],
                credit_account_id=ids[1],
                amount=5,
                ledger=LEDGER,
                code=CODE,
                flags=TransferFlags.PENDING,
                timeout=1,
            )
            for i in range(3)
        ]
        assert all(r.status == CreateTransferStatus.CREATED for r in ledger.create_transfers(pending))
        return directory, _snapshot(ledger, acknowledged, pending)
    finally:
        ledger.close()


def _snapshot(ledger: EmbeddedLedger, before: Acknowledged, transfers: list[Transfer]) -> Acknowledged:
    accounts = ledger.lookup_accounts([a.id for a in before.accounts] + [10**9 + 7])
    acknowledged = Acknowledged(accounts, before.transfers + ledger.lookup_transfers([t.id for t in transfers]))
    acknowledged.transactions = transactions_of(ledger)
    return acknowledged


def _extend(base: Path, acknowledged: Acknowledged, operation: Operation, root: Path) -> Extension:
    directory = root / f"extend-{operation.name}"
    shutil.copytree(base, directory)
    clock = Clock()
    clock.now_ns += 20 * NANOSECONDS_PER_SECOND  # Past every pending transfer's timeout.
    ledger = EmbeddedLedger.open(directory, clock)
    try:
        ids = [a.id for a in acknowledged.accounts]
        transfers: list[Transfer] = []
        if operation == Operation.CREATE_ACCOUNTS:
            ledger.create_accounts([Account(id=10**9 + 7, ledger=LEDGER, code=CODE)])
        elif operation == Operation.METADATA:
            ledger.record_metadata(
                [TransactionIntent(7 << 100, bytes(16), "client", "key-m", "{}", 1, 0, (5 * 10**9,))]
            )
        elif operation in BATCH_OPERATIONS:
            ledger.pulse()  # Its own append first: the record under test is the batch alone.
            transfers = [
                Transfer(
                    id=2 * 10**9 + i,
                    debit_account_id=ids[2],
                    credit_account_id=ids[3],
                    amount=7,
                    ledger=LEDGER,
                    code=CODE,
                )
                for i in range(8)
            ]
            intents = [
                TransactionIntent(t.id << 8, bytes(16), "client", f"key-{t.id}", '{"x":1}', 1, index)
                for index, t in enumerate(transfers)
            ]
            ledger.create_transfers(transfers, intents if operation == Operation.CREATE_TRANSACTIONS else ())
        else:
            assert ledger.pulse() == 3
        after = _snapshot(ledger, acknowledged, transfers)
    finally:
        ledger.close()
    journal = (directory / JOURNAL_FILE).read_bytes()
    headers = (directory / HEADERS_FILE).read_bytes()
    last = check(directory).records[-1].header
    assert last.operation == operation
    if operation in BATCH_OPERATIONS:  # The pulse's append becomes part of the base.
        rebased = root / "base-with-pulse"
        shutil.copytree(directory, rebased)
        _write(rebased, journal[: last.offset], headers[:-HEADER_SIZE])
    return Extension(journal[last.offset :], headers[-HEADER_SIZE:], after)


def _write(directory: Path, journal: bytes, headers: bytes) -> None:
    (directory / JOURNAL_FILE).write_bytes(journal)
    (directory / HEADERS_FILE).write_bytes(headers)


@pytest.mark.parametrize("operation", list(Operation))
def test_torn_last_record_of_every_length_keeps_every_acknowledged_record(operation: Operation, tmp_path: Path) -> None:
    base, acknowledged = _base(tmp_path)
    extension = _extend(base, acknowledged, operation, tmp_path)
    if operation in BATCH_OPERATIONS:
        base = tmp_path / "base-with-pulse"
        ledger = EmbeddedLedger.open(base)
        try:
            acknowledged = _snapshot(ledger, acknowledged, [])
        finally:
            ledger.close()
    journal, headers = (base / JOURNAL_FILE).read_bytes(), (base / HEADERS_FILE).read_bytes()
    case = tmp_path / "case"
    shutil.copytree(base, case)
    counts: Counter[str] = Counter()
    # A crash mid-record: the header copy is only written after the record's fdatasync, so it is absent.
    for length in range(len(extension.record) + 1):
        _write(case, journal + extension.record[:length], headers)
        complete = length == len(extension.record)
        outcome = _open_and_judge(case, None, extension.acknowledged if complete else acknowledged)
        assert outcome == "recovered", f"{operation.name} torn at {length} of {len(extension.record)} bytes"
        expected_size = len(journal) + (length if complete else 0)
        assert (case / JOURNAL_FILE).stat().st_size == expected_size
        counts["tried"] += 1
        counts[outcome] += 1
    # A crash while writing the header copy: the record is complete and durable, so it stays.
    for length in range(HEADER_SIZE):
        _write(case, journal + extension.record, headers + extension.slot[:length])
        outcome = _open_and_judge(case, None, extension.acknowledged)
        assert outcome == "recovered", f"{operation.name} header copy torn at {length}"
        assert (case / HEADERS_FILE).read_bytes() == headers + extension.slot
        counts["tried"] += 1
        counts[outcome] += 1
    print(f"\ntorn tails ({operation.name}, {len(extension.record)} bytes): {dict(counts)}, acknowledged lost: 0")


def test_garbage_after_the_end_is_truncated(small: Pristine, tmp_path: Path) -> None:
    rng = random.Random(SEED + 3)
    original_journal = (small.directory / JOURNAL_FILE).read_bytes()
    original_headers = (small.directory / HEADERS_FILE).read_bytes()
    for name in (JOURNAL_FILE, HEADERS_FILE):
        for _ in range(4):
            directory, _ = _copy(small, tmp_path / "case")
            with open(directory / name, "ab") as file:
                file.write(rng.randbytes(rng.randrange(1, 3 * 6528)))
            assert _open_and_judge(directory, None, small.acknowledged) == "recovered"
            assert (directory / JOURNAL_FILE).read_bytes() == original_journal
            assert (directory / HEADERS_FILE).read_bytes() == original_headers


def test_lost_acknowledged_records_refuse(small: Pristine, tmp_path: Path) -> None:
    """A journal cut short (or a lost last record) while its header copies remain: refused, not shortened."""
    directory, _ = _copy(small, tmp_path / "case")
    last = small.spans[-1]
    os.truncate(directory / JOURNAL_FILE, last.offset)
    with pytest.raises(JournalCorruptError, match=rf"op {last.op} at byte {last.offset}: the journal ends here"):
        EmbeddedLedger.open(directory)


def test_lost_headers_file_refuses_and_doctor_rebuilds_it(small: Pristine, tmp_path: Path) -> None:
    from facade.engine.journal_check import doctor

    directory, _ = _copy(small, tmp_path / "case")
    (directory / HEADERS_FILE).unlink()
    with pytest.raises(JournalCorruptError, match="headers file missing"):
        EmbeddedLedger.open(directory)
    code, report = doctor(directory, repair=True)
    assert code == 0, report
    assert _open_and_judge(directory, None, small.acknowledged) == "recovered"


def test_mirror_restores_a_lost_journal_and_fills_a_new_mirror(small: Pristine, tmp_path: Path) -> None:
    directory, mirror = _copy(small, tmp_path / "case")
    original = (directory / JOURNAL_FILE).read_bytes()
    (directory / JOURNAL_FILE).unlink()
    (directory / HEADERS_FILE).unlink()
    assert _open_and_judge(directory, mirror, small.acknowledged) == "recovered"
    assert (directory / JOURNAL_FILE).read_bytes() == original
    fresh = tmp_path / "fresh-mirror"
    assert _open_and_judge(directory, fresh, small.acknowledged) == "recovered"
    assert (fresh / JOURNAL_FILE).read_bytes() == original
    assert check(directory, fresh).healthy


def test_mirror_of_another_ledger_refuses(small: Pristine, tmp_path: Path) -> None:
    directory, _ = _copy(small, tmp_path / "case")
    other = tmp_path / "other"
    write_workload(other, records=3, transfers_per_batch=5, seed=SEED + 4)
    with pytest.raises(JournalCorruptError, match="copies differ"):
        EmbeddedLedger.open(directory, mirror=other)


def test_format_v1_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    # A v1 journal starts with a 32-byte checksum pair, then magic "LGJ1" and version 1.
    (tmp_path / JOURNAL_FILE).write_bytes(bytes(32) + (0x4C474A31).to_bytes(4, "little") + bytes(44))
    with pytest.raises(JournalFormatError, match="format v1 journal"):
        EmbeddedLedger.open(tmp_path)


def test_torn_two_record_append_keeps_whole_records_only(tmp_path: Path) -> None:
    """A pulse and a batch written in one append, torn at every length: each record is kept whole or
    dropped whole, and the acknowledged base is always there."""
    base, acknowledged = _base(tmp_path)
    extended = tmp_path / "extended"
    shutil.copytree(base, extended)
    clock = Clock()
    clock.now_ns += 20 * NANOSECONDS_PER_SECOND  # The pending transfers expire inside the next append.
    ledger = EmbeddedLedger.open(extended, clock)
    try:
        ids = [a.id for a in acknowledged.accounts]
        batch = [
            Transfer(
                id=3 * 10**9 + i, debit_account_id=ids[4], credit_account_id=ids[5], amount=3, ledger=LEDGER, code=CODE
            )
            for i in range(4)
        ]
        ledger.create_transfers(batch)
        after_both = _snapshot(ledger, acknowledged, batch)
    finally:
        ledger.close()
    records = check(extended).records
    pulse, last = records[-2].header, records[-1].header
    assert (pulse.operation, last.operation) == (Operation.PULSE, Operation.CREATE_TRANSFERS)
    journal = (extended / JOURNAL_FILE).read_bytes()
    headers = (base / HEADERS_FILE).read_bytes()
    case = tmp_path / "case"
    shutil.copytree(base, case)
    _write(case, journal[: pulse.offset + pulse.record_size], headers)
    ledger = EmbeddedLedger.open(case)
    try:
        after_pulse = _snapshot(ledger, acknowledged, [])
    finally:
        ledger.close()
    for length in range(len(journal) - pulse.offset + 1):
        _write(case, journal[: pulse.offset + length], headers)
        if length < pulse.record_size:
            truth = acknowledged
        elif length < pulse.record_size + last.record_size:
            truth = after_pulse
        else:
            truth = after_both
        assert _open_and_judge(case, None, truth) == "recovered", f"torn at {length}"
    print(f"\ntorn two-record append (pulse + batch): {len(journal) - pulse.offset + 1} lengths recovered, lost: 0")


def test_bit_flips_at_uniform_random_offsets_anywhere(small: Pristine, tmp_path: Path) -> None:
    """Offsets drawn over the whole of either file, with and without a mirror."""
    rng = random.Random(SEED + 5)
    counts: Counter[str] = Counter()
    journal_size = (small.directory / JOURNAL_FILE).stat().st_size
    headers_size = (small.directory / HEADERS_FILE).stat().st_size
    for case in range(UNIFORM_CASES):
        name = JOURNAL_FILE if rng.random() < 0.8 else HEADERS_FILE
        offset = rng.randrange(journal_size if name == JOURNAL_FILE else headers_size)
        with_mirror = case % 4 == 0
        directory, mirror = _copy(small, tmp_path / "case")
        _flip(directory / name, offset, rng.randrange(8))
        outcome = _open_and_judge(directory, mirror if with_mirror else None, small.acknowledged)
        if name == JOURNAL_FILE:
            op = next(s.op for s in small.spans if s.offset <= offset < s.offset + s.size)
        else:
            op = offset // HEADER_SIZE + 1
        where = f"seed {SEED}: {name} byte {offset} (op {op}), mirror={with_mirror}"
        expected = "refused" if name == JOURNAL_FILE and not with_mirror else "recovered"
        assert outcome == expected, where
        counts["tried"] += 1
        counts[outcome] += 1
    print(f"\nbit flips at uniform offsets: {dict(counts)}, acknowledged lost: 0")
