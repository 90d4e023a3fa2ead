"""CSV statements: which columns mean what is the caller's mapping (`CsvMapping.parse`), because every
bank and PSP exports its own layout."""

from __future__ import annotations

import csv
import datetime
import io
from collections.abc import Sequence
from dataclasses import dataclass

from projections.statements._lines import (
    STATEMENT_LINES_MAX,
    TEXT_CHARS_MAX,
    Direction,
    StatementError,
    StatementLine,
    minor_units,
)

__all__ = ["MAPPING_KEYS", "CsvMapping", "parse_csv"]

MAPPING_KEYS = (
    "date",
    "amount",
    "reference",
    "description",
    "direction",
    "value_date",
    "end_to_end_id",
    "currency",
    "date_format",
    "delimiter",
    "decimal",
    "thousands",
)
# H/S: Haben/Soll, as German bank exports say credit/debit.
_CREDIT_WORDS = frozenset({"c", "cr", "crdt", "credit", "+", "in", "h", "haben"})
_DEBIT_WORDS = frozenset({"d", "dr", "dbit", "debit", "-", "out", "s", "soll"})


@dataclass(frozen=True, slots=True)
class CsvMapping:
    """Column names (header row) for each field; `amount` is signed (negative = debit) unless a
    `direction` column says C/CR/CRDT/CREDIT/H or D/DR/DBIT/DEBIT/S. Dates are ISO (YYYY-MM-DD) unless
    `date_format` (strptime) says otherwise."""

    date: str
    amount: str
    reference: str = ""
    description: str = ""
    direction: str = ""
    value_date: str = ""
    end_to_end_id: str = ""
    currency: str = ""
    date_format: str = ""
    delimiter: str = ","
    decimal: str = "."
    thousands: str = ""

    @classmethod
    def parse(cls, pairs: Sequence[str]) -> CsvMapping:
        """From `key=value` pairs (`--mapping date=Booking date --mapping amount=Amount`)."""
        values: dict[str, str] = {}
        for pair in pairs:
            key, separator, value = pair.partition("=")
            key = key.strip()
            if not separator or key not in MAPPING_KEYS:
                raise StatementError(
                    f"--mapping {pair!r}: expected KEY=COLUMN with KEY one of {', '.join(MAPPING_KEYS)}"
                )
            values[key] = value
        values.setdefault("date", "date")
        values.setdefault("amount", "amount")
        values.setdefault("reference", "reference")
        values.setdefault("description", "description")
        for key in ("delimiter", "decimal"):
            if key in values and (len(values[key]) != 1 or values[key] in '"\r\n'):
                raise StatementError(f"--mapping {key}=: one character (not a quote or newline), got {values[key]!r}")
        return cls(**values)


def _date(text: str, date_format: str, what: str) -> datetime.date:
    try:
        if date_format:
            return datetime.datetime.strptime(text.strip(), date_format).date()
        return datetime.date.fromisoformat(text.strip()[:10])
    except ValueError:
        raise StatementError(f"{what} {text!r} is not a date ({date_format or 'YYYY-MM-DD'})") from None


def _direction(text: str, line_number: int) -> Direction:
    word = text.strip().lower()
    if word in _CREDIT_WORDS:
        return Direction.CREDIT
    if word in _DEBIT_WORDS:
        return Direction.DEBIT
    raise StatementError(f"line {line_number}: direction {text!r} is neither credit (C, CRDT) nor debit (D, DBIT)")


def parse_csv(data: bytes, mapping: CsvMapping, *, currency: str, scale: int) -> list[StatementLine]:
    """The statement's lines, in file order; the first row is the header."""
    assert currency and 0 <= scale <= 18
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise StatementError("the CSV statement is not UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=mapping.delimiter, strict=True)
    try:
        header = reader.fieldnames or []
    except csv.Error as error:
        raise StatementError(f"the CSV statement is malformed: {error}") from None
    for key in ("date", "amount", "reference", "description", "direction", "value_date", "end_to_end_id", "currency"):
        column = getattr(mapping, key)
        required = key in ("date", "amount") or column != key
        if column and column not in header and required:
            raise StatementError(f"the CSV statement has no column {column!r} (mapping {key}); it has {header}")
    columns = {key: getattr(mapping, key) for key in ("reference", "description") if getattr(mapping, key) in header}
    lines: list[StatementLine] = []
    try:
        for row in reader:
            line_number = len(lines) + 1
            if line_number > STATEMENT_LINES_MAX:
                raise StatementError(f"the statement has more than {STATEMENT_LINES_MAX} lines")
            lines.append(_line(row, line_number, mapping=mapping, columns=columns, currency=currency, scale=scale))
    except csv.Error as error:
        raise StatementError(f"the CSV statement is malformed at row {reader.line_num}: {error}") from None
    assert len(lines) <= STATEMENT_LINES_MAX
    return lines


def _line(  # noqa: PLR0913  Private; keyword-only: how to read a row, as _camt053._line takes its entry.
    row: dict[str, str], line_number: int, *, mapping: CsvMapping, columns: dict[str, str], currency: str, scale: int
) -> StatementLine:
    def cell(column: str) -> str:
        value = row.get(column)
        if value is None:
            raise StatementError(f"line {line_number}: missing column {column!r}")
        return value

    try:
        amount = minor_units(
            cell(mapping.amount), scale, decimal_separator=mapping.decimal, thousands_separator=mapping.thousands
        )
    except StatementError as error:
        raise StatementError(f"line {line_number}: {error}") from None
    if mapping.direction:
        if amount < 0:
            raise StatementError(f"line {line_number}: negative amount with a direction column")
        direction = _direction(cell(mapping.direction), line_number)
    else:
        direction = Direction.CREDIT if amount > 0 else Direction.DEBIT
    if amount == 0:
        raise StatementError(f"line {line_number}: amount is zero")
    if mapping.currency and cell(mapping.currency).strip().upper() != currency:
        raise StatementError(f"line {line_number}: currency {cell(mapping.currency)!r}, the account's is {currency}")
    value_date = (
        _date(cell(mapping.value_date), mapping.date_format, f"line {line_number}: value date")
        if mapping.value_date and cell(mapping.value_date).strip()
        else None
    )
    return StatementLine(
        line_number=line_number,
        booking_date=_date(cell(mapping.date), mapping.date_format, f"line {line_number}: date"),
        value_date=value_date,
        amount=abs(amount),
        direction=direction,
        currency=currency,
        reference=row.get(columns.get("reference", ""), "").strip()[:TEXT_CHARS_MAX] if "reference" in columns else "",
        end_to_end_id=cell(mapping.end_to_end_id).strip()[:TEXT_CHARS_MAX] if mapping.end_to_end_id else "",
        description=(row.get(columns["description"]) or "").strip()[:TEXT_CHARS_MAX]
        if "description" in columns
        else "",
    )
