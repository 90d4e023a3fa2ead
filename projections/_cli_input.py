"""Input checks for the read-model commands: every bad input is one line on stderr and exit code 2.

Bad input is an operating error, not a programmer's: it gets a sentence naming the option, the value
and the accepted format, never a traceback. Parsing is done before anything is opened or written,
so a refused command leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
import time
from pathlib import Path
from typing import NoReturn

from projections.client import ClickHouseClient
from projections.queries import TIMESTAMP_MAX

__all__ = [
    "ACCOUNT_HELP",
    "EXIT_USAGE",
    "TIME_HELP",
    "CliInputError",
    "OneLineArgumentParser",
    "check_range",
    "empty_output_directory",
    "known_account",
    "parse_account",
    "parse_time",
]

EXIT_USAGE = 2
"""argparse's own exit code for bad usage: one code for every bad input."""
TIME_HELP = (
    "RFC 3339 (2026-01-31T12:00:00Z, 2026-01-31T12:00:00.123456789+01:00), a date (2026-01-31: midnight UTC), "
    "'now', or engine nanoseconds since the Unix epoch"
)
ACCOUNT_HELP = "account id: a decimal integer, 1 .. 2^128-2"
_U128_MAX = (1 << 128) - 1
_ACCOUNT_ID_MAX = _U128_MAX - 1
"""TigerBeetle reserves 0 and 2^128-1 as account ids."""
_TEXT_LENGTH_MAX = 64
"""Longer input is not a time or an id: it is cut in the error message, not echoed whole."""
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})")
_NANOSECONDS_PER_SECOND = 1_000_000_000


class CliInputError(ValueError):
    """A bad value on the command line: `run` prints `ledger <command>: <message>` and exits 2."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse's usage errors (missing or unknown options, bad choices) as one line, exit code 2;
    subparsers inherit the class, so every subcommand behaves the same."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)


def _shown(text: str) -> str:
    return repr(text if len(text) <= _TEXT_LENGTH_MAX else text[:_TEXT_LENGTH_MAX] + "...")


def parse_time(text: str, option: str = "time") -> int:
    """Engine nanoseconds since the Unix epoch from RFC 3339 (offset required, up to nanoseconds),
    a date (midnight UTC), `now`, or an integer of nanoseconds."""
    if text == "now":
        return time.time_ns()
    if text.isdigit() and len(text) <= len(str(TIMESTAMP_MAX)):
        value = int(text)
        if value > TIMESTAMP_MAX:
            raise CliInputError(f"{option}: {_shown(text)} is beyond the largest engine timestamp")
        return value
    try:
        if date := _DATE.fullmatch(text):
            year, month, day = date.groups()
            moment = datetime.datetime(int(year), int(month), int(day), tzinfo=datetime.UTC)
            fraction = 0
        elif full := _RFC3339.fullmatch(text):
            year, month, day, hour, minute, second, digits, offset = full.groups()
            zone = datetime.UTC
            if offset not in ("Z", "z"):
                sign = -1 if offset[0] == "-" else 1
                delta = datetime.timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
                zone = datetime.timezone(sign * delta)
            moment = datetime.datetime(
                int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=zone
            )
            fraction = int((digits or "0").ljust(9, "0"))
        else:
            raise ValueError("no format matched")
    except ValueError:
        raise CliInputError(f"{option}: {_shown(text)} is not a time; use {TIME_HELP}") from None
    seconds = int((moment - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)).total_seconds())
    if seconds < 0:
        raise CliInputError(f"{option}: {_shown(text)} is before 1970-01-01, the engine's epoch")
    value = seconds * _NANOSECONDS_PER_SECOND + fraction
    assert 0 <= fraction < _NANOSECONDS_PER_SECOND
    assert value >= 0
    return value


def check_range(timestamp_from: int, timestamp_to: int) -> None:
    if timestamp_from > timestamp_to:
        raise CliInputError("--from is after --to")


def parse_account(text: str) -> int:
    if not text.isdigit() or len(text) > len(str(_U128_MAX)) or not 1 <= int(text) <= _ACCOUNT_ID_MAX:
        raise CliInputError(f"account {_shown(text)} is not an account id ({ACCOUNT_HELP})")
    return int(text)


def known_account(client: ClickHouseClient, account_id: int) -> None:
    """Refuses an account the read model has no entry for: zero balances for a mistyped id would be
    indistinguishable from an account that has none."""
    found = client.query_rows(
        "SELECT 1 FROM entries WHERE account_id = {account_id:UInt128} LIMIT 1", {"account_id": account_id}
    )
    if not found:
        raise CliInputError(f"account {account_id} is unknown: the read model has no entry for it")


def empty_output_directory(text: str, option: str = "--out") -> Path:
    """A directory that does not exist yet or is empty: an export never mixes with other files."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise CliInputError(f"{option}: {text} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        raise CliInputError(f"{option}: {text} exists and is not empty; export into a new or empty directory")
    return path
