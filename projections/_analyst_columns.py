"""Typed columns an analyst loads directly, written beside the chain columns of an audit export.

The chain columns (`projections.audit.COLUMNS`) stay exactly as the chain hashes them: u128 values
as decimal strings, times as integer engine nanoseconds, labels as canonical JSON. The verifiers
recompute hashes from those alone. Beside them each export row carries:

- `engine_time`, `transfer_time`: UTC instants. Parquet: timestamp('ns', tz='UTC'); CSV: RFC 3339
  with nanoseconds and 'Z' (`2026-01-31T12:00:00.123456789Z`).
- `amount_scale`: the minor-unit digits of the row's currency (by engine ledger, from the settings'
  currency table); empty (null) for a ledger the table does not know.
- `amount_decimal`: the amount in major units, exact. Parquet: decimal128(38, S) with S the largest
  scale of the currency table, so every currency's amounts are exact in one column; a row whose
  unscaled value needs more than 38 digits (amounts up to u128 max need 39 + S) is null there and
  counted in the manifest (`amount_decimal_null_rows`), never rounded: sum `amount` (u128 string,
  always exact) with `amount_scale` for those. CSV: the exact decimal text at the row's own scale.
- `labels_map`: the labels as map<string, string> (Parquet only; CSV keeps the JSON `labels`).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Context, Decimal

__all__ = [
    "DECIMAL_PRECISION",
    "AmountScales",
    "rfc3339_nanoseconds",
]

DECIMAL_PRECISION = 38
"""decimal128's digits: what Parquet readers without decimal256 (DuckDB, Spark, Arrow's default) load."""
_DECIMAL_UNSCALED_MAX = 10**DECIMAL_PRECISION - 1
_NANOSECONDS_PER_SECOND = 1_000_000_000
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_EXACT = Context(prec=2 * DECIMAL_PRECISION)
"""Decimal arithmetic rounds to 28 digits by default: wide enough here for every u128 at every scale."""


def rfc3339_nanoseconds(timestamp: int) -> str:
    """Engine nanoseconds as RFC 3339 in UTC with all nine fraction digits: exact, and sorts as text."""
    assert timestamp >= 0
    seconds, nanoseconds = divmod(timestamp, _NANOSECONDS_PER_SECOND)
    moment = _EPOCH + datetime.timedelta(seconds=seconds)
    text = f"{moment:%Y-%m-%dT%H:%M:%S}.{nanoseconds:09d}Z"
    assert len(text) == len("1970-01-01T00:00:00.000000000Z")
    return text


@dataclass(slots=True, frozen=True)
class AmountScales:
    """Minor-unit digits per engine ledger (the settings' currency table, keyed by ledger)."""

    by_ledger: Mapping[int, int]

    @property
    def decimal_scale(self) -> int:
        """The Parquet column's scale: the largest, so a smaller-scale amount is exact in it too."""
        return max(self.by_ledger.values(), default=0)

    def scale(self, ledger: int) -> int | None:
        return self.by_ledger.get(ledger)

    def decimal_text(self, amount: int, ledger: int) -> str:
        """The exact amount in major units at the currency's own scale; '' for an unknown ledger."""
        scale = self.scale(ledger)
        if scale is None:
            return ""
        assert amount >= 0
        if scale == 0:
            return str(amount)
        whole, fraction = divmod(amount, 10**scale)
        return f"{whole}.{fraction:0{scale}d}"

    def decimal_value(self, amount: int, ledger: int) -> Decimal | None:
        """The amount for the decimal128(38, decimal_scale) column, or None when the ledger is unknown
        or the unscaled value needs more than 38 digits (a null, counted: never a rounded value)."""
        scale = self.scale(ledger)
        if scale is None:
            return None
        unscaled = amount * 10 ** (self.decimal_scale - scale)
        if unscaled > _DECIMAL_UNSCALED_MAX:
            return None
        value = Decimal(f"{unscaled}E-{self.decimal_scale}")  # From text: exact, no context rounding.
        assert _EXACT.multiply(value, Decimal(10**scale)) == amount
        return value
