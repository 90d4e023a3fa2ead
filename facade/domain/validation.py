"""Validation of what callers send: canonical decimals, ids, amounts, bounded texts and label maps.

Every limit is a named constant here, defined once. Decimal inputs must be canonical (no sign, no
leading zeros) so one payload has one canonical body (facade.domain.transactions).
"""

from __future__ import annotations

from facade.domain.errors import invalid
from facade.engine.types import AMOUNT_MAX, U128_MAX

__all__ = [
    "CORRELATION_ID_LENGTH_MAX",
    "DECIMAL_U128_DIGITS_MAX",
    "DESCRIPTION_LENGTH_MAX",
    "EXTERNAL_REFERENCE_LENGTH_MAX",
    "IDEMPOTENCY_KEY_LENGTH_MAX",
    "LABELS_COUNT_MAX",
    "LABEL_LENGTH_MAX",
    "LEGS_MAX",
    "OWNER_LENGTH_MAX",
    "SOURCE_LENGTH_MAX",
    "parse_amount",
    "parse_id",
    "validate_map",
    "validate_text",
]

LEGS_MAX = 16
IDEMPOTENCY_KEY_LENGTH_MAX = 128
SOURCE_LENGTH_MAX = 64
CORRELATION_ID_LENGTH_MAX = 128
DESCRIPTION_LENGTH_MAX = 512
LABELS_COUNT_MAX = 16
LABEL_LENGTH_MAX = 128
EXTERNAL_REFERENCE_LENGTH_MAX = 128
OWNER_LENGTH_MAX = 128
DECIMAL_U128_DIGITS_MAX = 39


def _canonical_decimal(text: str) -> bool:
    """ASCII digits only, no sign, no leading zero (except "0" itself), at most 39 digits."""
    return (
        0 < len(text) <= DECIMAL_U128_DIGITS_MAX
        and text.isascii()
        and text.isdigit()
        and (text[0] != "0" or len(text) == 1)
    )


def parse_id(text: str, field_name: str) -> int:
    if not _canonical_decimal(text):
        raise invalid("INVALID_ID", f"{field_name} must be a decimal u128 without leading zeros", field=field_name)
    value = int(text)
    if not 0 < value < U128_MAX:
        raise invalid("INVALID_ID", f"{field_name} is out of range", field=field_name)
    return value


def parse_amount(text: str, field_name: str = "amount") -> int:
    """Minor units: a canonical decimal integer string, 1 .. 2^128-2 (2^128-1 is the engine's 'everything')."""
    if not _canonical_decimal(text):
        raise invalid("INVALID_AMOUNT", f"{field_name} must be a positive integer of minor units", field=field_name)
    value = int(text)
    if not 0 < value < AMOUNT_MAX:
        raise invalid("INVALID_AMOUNT", f"{field_name} must be between 1 and 2^128-2", field=field_name)
    return value


def validate_map(values: dict[str, str], name: str) -> None:
    if len(values) > LABELS_COUNT_MAX:
        raise invalid("TOO_MANY_LABELS", f"{name}: at most {LABELS_COUNT_MAX} entries", field=name)
    for key, value in values.items():
        if len(key.encode()) > LABEL_LENGTH_MAX or len(value.encode()) > LABEL_LENGTH_MAX:
            raise invalid("LABEL_TOO_LONG", f"{name}: keys and values at most {LABEL_LENGTH_MAX} bytes", field=name)


def validate_text(value: str, name: str, *, length_max: int, required: bool = False) -> None:
    if required and not value:
        raise invalid("MISSING_FIELD", f"{name} is required", field=name)
    # UTF-8 takes at most 4 bytes per code point: only long strings need encoding to be measured.
    if len(value) * 4 > length_max and len(value.encode()) > length_max:
        raise invalid("FIELD_TOO_LONG", f"{name}: at most {length_max} bytes", field=name)
