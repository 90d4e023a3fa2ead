"""One reconciliation run: parse the statement, load the account's entries for its period, match,
persist, and export the results as CSV."""

from __future__ import annotations

import csv
import datetime
import decimal
import enum
import hashlib
import io
import re
import time
from dataclasses import dataclass
from pathlib import Path

from projections.client import ClickHouseClient
from projections.statements._camt053 import parse_camt053
from projections.statements._csv import CsvMapping, parse_csv
from projections.statements._lines import STATEMENT_BYTES_MAX, StatementError, StatementLine
from projections.statements._match import MatchOptions, ResultKind, match
from projections.statements._store import (
    RunSummary,
    StoredResult,
    account_ledger,
    ledger_entries,
    load_results,
    load_run,
    save_run,
)

__all__ = [
    "Reconciliation",
    "StatementFormat",
    "parse_statement",
    "read_statement",
    "reconcile_statement",
    "results_csv",
    "write_results_csv",
]

RUN_ID_HEX_CHARS = 32
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
BOOKING_DATE_MIN = datetime.date(1970, 1, 1)
BOOKING_DATE_MAX = datetime.date(2262, 4, 1)
"""Engine timestamps are ns since the Unix epoch (and the read model's DateTime64(9) ends in 2262)."""


class StatementFormat(enum.Enum):
    CSV = "csv"
    CAMT053 = "camt053"


@dataclass(frozen=True, slots=True)
class Reconciliation:
    summary: RunSummary
    results: list[StoredResult]
    created: bool
    """False when the run id was already stored: the stored run is returned, nothing is written."""


def read_statement(path: Path) -> bytes:
    """The file's bytes, bounded."""
    try:
        with path.open("rb") as file:
            data = file.read(STATEMENT_BYTES_MAX + 1)
    except OSError as error:
        raise StatementError(f"cannot read {path}: {error.strerror}") from None
    if len(data) > STATEMENT_BYTES_MAX:
        raise StatementError(f"{path} is larger than {STATEMENT_BYTES_MAX} bytes")
    return data


def parse_statement(
    data: bytes, statement_format: StatementFormat, *, mapping: CsvMapping | None, currency: str, scale: int
) -> list[StatementLine]:
    if statement_format is StatementFormat.CAMT053:
        lines = parse_camt053(data, currency=currency, scale=scale)
    else:
        lines = parse_csv(data, mapping or CsvMapping.parse([]), currency=currency, scale=scale)
    if not lines:
        raise StatementError("the statement has no booked lines")
    return lines


def _run_id(account_id: int, digest: str, options: MatchOptions, ledger_state: str) -> str:
    """Derived from everything the results depend on: the same statement, options and ledger give the
    same run id, so running it again writes nothing new; a ledger that changed gives a new run."""
    text = f"{account_id}|{digest}|{options.date_window_days}|{options.tolerance}|{options.inverted}|{ledger_state}"
    return hashlib.sha256(text.encode()).hexdigest()[:RUN_ID_HEX_CHARS]


def reconcile_statement(  # noqa: PLR0913  Keyword-only: the statement, how to read it, how to match it.
    client: ClickHouseClient,
    *,
    account_id: int,
    data: bytes,
    statement_format: StatementFormat,
    currencies: dict[str, tuple[int, int]],
    currency: str | None = None,
    mapping: CsvMapping | None = None,
    options: MatchOptions,
    run_id: str | None = None,
) -> Reconciliation:
    """`currencies`: code -> (engine ledger, scale). The account's ledger decides the currency (and
    its scale) unless the account is on a ledger without a configured currency: then `currency`."""
    assert account_id > 0
    if run_id is not None and not _RUN_ID.fullmatch(run_id):
        raise StatementError(f"--run-id {run_id!r}: 1 to 64 ASCII letters, digits, - or _")
    ledger = account_ledger(client, account_id)
    if ledger is None:
        raise StatementError(f"account {account_id} has no entries in the read model (unknown account?)")
    by_ledger = {number: code for code, (number, _) in currencies.items()}
    account_currency = by_ledger.get(ledger)
    if currency is not None and account_currency is not None and currency != account_currency:
        raise StatementError(f"--currency {currency}: account {account_id} is on ledger {ledger} ({account_currency})")
    code = account_currency or currency
    if code is None or code not in currencies:
        raise StatementError(f"account {account_id} is on ledger {ledger} with no configured currency: set --currency")
    scale = currencies[code][1]
    lines = parse_statement(data, statement_format, mapping=mapping, currency=code, scale=scale)
    period_from = min(line.booking_date for line in lines)
    period_to = max(line.booking_date for line in lines)
    if period_from < BOOKING_DATE_MIN or period_to > BOOKING_DATE_MAX:
        raise StatementError(f"booking dates must be from {BOOKING_DATE_MIN} to {BOOKING_DATE_MAX} (engine time)")
    window = datetime.timedelta(days=options.date_window_days)
    entries = ledger_entries(client, account_id, period_from - window, period_to + window)
    results = match(lines, entries, options)
    dates = {entry.event_id: entry.date for entry in entries}
    # Entries in the window margins belong to the neighbouring statements unless matched here.
    results = [
        r
        for r in results
        if r.kind is not ResultKind.UNMATCHED_LEDGER or period_from <= dates[r.event_ids[0]] <= period_to
    ]
    digest = hashlib.sha256(data).hexdigest()
    ledger_state = ",".join(f"{e.event_id}" for e in entries)
    run_id = run_id or _run_id(account_id, digest, options, hashlib.sha256(ledger_state.encode()).hexdigest())
    stored = load_run(client, run_id)
    if stored is not None:
        if (stored.account_id, stored.statement_sha256) != (account_id, digest):
            raise StatementError(f"run id {run_id} already holds the reconciliation of another statement or account")
        return Reconciliation(stored, load_results(client, run_id), created=False)

    def count(kind: ResultKind) -> int:
        return sum(1 for r in results if r.kind is kind)

    matched = [r for r in results if r.kind is ResultKind.MATCHED]
    summary = RunSummary(
        run_id=run_id,
        account_id=account_id,
        created_timestamp=time.time_ns(),
        statement_format=statement_format.value,
        statement_sha256=digest,
        currency=code,
        date_from=period_from,
        date_to=period_to,
        date_window_days=options.date_window_days,
        tolerance=options.tolerance,
        inverted=options.inverted,
        statement_lines=len(lines),
        ledger_entries=sum(len(r.event_ids) for r in results),
        matched=len(matched),
        unmatched_statement=count(ResultKind.UNMATCHED_STATEMENT),
        unmatched_ledger=count(ResultKind.UNMATCHED_LEDGER),
        duplicates=count(ResultKind.DUPLICATE),
        reversals=count(ResultKind.REVERSAL),
        amount_discrepancies=sum(1 for r in matched if r.amount_difference != 0),
        date_discrepancies=sum(1 for r in matched if r.date_difference_days != 0),
    )
    created = save_run(client, summary, results)
    stored_results = load_results(client, run_id)
    assert len(stored_results) == len(results)
    return Reconciliation(summary, stored_results, created=created)


def _decimal(amount: int, scale: int) -> str:
    return str(decimal.Decimal(amount).scaleb(-scale)) if scale else str(amount)


RESULTS_CSV_COLUMNS = (
    "run_id",
    "result_index",
    "kind",
    "rule",
    "statement_lines",
    "event_ids",
    "transfer_ids",
    "statement_amount_minor",
    "ledger_amount_minor",
    "amount_difference_minor",
    "statement_amount",
    "ledger_amount",
    "amount_difference",
    "currency",
    "date_difference_days",
    "reference",
    "note",
)


def results_csv(summary: RunSummary, results: list[StoredResult], scale: int) -> str:
    """The stored results as CSV text: a header row; ids quoted strings, lists joined by `;`, amounts
    in minor units and as exact decimals."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, quoting=csv.QUOTE_NONNUMERIC)
    writer.writerow(RESULTS_CSV_COLUMNS)
    for r in results:
        writer.writerow(
            (
                r.run_id,
                r.result_index,
                r.kind.value,
                r.rule.value,
                ";".join(str(n) for n in r.line_numbers),
                ";".join(r.event_ids),
                ";".join(str(t) for t in r.transfer_ids),
                r.statement_amount,
                r.ledger_amount,
                r.amount_difference,
                _decimal(r.statement_amount, scale),
                _decimal(r.ledger_amount, scale),
                _decimal(r.amount_difference, scale),
                summary.currency,
                r.date_difference_days,
                r.reference,
                r.note,
            )
        )
    return buffer.getvalue()


def write_results_csv(path: Path, summary: RunSummary, results: list[StoredResult], scale: int) -> int:
    """`results_csv` to a new file next to `path`, then renamed: no half-written file."""
    temporary = path.with_name(path.name + ".partial")
    try:
        with temporary.open("w", newline="", encoding="utf-8") as file:
            file.write(results_csv(summary, results, scale))
        temporary.replace(path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise StatementError(f"cannot write {path}: {error.strerror}") from None
    return len(results)
