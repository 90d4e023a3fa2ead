#!/usr/bin/env python3
"""Benchmark statement matching (projections.statements.match) on generated statements: the rules are
pure Python over one account's entries, so their cost grows with the statement, and the bounded
searches (day-indexed windows, SUBSET_CANDIDATES_MAX, two-pointer pair/triple search) keep it linear.

Two shapes per size: "clean" (90% of entries on the statement, a third of them by reference, the
rest by amount + date up to a day late) and "dirty" (half the lines a few cents off, so they fall
through to the one-to-many / many-to-one search and end unmatched: the worst case).

    python scripts/bench_statement_match.py [--entries 20000] [--seed 1]
"""

from __future__ import annotations

import argparse
import datetime
import random
import time

from projections.statements import Direction, LedgerEntry, MatchOptions, ResultKind, StatementLine, match

PERIOD_DAYS = 30
NANOSECONDS_PER_DAY = 86_400 * 1_000_000_000
ENTRIES_MAX = 200_000


def generate(entries_count: int, *, dirty: bool, seed: int) -> tuple[list[StatementLine], list[LedgerEntry]]:
    assert 0 < entries_count <= ENTRIES_MAX
    rng = random.Random(seed)
    start = (datetime.date(2026, 1, 1) - datetime.date(1970, 1, 1)).days * NANOSECONDS_PER_DAY
    entries: list[LedgerEntry] = []
    lines: list[StatementLine] = []
    for i in range(entries_count):
        timestamp = start + i * PERIOD_DAYS * NANOSECONDS_PER_DAY // entries_count
        amount = rng.choice([1_000, 2_500, 999, rng.randint(1, 1_000_000)]) * rng.choice([1, -1])
        reference = f"ref-{i}" if i % 3 == 0 else ""
        entry = LedgerEntry(f"e{i}", timestamp, amount, i + 1, reference, "", "", "")
        entries.append(entry)
        if i % 10 == 0:
            continue  # on the ledger only
        off = 7 if dirty and i % 2 else 0
        lines.append(
            StatementLine(
                line_number=len(lines) + 1,
                booking_date=entry.date + datetime.timedelta(days=rng.choice([0, 0, 1])),
                value_date=None,
                amount=abs(amount) + off,
                direction=Direction.CREDIT if amount > 0 else Direction.DEBIT,
                currency="USD",
                reference=reference if not off else "",
                end_to_end_id="",
                description="",
            )
        )
    return lines, entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=20_000, help=f"ledger entries (1..{ENTRIES_MAX})")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for dirty in (False, True):
        lines, entries = generate(args.entries, dirty=dirty, seed=args.seed)
        began = time.perf_counter()
        results = match(lines, entries, MatchOptions(date_window_days=3, tolerance=0))
        seconds = time.perf_counter() - began
        counts = {kind.value: sum(1 for r in results if r.kind is kind) for kind in ResultKind}
        print(
            f"{'dirty' if dirty else 'clean'}: {len(lines)} lines x {len(entries)} entries in {seconds:.2f} s "
            f"({seconds / max(len(lines), 1) * 1e6:.0f} µs/line) {counts}"
        )


if __name__ == "__main__":
    main()
