"""The read-model side of statement reconciliation: the account's posted entries in, runs and results
out (tables `reconciliation_runs` and `reconciliation_results`, projections.schema). Every value
reaches SQL as a bound parameter or as TabSeparated data escaped here; never as SQL text."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from projections.client import ClickHouseClient, escaped_text
from projections.queries import to_int, to_str
from projections.schema import RECONCILIATION_RESULTS_COLUMNS, RECONCILIATION_RUNS_COLUMNS
from projections.statements._lines import StatementError
from projections.statements._match import LedgerEntry, MatchResult, MatchRule, ResultKind

__all__ = [
    "LEDGER_ENTRIES_MAX",
    "RunSummary",
    "StoredResult",
    "account_ledger",
    "ledger_entries",
    "load_results",
    "load_run",
    "save_run",
]

LEDGER_ENTRIES_MAX = 200_000
"""Most ledger entries one run compares; a larger period is split into several statements."""
RESULTS_MAX = LEDGER_ENTRIES_MAX + 100_000
"""Results of one run: at most one per entry plus one per statement line."""
NANOSECONDS_PER_DAY = 86_400 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class RunSummary:
    run_id: str
    account_id: int
    created_timestamp: int
    statement_format: str
    statement_sha256: str
    currency: str
    date_from: datetime.date
    date_to: datetime.date
    date_window_days: int
    tolerance: int
    inverted: bool
    statement_lines: int
    ledger_entries: int
    matched: int
    unmatched_statement: int
    unmatched_ledger: int
    duplicates: int
    reversals: int
    amount_discrepancies: int
    date_discrepancies: int


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A result as the read model holds it (what exports read)."""

    run_id: str
    result_index: int
    kind: ResultKind
    rule: MatchRule
    line_numbers: tuple[int, ...]
    event_ids: tuple[str, ...]
    transfer_ids: tuple[int, ...]
    statement_amount: int
    ledger_amount: int
    amount_difference: int
    date_difference_days: int
    reference: str
    note: str


def _day_start_ns(day: datetime.date) -> int:
    return (day - datetime.date(1970, 1, 1)).days * NANOSECONDS_PER_DAY


def account_ledger(client: ClickHouseClient, account_id: int) -> int | None:
    """The account's engine ledger number, or None when the read model has no entry for it."""
    rows = client.query_rows(
        "SELECT ledger FROM entries WHERE account_id = {account:UInt128} LIMIT 1", {"account": account_id}
    )
    return to_int(rows[0][0]) if rows else None


def ledger_entries(
    client: ClickHouseClient, account_id: int, date_from: datetime.date, date_to: datetime.date
) -> list[LedgerEntry]:
    """The account's posted entries with UTC dates in [date_from, date_to]."""
    assert date_from <= date_to
    rows = client.query_rows(
        """SELECT event_id, engine_timestamp, toString(signed_amount), transfer_id, correlation_id,
       idempotency_key, transaction_id, description
FROM entries
WHERE account_id = {account:UInt128}
  AND engine_timestamp >= {from:UInt64} AND engine_timestamp < {to:UInt64}
  AND signed_amount != 0
ORDER BY engine_timestamp, event_id
LIMIT {limit:UInt32}""",
        {
            "account": account_id,
            "from": max(_day_start_ns(date_from), 0),
            "to": max(_day_start_ns(date_to + datetime.timedelta(days=1)), 0),
            "limit": LEDGER_ENTRIES_MAX + 1,
        },
    )
    if len(rows) > LEDGER_ENTRIES_MAX:
        raise StatementError(f"the statement period holds more than {LEDGER_ENTRIES_MAX} ledger entries: split it")
    return [
        LedgerEntry(
            event_id=to_str(row[0]),
            engine_timestamp=to_int(row[1]),
            signed_amount=to_int(row[2]),
            transfer_id=to_int(row[3]),
            correlation_id=to_str(row[4]),
            idempotency_key=to_str(row[5]),
            transaction_id=to_str(row[6]),
            description=to_str(row[7]),
        )
        for row in rows
    ]


def _text(value: str) -> str:
    return escaped_text(value)


def _array_text(values: tuple[str, ...]) -> str:
    # Strings inside an array are quoted; escaped_text escapes the quote, backslash and delimiters.
    return "[" + ",".join(f"'{escaped_text(v)}'" for v in values) + "]"


def _result_row(run_id: str, index: int, result: MatchResult) -> str:
    fields = (
        _text(run_id),
        str(index),
        result.kind.value,
        result.rule.value,
        "[" + ",".join(str(n) for n in result.line_numbers) + "]",
        _array_text(result.event_ids),
        "[" + ",".join(str(t) for t in result.transfer_ids) + "]",
        str(result.statement_amount),
        str(result.ledger_amount),
        str(result.amount_difference),
        str(result.date_difference_days),
        _text(result.reference),
        _text(result.note),
    )
    assert len(fields) == len(RECONCILIATION_RESULTS_COLUMNS)
    return "\t".join(fields) + "\n"


def _run_row(summary: RunSummary) -> str:
    fields = (
        _text(summary.run_id),
        str(summary.account_id),
        str(summary.created_timestamp),
        _text(summary.statement_format),
        summary.statement_sha256,
        _text(summary.currency),
        summary.date_from.isoformat(),
        summary.date_to.isoformat(),
        str(summary.date_window_days),
        str(summary.tolerance),
        "1" if summary.inverted else "0",
        *(
            str(getattr(summary, name))
            for name in (
                "statement_lines",
                "ledger_entries",
                "matched",
                "unmatched_statement",
                "unmatched_ledger",
                "duplicates",
                "reversals",
                "amount_discrepancies",
                "date_discrepancies",
            )
        ),
    )
    assert len(fields) == len(RECONCILIATION_RUNS_COLUMNS)
    return "\t".join(fields) + "\n"


def save_run(client: ClickHouseClient, summary: RunSummary, results: list[MatchResult]) -> bool:
    """Persists a run; idempotent per run id: results first (only the indexes not yet present, so a
    run interrupted half-way is completed, not doubled), the run row last, so a run is visible only
    when complete. False when the run was already stored."""
    assert len(results) <= RESULTS_MAX
    if load_run(client, summary.run_id) is not None:
        return False
    present = {
        to_int(row[0])
        for row in client.query_rows(
            "SELECT result_index FROM reconciliation_results WHERE run_id = {run:String}", {"run": summary.run_id}
        )
    }
    data = "".join(_result_row(summary.run_id, i, r) for i, r in enumerate(results) if i not in present)
    client.insert_tsv("reconciliation_results", [name for name, _ in RECONCILIATION_RESULTS_COLUMNS], data)
    client.insert_tsv("reconciliation_runs", [name for name, _ in RECONCILIATION_RUNS_COLUMNS], _run_row(summary))
    stored = load_run(client, summary.run_id)
    assert stored is not None and stored.run_id == summary.run_id
    return True


def load_run(client: ClickHouseClient, run_id: str) -> RunSummary | None:
    names = ", ".join(
        f"toString({name})" if kind.startswith(("UInt128", "Date32")) else name
        for name, kind in RECONCILIATION_RUNS_COLUMNS
    )
    rows = client.query_rows(
        f"SELECT {names} FROM reconciliation_runs WHERE run_id = {{run:String}} LIMIT 1", {"run": run_id}
    )
    if not rows:
        return None
    row = rows[0]
    values: dict[str, object] = {}
    for (name, kind), value in zip(RECONCILIATION_RUNS_COLUMNS, row, strict=True):
        if kind == "Date32":
            values[name] = datetime.date.fromisoformat(to_str(value))
        elif kind == "Bool":
            values[name] = bool(value)
        elif kind.startswith(("UInt", "Int")):
            values[name] = to_int(value)
        else:
            values[name] = to_str(value)
    return RunSummary(**values)  # type: ignore[arg-type]


def load_results(client: ClickHouseClient, run_id: str) -> list[StoredResult]:
    rows = client.query_rows(
        """SELECT run_id, result_index, kind, rule, line_numbers, event_ids, arrayMap(t -> toString(t), transfer_ids),
       toString(statement_amount), toString(ledger_amount), toString(amount_difference), date_difference_days,
       reference, note
FROM reconciliation_results WHERE run_id = {run:String}
ORDER BY result_index LIMIT 1 BY result_index LIMIT {limit:UInt32}""",
        {"run": run_id, "limit": RESULTS_MAX},
    )
    results: list[StoredResult] = []
    for row in rows:
        line_numbers, event_ids, transfer_ids = row[4], row[5], row[6]
        assert isinstance(line_numbers, list) and isinstance(event_ids, list) and isinstance(transfer_ids, list)
        results.append(
            StoredResult(
                run_id=to_str(row[0]),
                result_index=to_int(row[1]),
                kind=ResultKind(to_str(row[2])),
                rule=MatchRule(to_str(row[3])),
                line_numbers=tuple(to_int(n) for n in line_numbers),
                event_ids=tuple(to_str(e) for e in event_ids),
                transfer_ids=tuple(to_int(t) for t in transfer_ids),
                statement_amount=to_int(row[7]),
                ledger_amount=to_int(row[8]),
                amount_difference=to_int(row[9]),
                date_difference_days=to_int(row[10]),
                reference=to_str(row[11]),
                note=to_str(row[12]),
            )
        )
    return results
