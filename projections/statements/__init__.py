"""Statement reconciliation: match a bank or PSP statement (CSV with a column mapping, or ISO 20022
camt.053) against one ledger account's entries in the read model, persist the run and its results
(`reconciliation_runs`, `reconciliation_results`), export them as CSV.

The matching rules are documented in `projections.statements._match`; the command is
`ledger statement-reconcile` (`projections.statements.cli`)."""

from projections.statements._camt053 import parse_camt053
from projections.statements._csv import CsvMapping, parse_csv
from projections.statements._lines import Direction, StatementError, StatementLine, minor_units
from projections.statements._match import LedgerEntry, MatchOptions, MatchResult, MatchRule, ResultKind, match
from projections.statements._reconcile import (
    Reconciliation,
    StatementFormat,
    parse_statement,
    read_statement,
    reconcile_statement,
    results_csv,
    write_results_csv,
)
from projections.statements._store import RunSummary, StoredResult, load_results, load_run

__all__ = [
    "CsvMapping",
    "Direction",
    "LedgerEntry",
    "MatchOptions",
    "MatchResult",
    "MatchRule",
    "Reconciliation",
    "ResultKind",
    "RunSummary",
    "StatementError",
    "StatementFormat",
    "StatementLine",
    "StoredResult",
    "load_results",
    "load_run",
    "match",
    "minor_units",
    "parse_camt053",
    "parse_csv",
    "parse_statement",
    "read_statement",
    "reconcile_statement",
    "results_csv",
    "write_results_csv",
]
