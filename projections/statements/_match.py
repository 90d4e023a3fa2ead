"""Matching a statement against one account's ledger entries. Pure: no I/O, deterministic.

The rules, applied in this order; each statement line and each ledger entry is used at most once:

1. Exact reference. A line whose reference or EndToEndId equals an entry's correlation id or
   idempotency key, in the same direction: the candidate with the same amount (nearest date first)
   is matched. When no candidate has the same amount and exactly one candidate exists, it is matched
   with an amount discrepancy (the bank and the ledger disagree on the money of one payment).
   A batch booking (camt.053: several TxDtls, each with its EndToEndId) is settled ONE_TO_MANY when
   every EndToEndId finds its own entry and the sums differ by at most `tolerance` (and never by
   one reference alone: the first EndToEndId names one of its payments, not the line).
2. Reversals. Two unmatched lines with the same amount in opposite directions that share a
   reference, or whose later line the bank marked as a reversal (camt.053 RvslInd), cancel out:
   REVERSAL, no ledger entry expected. (A reversal whose original matched a ledger entry stays
   unmatched: the ledger has not reversed what the bank did.)
3. Amount + date window. Same signed amount, dates at most `date_window_days` apart; the nearest
   date wins, then the earliest entry.
4. Duplicates. A line still unmatched that repeats an earlier line (same non-empty reference,
   direction, amount and booking date) is a DUPLICATE: the bank sent it twice. Only after rules 1
   and 3, because a reference column is not always unique (two equal card payments on one day both
   say "POS"): a repeat the ledger can explain is a payment, not a duplicate.
5. One-to-many (one line settles 2..`SUBSET_SIZE_MAX` entries: a bank batch) and many-to-one
   (2..`SUBSET_SIZE_MAX` lines settle one entry: a payment split by the bank), same direction, all
   within the date window of the single side, the sums differing by at most `tolerance` minor units.
   Candidates are the `SUBSET_CANDIDATES_MAX` nearest in date (of at most `WINDOW_SCAN_MAX` looked
   at), so the search stays bounded whatever the statement's size.
6. Ledger reversals: two entries left over that share a correlation id or idempotency key with
   opposite amounts (posted and refunded before the bank saw either) are one REVERSAL result.
7. What is left: UNMATCHED_STATEMENT lines and UNMATCHED_LEDGER entries.

Discrepancies on a match: `amount_difference` = statement sum - ledger sum (non-zero only under rules
1 and 5), `date_difference_days` = the largest distance between a line's booking date and an entry's
UTC date (a match can be late by up to the window; rule 1 has no window, so a large value there is
a date discrepancy worth a look).

Direction: a statement CREDIT (money in) matches an entry that credits the ledger account (positive
`signed_amount`, the credit-normal view); `inverted=True` flips this for a ledger account that
mirrors the bank account from the other side (an asset account: money in is a debit).
"""

from __future__ import annotations

import bisect
import collections
import datetime
import enum
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from projections.statements._lines import StatementLine

__all__ = [
    "DATE_WINDOW_DAYS_MAX",
    "SUBSET_CANDIDATES_MAX",
    "SUBSET_SIZE_MAX",
    "LedgerEntry",
    "MatchOptions",
    "MatchResult",
    "MatchRule",
    "ResultKind",
    "match",
]

SUBSET_SIZE_MAX = 3
"""Most entries (or lines) one line (or entry) is matched with under rule 5."""
SUBSET_CANDIDATES_MAX = 24
"""Candidates per anchor under rule 5: C(24, 3) = 2024 subsets of three at most."""
WINDOW_SCAN_MAX = 2_000
"""Most entries (or lines) looked at in one anchor's date window under rules 3 to 6."""
BATCH_REFERENCES_MAX = 1_000
"""Most payments of one batch booking settled by reference (camt.053 TxDtls read per entry)."""
"""Most entries (or lines) looked at in one anchor's date window under rules 3 to 6."""
DATE_WINDOW_DAYS_MAX = 366
_EPOCH = datetime.date(1970, 1, 1)
_NANOSECONDS_PER_DAY = 86_400 * 1_000_000_000
TOLERANCE_MAX = 10**18


class ResultKind(enum.Enum):
    MATCHED = "MATCHED"
    UNMATCHED_STATEMENT = "UNMATCHED_STATEMENT"
    UNMATCHED_LEDGER = "UNMATCHED_LEDGER"
    DUPLICATE = "DUPLICATE"
    REVERSAL = "REVERSAL"


class MatchRule(enum.Enum):
    REFERENCE = "REFERENCE"
    AMOUNT_DATE = "AMOUNT_DATE"
    ONE_TO_MANY = "ONE_TO_MANY"
    MANY_TO_ONE = "MANY_TO_ONE"
    NONE = "NONE"


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One posted entry of the account (reservations and releases move no posted money: excluded)."""

    event_id: str
    engine_timestamp: int
    signed_amount: int
    """+amount for a credit to the account, -amount for a debit (entries.signed_amount)."""
    transfer_id: int
    correlation_id: str
    idempotency_key: str
    transaction_id: str
    description: str

    def __post_init__(self) -> None:
        assert self.signed_amount != 0, "only posted entries are reconciled"

    @property
    def date(self) -> datetime.date:
        """The UTC date of the engine timestamp, in integers (a float loses the nanoseconds that can
        put an entry on the wrong side of midnight)."""
        return _EPOCH + datetime.timedelta(days=self.engine_timestamp // _NANOSECONDS_PER_DAY)

    @property
    def references(self) -> frozenset[str]:
        return frozenset(r for r in (self.correlation_id, self.idempotency_key) if r)


@dataclass(frozen=True, slots=True)
class MatchOptions:
    date_window_days: int = 3
    tolerance: int = 0
    """Minor units by which the sums of a rule-5 match may differ."""
    inverted: bool = False

    def __post_init__(self) -> None:
        assert 0 <= self.date_window_days <= DATE_WINDOW_DAYS_MAX
        assert 0 <= self.tolerance <= TOLERANCE_MAX


@dataclass(frozen=True, slots=True)
class MatchResult:
    kind: ResultKind
    rule: MatchRule
    line_numbers: tuple[int, ...]
    event_ids: tuple[str, ...]
    transfer_ids: tuple[int, ...]
    statement_amount: int
    """Signed sum of the lines, in the ledger's direction (credit to the account positive)."""
    ledger_amount: int
    """Signed sum of the entries."""
    date_difference_days: int
    reference: str
    note: str = ""

    @property
    def amount_difference(self) -> int:
        if self.kind is not ResultKind.MATCHED:
            return 0
        return self.statement_amount - self.ledger_amount


class _State:
    """The matching in progress: what is still free on each side."""

    def __init__(self, lines: Sequence[StatementLine], entries: Sequence[LedgerEntry], options: MatchOptions) -> None:
        self.lines = sorted(lines, key=lambda line: line.line_number)
        self.entries = sorted(entries, key=lambda entry: entry.engine_timestamp)
        self.options = options
        self.free_lines: dict[int, StatementLine] = {line.line_number: line for line in self.lines}
        self.free_entries: dict[str, LedgerEntry] = {entry.event_id: entry for entry in self.entries}
        self.results: list[MatchResult] = []
        # Day indexes (proleptic ordinals), so every window search looks at its own days only.
        self.entries_by_day: dict[int, list[LedgerEntry]] = {}
        for entry in self.entries:
            self.entries_by_day.setdefault(entry.date.toordinal(), []).append(entry)
        self.lines_by_day: dict[int, list[StatementLine]] = {}
        for line in self.lines:
            self.lines_by_day.setdefault(line.booking_date.toordinal(), []).append(line)

    def days_nearest_first(self, day: datetime.date) -> list[int]:
        """The window's days around `day`: the day itself, then one before, one after, ..."""
        center = day.toordinal()
        days = [center]
        for offset in range(1, self.options.date_window_days + 1):
            days.extend((center - offset, center + offset))
        return days

    def free_entries_near(self, line: StatementLine, amount: int) -> list[LedgerEntry]:
        """Up to SUBSET_CANDIDATES_MAX free entries in the line's window with the sign of `amount`,
        nearest day first, looking at no more than WINDOW_SCAN_MAX entries."""
        found: list[LedgerEntry] = []
        scanned = 0
        for day in self.days_nearest_first(line.booking_date):
            for entry in self.entries_by_day.get(day, ()):
                scanned += 1
                if scanned > WINDOW_SCAN_MAX or len(found) == SUBSET_CANDIDATES_MAX:
                    return found
                if entry.event_id in self.free_entries and (entry.signed_amount > 0) == (amount > 0):
                    found.append(entry)
        assert len(found) <= SUBSET_CANDIDATES_MAX
        return found

    def free_lines_near(self, entry: LedgerEntry) -> list[StatementLine]:
        """As free_entries_near, for the lines around an entry."""
        found: list[StatementLine] = []
        scanned = 0
        for day in self.days_nearest_first(entry.date):
            for line in self.lines_by_day.get(day, ()):
                scanned += 1
                if scanned > WINDOW_SCAN_MAX or len(found) == SUBSET_CANDIDATES_MAX:
                    return found
                if line.line_number in self.free_lines and (self.amount(line) > 0) == (entry.signed_amount > 0):
                    found.append(line)
        assert len(found) <= SUBSET_CANDIDATES_MAX
        return found

    def amount(self, line: StatementLine) -> int:
        """The line's signed amount in the ledger account's direction."""
        return -line.signed_amount if self.options.inverted else line.signed_amount

    def take(
        self, rule: MatchRule, lines: Sequence[StatementLine], entries: Sequence[LedgerEntry], note: str = ""
    ) -> None:
        assert lines and entries
        for line in lines:
            assert self.free_lines.pop(line.line_number) is line
        for entry in entries:
            assert self.free_entries.pop(entry.event_id) is entry
        days = max(abs((line.booking_date - entry.date).days) for line in lines for entry in entries)
        self.results.append(
            MatchResult(
                kind=ResultKind.MATCHED,
                rule=rule,
                line_numbers=tuple(line.line_number for line in lines),
                event_ids=tuple(entry.event_id for entry in entries),
                transfer_ids=tuple(entry.transfer_id for entry in entries),
                statement_amount=sum(self.amount(line) for line in lines),
                ledger_amount=sum(entry.signed_amount for entry in entries),
                date_difference_days=days,
                reference=next((r for line in lines for r in line.references), ""),
                note=note,
            )
        )

    def set_aside(self, kind: ResultKind, lines: Sequence[StatementLine], note: str) -> None:
        for line in lines:
            assert self.free_lines.pop(line.line_number) is line
        self.results.append(
            MatchResult(
                kind=kind,
                rule=MatchRule.NONE,
                line_numbers=tuple(line.line_number for line in lines),
                event_ids=(),
                transfer_ids=(),
                statement_amount=sum(self.amount(line) for line in lines),
                ledger_amount=0,
                date_difference_days=0,
                reference=next((r for line in lines for r in line.references), ""),
                note=note,
            )
        )


def _nearest(line: StatementLine, entries: Sequence[LedgerEntry]) -> list[LedgerEntry]:
    return sorted(entries, key=lambda e: (abs((line.booking_date - e.date).days), e.engine_timestamp))


def _by_reference(state: _State) -> None:
    index: dict[str, list[LedgerEntry]] = {}
    for entry in state.entries:
        for reference in entry.references:
            index.setdefault(reference, []).append(entry)
    for line in state.lines:
        amount = state.amount(line)
        if line.batch_references:
            # A batch's first EndToEndId names one of its payments, not the line: no single match.
            _by_batch_references(state, line, index)
            continue
        # A correlation id shared by many transactions: only the first WINDOW_SCAN_MAX are looked at.
        shared = itertools.chain.from_iterable(index.get(reference, ()) for reference in line.references)
        candidates = {
            entry.event_id: entry
            for entry in itertools.islice(shared, WINDOW_SCAN_MAX)
            if entry.event_id in state.free_entries and (entry.signed_amount > 0) == (amount > 0)
        }
        if not candidates:
            continue
        exact = [entry for entry in candidates.values() if entry.signed_amount == amount]
        if exact:
            state.take(MatchRule.REFERENCE, [line], [_nearest(line, exact)[0]])
        elif len(candidates) == 1:
            state.take(MatchRule.REFERENCE, [line], list(candidates.values()), note="amount differs")


def _by_batch_references(state: _State, line: StatementLine, index: dict[str, list[LedgerEntry]]) -> bool:
    """A batch booking settled by one free entry per payment reference, the sums within the
    tolerance: ONE_TO_MANY by reference. False (nothing taken) unless every reference is found."""
    if len(line.batch_references) > BATCH_REFERENCES_MAX:
        return False
    amount = state.amount(line)
    chosen: dict[str, LedgerEntry] = {}
    for reference in line.batch_references:
        candidates = [
            entry
            for entry in itertools.islice(index.get(reference, ()), WINDOW_SCAN_MAX)
            if entry.event_id in state.free_entries
            and entry.event_id not in chosen
            and (entry.signed_amount > 0) == (amount > 0)
        ]
        if not candidates:
            return False
        entry = _nearest(line, candidates)[0]
        chosen[entry.event_id] = entry
    assert len(chosen) == len(line.batch_references)
    if abs(sum(entry.signed_amount for entry in chosen.values()) - amount) > state.options.tolerance:
        return False
    state.take(MatchRule.ONE_TO_MANY, [line], list(chosen.values()), note="batch: one entry per EndToEndId")
    return True


def _duplicates(state: _State) -> None:
    seen: dict[tuple[str, int, datetime.date], int] = {}
    for line in state.lines:
        if not line.reference:
            continue
        key = (line.reference, line.signed_amount, line.booking_date)
        first = seen.setdefault(key, line.line_number)
        if first != line.line_number and line.line_number in state.free_lines:
            state.set_aside(ResultKind.DUPLICATE, [line], note=f"repeats line {first}")


def _reversals(state: _State) -> None:
    # Lines by (reference, signed amount) and by signed amount, each list in line order.
    by_reference: dict[tuple[str, int], list[StatementLine]] = {}
    by_amount: dict[int, list[StatementLine]] = {}
    for line in state.lines:
        for reference in set(line.references):
            by_reference.setdefault((reference, line.signed_amount), []).append(line)
        by_amount.setdefault(line.signed_amount, []).append(line)
    for reversal in state.lines:
        if reversal.line_number not in state.free_lines:
            continue
        # The latest earlier free line it can reverse: same amount, opposite direction, and a
        # reference in common, or (the bank's reversal flag set) no reference at all to compare.
        pools = [by_reference.get((reference, -reversal.signed_amount), []) for reference in set(reversal.references)]
        if reversal.reversal:
            pools.append(by_amount.get(-reversal.signed_amount, []))
        original: StatementLine | None = None
        for pool in pools:
            end = bisect.bisect_left(pool, reversal.line_number, key=lambda line: line.line_number)
            for candidate in itertools.islice(reversed(pool[max(0, end - WINDOW_SCAN_MAX) : end]), WINDOW_SCAN_MAX):
                if candidate.line_number in state.free_lines:
                    if original is None or candidate.line_number > original.line_number:
                        original = candidate
                    break
        if original is not None:
            note = f"line {reversal.line_number} reverses line {original.line_number}"
            state.set_aside(ResultKind.REVERSAL, [original, reversal], note=note)


def _ledger_reversals(state: _State) -> None:
    """Two unmatched entries sharing a reference with opposite amounts (a payment and its refund,
    both in the ledger and neither on the statement) net to nothing the bank could show."""
    earlier: dict[tuple[str, int], list[LedgerEntry]] = {}
    for reversal in state.entries:
        if reversal.event_id not in state.free_entries:
            continue
        paired = False
        for reference in sorted(reversal.references):
            candidates = earlier.get((reference, -reversal.signed_amount), [])
            original = next((e for e in reversed(candidates) if e.event_id in state.free_entries), None)
            if original is None:
                continue
            for entry in (original, reversal):
                assert state.free_entries.pop(entry.event_id) is entry
            state.results.append(
                MatchResult(
                    kind=ResultKind.REVERSAL,
                    rule=MatchRule.NONE,
                    line_numbers=(),
                    event_ids=(original.event_id, reversal.event_id),
                    transfer_ids=(original.transfer_id, reversal.transfer_id),
                    statement_amount=0,
                    ledger_amount=0,
                    date_difference_days=0,
                    reference=reference,
                    note=f"ledger entry {reversal.transfer_id} reverses {original.transfer_id}",
                )
            )
            paired = True
            break
        if not paired:
            for reference in reversal.references:
                earlier.setdefault((reference, reversal.signed_amount), []).append(reversal)


def _by_amount_and_date(state: _State) -> None:
    # Queues in timestamp order whose heads are dropped once taken: the first free entry is at the
    # head, so a day of many equal payments costs each entry one look, not one per line.
    by_amount_day: dict[tuple[int, int], collections.deque[LedgerEntry]] = {}
    for entry in state.entries:
        by_amount_day.setdefault((entry.signed_amount, entry.date.toordinal()), collections.deque()).append(entry)
    for line in sorted(state.lines, key=lambda line: (line.booking_date, line.line_number)):
        if line.line_number not in state.free_lines:
            continue
        amount = state.amount(line)
        for day in state.days_nearest_first(line.booking_date):
            queue = by_amount_day.get((amount, day))
            while queue and queue[0].event_id not in state.free_entries:
                queue.popleft()
            if queue:
                state.take(MatchRule.AMOUNT_DATE, [line], [queue[0]])
                break


def _closest_pair(values: Sequence[int], start: int, target: int) -> tuple[int, int, int] | None:
    """(|sum - target|, i, j) for the pair i < j in values[start:] (sorted) whose sum is closest to
    `target`: two pointers, linear."""
    best: tuple[int, int, int] | None = None
    low, high = start, len(values) - 1
    while low < high:
        total = values[low] + values[high]
        difference = abs(total - target)
        if best is None or difference < best[0]:
            best = (difference, low, high)
        if total == target:
            break
        if total < target:
            low += 1
        else:
            high -= 1
    return best


def _subset(amounts: Sequence[int], target: int, tolerance: int) -> tuple[int, ...] | None:
    """Indexes of 2..SUBSET_SIZE_MAX (= 3) amounts whose sum is within `tolerance` of `target`: the
    closest sum, fewer parts on a tie. Sorted two-pointer search: O(n^2) for triples, not O(n^3)."""
    assert SUBSET_SIZE_MAX == 3, "the search below looks for pairs and triples"
    order = sorted(range(len(amounts)), key=lambda i: amounts[i])
    values = [amounts[i] for i in order]
    best: tuple[int, tuple[int, ...]] | None = None
    pair = _closest_pair(values, 0, target)
    if pair is not None:
        best = (pair[0], (pair[1], pair[2]))
    for first in range(len(values) - 2):
        if best is not None and best[0] == 0:
            break
        rest = _closest_pair(values, first + 1, target - values[first])
        if rest is not None and (best is None or rest[0] < best[0]):
            best = (rest[0], (first, rest[1], rest[2]))
    if best is None or best[0] > tolerance:
        return None
    chosen = tuple(sorted(order[i] for i in best[1]))
    assert abs(sum(amounts[i] for i in chosen) - target) <= tolerance
    return chosen


def _groups(state: _State) -> None:
    tolerance = state.options.tolerance
    for line in sorted(state.lines, key=lambda line: (line.booking_date, line.line_number)):
        if line.line_number not in state.free_lines:
            continue
        amount = state.amount(line)
        candidates = state.free_entries_near(line, amount)
        chosen = _subset([e.signed_amount for e in candidates], amount, tolerance)
        if chosen is not None:
            state.take(MatchRule.ONE_TO_MANY, [line], [candidates[i] for i in chosen])
    for entry in state.entries:
        if entry.event_id not in state.free_entries:
            continue
        lines = state.free_lines_near(entry)
        chosen = _subset([state.amount(line) for line in lines], entry.signed_amount, tolerance)
        if chosen is not None:
            parts = sorted((lines[i] for i in chosen), key=lambda chosen_line: chosen_line.line_number)
            state.take(MatchRule.MANY_TO_ONE, parts, [entry])


def match(lines: Sequence[StatementLine], entries: Sequence[LedgerEntry], options: MatchOptions) -> list[MatchResult]:
    """Every line and every entry in exactly one result: matches first (statement order), then
    duplicates and reversals, then what is unmatched on each side."""
    assert len({line.line_number for line in lines}) == len(lines), "line numbers are unique"
    assert len({entry.event_id for entry in entries}) == len(entries), "event ids are unique"
    state = _State(lines, entries, options)
    _by_reference(state)
    _reversals(state)
    _by_amount_and_date(state)
    _duplicates(state)
    _groups(state)
    _ledger_reversals(state)
    for line in list(state.free_lines.values()):
        state.set_aside(ResultKind.UNMATCHED_STATEMENT, [line], note="")
    for entry in list(state.free_entries.values()):
        state.free_entries.pop(entry.event_id)
        state.results.append(
            MatchResult(
                kind=ResultKind.UNMATCHED_LEDGER,
                rule=MatchRule.NONE,
                line_numbers=(),
                event_ids=(entry.event_id,),
                transfer_ids=(entry.transfer_id,),
                statement_amount=0,
                ledger_amount=entry.signed_amount,
                date_difference_days=0,
                reference=entry.correlation_id or entry.idempotency_key,
            )
        )
    assert not state.free_lines and not state.free_entries
    assert sum(len(r.line_numbers) for r in state.results) == len(lines)
    assert sum(len(r.event_ids) for r in state.results) == len(entries)
    return sorted(state.results, key=_order)


def _order(result: MatchResult) -> tuple[int, int, str]:
    first_line = result.line_numbers[0] if result.line_numbers else 1 << 62
    return (first_line, 0 if result.line_numbers else 1, result.event_ids[0] if result.event_ids else "")
