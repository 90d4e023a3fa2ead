"""What every statement format is parsed into: one `StatementLine` per booked entry, amounts exact
in the currency's minor units (decimal text -> `decimal.Decimal` -> int, never a float)."""

from __future__ import annotations

import datetime
import decimal
import enum
from dataclasses import dataclass

__all__ = [
    "STATEMENT_BYTES_MAX",
    "STATEMENT_LINES_MAX",
    "TEXT_CHARS_MAX",
    "Direction",
    "StatementError",
    "StatementLine",
    "minor_units",
]

STATEMENT_BYTES_MAX = 64 * 1024 * 1024
"""Largest statement file read: a month of a busy account in camt.053 is a few MiB."""
STATEMENT_LINES_MAX = 100_000
"""Most lines in one statement; more is refused rather than matched slowly."""
TEXT_CHARS_MAX = 1_000
"""References and descriptions are cut to this length (camt.053 Ustrd is at most 140 per element)."""
AMOUNT_DIGITS_MAX = 38
"""A u128 has 39 digits; 38 keeps every amount (and the sums of a few) inside the read model's types."""


class StatementError(ValueError):
    """The statement, its mapping or an option is unusable: the caller's input, reported in one line."""


class Direction(enum.Enum):
    """The statement's view of an entry: money into (CREDIT) or out of (DEBIT) the account."""

    CREDIT = "CREDIT"
    DEBIT = "DEBIT"

    @property
    def sign(self) -> int:
        return 1 if self is Direction.CREDIT else -1


@dataclass(frozen=True, slots=True)
class StatementLine:
    line_number: int
    """1-based position in the statement (the CSV data row or the camt.053 Ntry), as reported."""
    booking_date: datetime.date
    value_date: datetime.date | None
    amount: int
    """Minor units, > 0; the direction carries the sign."""
    direction: Direction
    currency: str
    reference: str
    """The bank's reference for the entry (CSV reference column; camt.053 NtryRef or AcctSvcrRef)."""
    end_to_end_id: str
    """The payer's reference carried through the payment chain (camt.053 EndToEndId), or empty."""
    description: str
    reversal: bool = False
    """The bank marked the line as a reversal (camt.053 RvslInd)."""
    batch_references: tuple[str, ...] = ()
    """A batch booking's payments' own references (camt.053: one EndToEndId per TxDtls), when more
    than one: rule 1 can then settle the line with one entry per reference."""

    def __post_init__(self) -> None:
        assert self.line_number >= 1
        assert self.amount > 0, "a statement line moves money"
        assert len(self.batch_references) != 1, "a batch has several references or none"

    @property
    def signed_amount(self) -> int:
        return self.direction.sign * self.amount

    @property
    def references(self) -> tuple[str, ...]:
        return tuple(r for r in (self.reference, self.end_to_end_id) if r)


def minor_units(text: str, scale: int, *, decimal_separator: str = ".", thousands_separator: str = "") -> int:
    """`text` (a decimal number) in minor units of a currency with `scale` digits, exactly: an amount
    with more fractional digits than the currency has is refused, never rounded."""
    assert 0 <= scale <= 18
    cleaned = text.strip()
    if thousands_separator:
        cleaned = cleaned.replace(thousands_separator, "")
    if decimal_separator != ".":
        cleaned = cleaned.replace(".", "\0").replace(decimal_separator, ".")
    if not cleaned or len(cleaned) > AMOUNT_DIGITS_MAX + 3:
        raise StatementError(f"amount {text!r} is not a decimal number")
    try:
        value = decimal.Decimal(cleaned)
    except decimal.InvalidOperation:
        raise StatementError(f"amount {text!r} is not a decimal number") from None
    if not value.is_finite():
        raise StatementError(f"amount {text!r} is not a decimal number")
    # Before any arithmetic: `1E+999999999` is a valid Decimal whose int() would not fit in memory.
    if value and value.adjusted() + scale >= AMOUNT_DIGITS_MAX:
        raise StatementError(f"amount {text!r} is too large")
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    significant = len(digits)
    while significant > 1 and digits[significant - 1] == 0:  # 1.500 has two decimal places, not three
        significant -= 1
        exponent += 1
    if exponent < -scale and any(digits):
        raise StatementError(f"amount {text!r} has more than {scale} decimal places")
    # Exact integer arithmetic from here: the digits, shifted by what is left of the exponent.
    magnitude = int("".join(str(d) for d in digits[:significant])) * 10 ** (exponent + scale) if any(digits) else 0
    result = -magnitude if sign else magnitude
    if abs(result) >= 10**AMOUNT_DIGITS_MAX:
        raise StatementError(f"amount {text!r} is too large")
    return result
