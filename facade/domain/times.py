"""Times at the edges: engine nanoseconds since the Unix epoch (u64) or RFC 3339 text, both ways.

Every edge accepts a time either as engine nanoseconds or as RFC 3339 (`2026-11-25T17:00:00Z`,
`2026-11-25T18:00:00.123456789+01:00`; up to nine fraction digits, exact to the nanosecond), and every
answer that carries a time carries it both ways: `<name>_ns` (or the field's historical name) and
`<name>_rfc3339`, UTC, with 0, 3, 6 or 9 fraction digits as protobuf's JSON form of a Timestamp has.
Nothing here imports a transport.
"""

from __future__ import annotations

import functools
import re
import time
from datetime import UTC, datetime, timedelta, timezone

from facade.domain.errors import ErrorKind, LedgerError

__all__ = [
    "REASON_INVALID_TIMESTAMP",
    "TIME_PATTERN",
    "TIME_TEXT_LENGTH_MAX",
    "UINT64_MAX",
    "format_time",
    "parse_rfc3339",
    "parse_time",
    "time_input",
]

REASON_INVALID_TIMESTAMP = "INVALID_TIMESTAMP"
TIME_TEXT_LENGTH_MAX = 64
"""Longer than any RFC 3339 time with nine fraction digits and an offset: refused before parsing."""
UINT64_MAX = 2**64 - 1
NANOS_PER_SECOND = 1_000_000_000
_FRACTION_DIGITS_MAX = 9
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"  # Date, time
    r"(?:\.([0-9]{1,9}))?([Zz]|[+-][0-9]{2}:[0-9]{2})"  # Fraction (ns at most), offset
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NANOS = re.compile(r"0|[1-9][0-9]{0,19}")
TIME_PATTERN = rf"^$|^(?:{_NANOS.pattern})$|^{_RFC3339.pattern}$"


def _invalid_time(field: str, text: str) -> LedgerError:
    return LedgerError(
        ErrorKind.INVALID,
        REASON_INVALID_TIMESTAMP,
        f"{field}: expected engine nanoseconds (a decimal u64) or an RFC 3339 time at or after 1970, got {text[:64]!r}",
        {"field": field},
    )


def parse_rfc3339(text: str, *, field: str) -> int:
    """An RFC 3339 time → engine nanoseconds. Empty is 0. Every fraction digit is kept (datetime alone
    stops at microseconds); times before 1970 or past 2^64-1 ns are refused (INVALID_TIMESTAMP)."""
    assert field
    if not text:
        return 0
    if len(text) > TIME_TEXT_LENGTH_MAX:
        raise _invalid_time(field, text)
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise _invalid_time(field, text)
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction, offset = match.group(7) or "", match.group(8).upper()
    try:
        zone = UTC
        if offset != "Z":
            sign = -1 if offset[0] == "-" else 1
            zone = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
        moment = datetime(year, month, day, hour, minute, second, tzinfo=zone)
        seconds = (moment - _EPOCH) // timedelta(seconds=1)  # Integer arithmetic: no float rounding.
    except (ValueError, OverflowError) as error:  # Month 13, hour 24, a leap second, year 0...
        raise _invalid_time(field, text) from error
    nanos = seconds * NANOS_PER_SECOND + int(fraction.ljust(_FRACTION_DIGITS_MAX, "0"))
    if not 0 <= nanos <= UINT64_MAX:
        raise _invalid_time(field, text)
    return nanos


def parse_time(text: str, *, field: str) -> int:
    """A time as text, engine nanoseconds (a decimal u64) or RFC 3339 → engine nanoseconds. Empty is 0."""
    assert field
    if len(text) <= TIME_TEXT_LENGTH_MAX and _NANOS.fullmatch(text):
        nanos = int(text)
        if nanos > UINT64_MAX:
            raise _invalid_time(field, text)
        return nanos
    nanos = parse_rfc3339(text, field=field)
    assert 0 <= nanos <= UINT64_MAX
    return nanos


def time_input(nanos: int, rfc3339: str, *, ns_field: str, rfc3339_field: str) -> int:
    """A time a request may give as engine ns (`ns_field`) and/or RFC 3339 (`rfc3339_field`): either one,
    or both when they name the same nanosecond (INVALID_TIMESTAMP when they differ)."""
    assert 0 <= nanos <= UINT64_MAX
    if not rfc3339:
        return nanos
    parsed = parse_rfc3339(rfc3339, field=rfc3339_field)
    if nanos and nanos != parsed:
        raise LedgerError(
            ErrorKind.INVALID,
            REASON_INVALID_TIMESTAMP,
            f"{ns_field} and {rfc3339_field} name different times: give one",
            {"field": rfc3339_field},
        )
    return parsed


SECONDS_FORMATTED_CACHED_MAX = 4096
"""Distinct seconds whose text is kept: answers come in bursts within the same few seconds."""


@functools.lru_cache(maxsize=SECONDS_FORMATTED_CACHED_MAX)
def _format_seconds(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def format_time(nanos: int) -> str:
    """Engine nanoseconds → RFC 3339 in UTC ("" for 0: no time). Exact: the fraction is integer digits,
    0, 3, 6 or 9 of them (as protobuf's JSON form of a Timestamp)."""
    assert 0 <= nanos <= UINT64_MAX
    if nanos == 0:
        return ""
    seconds, fraction = divmod(nanos, NANOS_PER_SECOND)
    if fraction == 0:
        return _format_seconds(seconds) + "Z"
    if fraction % 1_000_000 == 0:
        return f"{_format_seconds(seconds)}.{fraction // 1_000_000:03d}Z"
    if fraction % 1_000 == 0:
        return f"{_format_seconds(seconds)}.{fraction // 1_000:06d}Z"
    return f"{_format_seconds(seconds)}.{fraction:09d}Z"
