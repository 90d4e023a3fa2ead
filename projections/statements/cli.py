"""`ledger statement-reconcile ACCOUNT --file F --format csv|camt053 ...`: one reconciliation run over
the local read model (offline: the service's chDB directory must not be held by a running service).

Prints the run summary as one JSON object (u128 values as decimal strings), then one per exception
(unmatched on either side, duplicate, reversal, amount or date discrepancy); `--out` also writes every
result as CSV. Bad input (file, mapping, option, account) is one line on standard error, exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import enum
import json
import sys
from pathlib import Path
from typing import Any

from facade.settings import Settings
from projections.statements._csv import MAPPING_KEYS, CsvMapping
from projections.statements._lines import StatementError
from projections.statements._match import DATE_WINDOW_DAYS_MAX, TOLERANCE_MAX, MatchOptions, ResultKind
from projections.statements._reconcile import (
    StatementFormat,
    read_statement,
    reconcile_statement,
    write_results_csv,
)
from projections.statements._store import StoredResult

__all__ = ["register"]

_PROGRAM = "ledger statement-reconcile"
_U128_MAX = (1 << 128) - 1
_SAFE_INTEGER_MAX = (1 << 53) - 1
EXCEPTIONS_PRINTED_MAX = 1_000
"""Results printed after the summary; all of them are in the read model and in --out."""


def _bounded_int(text: str, name: str, low: int, high: int) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise StatementError(f"{name} {text!r}: an integer from {low} to {high}")
    return int(text)


def _jsonable(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _SAFE_INTEGER_MAX:
        return str(value)
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _run(settings: Settings, args: argparse.Namespace) -> int:
    try:
        return _reconcile(settings, args)
    except StatementError as error:
        print(f"{_PROGRAM}: error: {error}", file=sys.stderr)
        return 2


def _reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from projections.client import open_client
    from projections.schema import create_tables

    account_id = _bounded_int(args.account, "ACCOUNT", 1, _U128_MAX)
    options = MatchOptions(
        date_window_days=_bounded_int(args.date_window_days, "--date-window-days", 0, DATE_WINDOW_DAYS_MAX),
        tolerance=_bounded_int(args.tolerance, "--tolerance", 0, TOLERANCE_MAX),
        inverted=args.inverted,
    )
    statement_format = StatementFormat(args.format)
    if args.mapping and statement_format is not StatementFormat.CSV:
        raise StatementError("--mapping applies to --format csv only")
    mapping = CsvMapping.parse(args.mapping or [])
    out = Path(args.out) if args.out else None
    if out is not None and (out.exists() or not out.parent.is_dir()):
        raise StatementError(f"--out {out}: exists already, or its directory does not exist")
    currency = args.currency.upper() if args.currency else None
    data = read_statement(Path(args.file))
    currencies = {code: (c.ledger, c.scale) for code, c in settings.api.currencies.items()}
    try:
        client = open_client(settings.clickhouse)
    except Exception as error:  # chDB's own errors are untyped; a held lock is the usual one.
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"{_PROGRAM}: the read model is unavailable (is the service running? stop it): {first}", file=sys.stderr)
        return 1
    try:
        create_tables(client)
        reconciliation = reconcile_statement(
            client,
            account_id=account_id,
            data=data,
            statement_format=statement_format,
            currencies=currencies,
            currency=currency,
            mapping=mapping,
            options=options,
            run_id=args.run_id,
        )
    finally:
        client.close()
    summary = reconciliation.summary
    report: dict[str, Any] = {
        field.name: _jsonable(getattr(summary, field.name)) for field in dataclasses.fields(summary)
    }
    report["created"] = reconciliation.created
    if out is not None:
        write_results_csv(out, summary, reconciliation.results, currencies[summary.currency][1])
        report["out"] = str(out)
    print(json.dumps(report, ensure_ascii=False))
    # Then what needs a person: every result that is not a clean match, one JSON object per line.
    exceptions = [r for r in reconciliation.results if r.kind is not ResultKind.MATCHED or _discrepant(r)]
    for result in exceptions[:EXCEPTIONS_PRINTED_MAX]:
        fields = {field.name: getattr(result, field.name) for field in dataclasses.fields(result)}
        print(json.dumps({name: _jsonable(value) for name, value in fields.items()}, ensure_ascii=False))
    if len(exceptions) > EXCEPTIONS_PRINTED_MAX:
        print(json.dumps({"exceptions_not_printed": len(exceptions) - EXCEPTIONS_PRINTED_MAX, "see": "--out"}))
    return 0


def _discrepant(result: StoredResult) -> bool:
    return result.amount_difference != 0 or result.date_difference_days != 0


def register(subparsers: Any) -> None:
    """Adds `statement-reconcile` to an argparse subparsers object (the read-model commands' protocol:
    `projections_run(settings, args) -> exit code`)."""
    parser = subparsers.add_parser(
        "statement-reconcile",
        help="match a bank/PSP statement (CSV or camt.053) against an account's ledger entries",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("account", metavar="ACCOUNT", help="ledger account id (decimal u128)")
    parser.add_argument("--file", required=True, help="the statement file")
    parser.add_argument(
        "--format",
        choices=[f.value for f in StatementFormat],
        default="csv",
        help="csv (default) or camt053 (ISO 20022 XML)",
    )
    parser.add_argument(
        "--mapping",
        action="append",
        metavar="KEY=VALUE",
        help="CSV only, repeatable: KEY one of " + ", ".join(MAPPING_KEYS) + " (columns by header name; "
        "defaults date=date amount=amount reference=reference description=description; amount signed "
        "unless direction=COLUMN holding C/CRDT/CREDIT or D/DBIT/DEBIT; date_format=%%d.%%m.%%Y, "
        "delimiter=;, decimal=, thousands=.)",
    )
    parser.add_argument(
        "--currency", help="ISO 4217 code, only for an account on a ledger without a configured currency"
    )
    parser.add_argument(
        "--date-window-days",
        default="3",
        help=f"amount+date rule: at most this many days apart (0..{DATE_WINDOW_DAYS_MAX}, default 3)",
    )
    parser.add_argument(
        "--tolerance",
        default="0",
        help="one-to-many / many-to-one: sums may differ by this many minor units (default 0)",
    )
    parser.add_argument(
        "--inverted",
        action="store_true",
        help="a statement credit (money in) is a debit of the ledger account (asset mirror)",
    )
    parser.add_argument("--run-id", help="explicit run id (default: derived from statement, options and ledger state)")
    parser.add_argument("--out", help="write the results as CSV to this new file")
    parser.set_defaults(projections_run=_run)
