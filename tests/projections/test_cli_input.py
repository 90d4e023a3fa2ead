"""Bad input to the read-model commands: one line on stderr, exit code 2, nothing written; times as
RFC 3339, dates or `now`; help text on every option. Run through the installed `ledger` script."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ledger_testkit.service import ledger_executable
from projections import cli
from projections._cli_input import CliInputError, OneLineArgumentParser, parse_time
from tests.projections.test_cli import post_rounds

NS = 1_000_000_000
READ_MODEL_COMMANDS = ("statement", "balance", "totals", "correlation", "reconcile", "audit")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1970-01-01T00:00:01Z", NS),
        ("1970-01-01T00:00:01z", NS),
        ("1970-01-01 00:00:01Z", NS),
        ("1970-01-01T00:00:01.5Z", NS + NS // 2),
        ("1970-01-01T00:00:01.000000001Z", NS + 1),
        ("2026-01-31T12:00:00.123456789+01:00", 1_769_857_200 * NS + 123_456_789),
        ("2026-01-31T12:00:00-00:30", 1_769_862_600 * NS),
        ("1970-01-02", 86_400 * NS),
        ("2026-01-31", 1_769_817_600 * NS),
        ("1795581614956174029", 1_795_581_614_956_174_029),
        ("0", 0),
        (str((1 << 64) - 1), (1 << 64) - 1),
    ],
)
def test_times_accepted(text: str, expected: int) -> None:
    assert parse_time(text) == expected


def test_rfc3339_agrees_with_datetime() -> None:
    moment = datetime.datetime(2031, 7, 4, 23, 59, 58, 123456, tzinfo=datetime.UTC)
    assert parse_time(moment.isoformat()) == int(moment.timestamp()) * NS + 123_456_000
    before, now, after = time.time_ns(), parse_time("now"), time.time_ns()
    assert before <= now <= after


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-31T12:00:00",  # No offset: RFC 3339 needs one (local or UTC is not guessed).
        "2026-13-01",
        "2026-02-30",
        "2026-01-31T24:00:00Z",
        "2026-01-31T12:00:00.1234567890Z",  # Ten fraction digits: finer than the engine's ns.
        "31/01/2026",
        "yesterday",
        "",
        "-5",
        "1969-12-31T23:59:59Z",
        str(1 << 64),
        "1" * 200,
    ],
)
def test_times_refused(text: str) -> None:
    with pytest.raises(CliInputError, match="--from"):
        parse_time(text, "--from")


def _options(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _options(child, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_option_has_help_with_formats() -> None:
    parser = OneLineArgumentParser(prog="ledger")
    cli.register(parser.add_subparsers(dest="command", required=True))
    checked = 0
    for path, action in _options(parser, "ledger"):
        if path.split()[1] not in READ_MODEL_COMMANDS:
            continue
        assert action.help, f"{path} {action.dest} has no help"
        if action.dest in ("timestamp_from", "timestamp_to", "at"):
            assert "RFC 3339" in action.help and "2026-01-31" in action.help and "now" in action.help
        checked += 1
    assert checked >= 15


_OFFLINE = (("audit", "export"), ("audit", "verify"))


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., subprocess.CompletedProcess[str]]:
    """The installed console script over a projected ledger (2 rounds: 16 changes, accounts 1..6)."""
    tmp_path = tmp_path_factory.mktemp("cli-input")
    asyncio.run(post_rounds(tmp_path / "engine", 2))
    executable = ledger_executable()
    env = os.environ | {
        "LEDGER_ENGINE__DATA_DIR": str(tmp_path / "engine"),
        "LEDGER_API__METADATA_DB": str(tmp_path / "metadata.sqlite3"),
        "LEDGER_CLICKHOUSE__CHDB_PATH": str(tmp_path / "clickhouse"),
        "LEDGER_CLICKHOUSE__PROJECTOR_CHECKPOINT": str(tmp_path / "projector.json"),
        "LEDGER_AUDIT__DATA_DIR": str(tmp_path / "audit"),
    }

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        # The query commands open the files here (no service runs): tests/projections/test_cli_client.py
        # has them as clients of a running service.
        offline = ("--offline",) if argv[0] in ("statement", "balance", "totals") or argv[:2] in _OFFLINE else ()
        command = [executable, *argv, *offline]
        return subprocess.run(command, check=False, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)

    done = run("project", "--once")
    assert done.returncode == 0, done.stderr
    return run


def refused(done: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()  # One line: no traceback, no usage block.
    assert line.startswith("ledger ")
    for phrase in phrases:
        assert phrase in line, line


@pytest.mark.parametrize(
    ("argv", "phrases"),
    [
        (("statement", "3", "--from", "2026-13-01", "--to", "now"), ("--from", "'2026-13-01'", "RFC 3339")),
        (("statement", "3", "--from", "2026-01-01", "--to", "tomorrow"), ("--to", "'tomorrow'")),
        (("statement", "3", "--from", "2026-01-31T12:00:00", "--to", "now"), ("--from", "is not a time")),
        (("statement", "3", "--from", "now", "--to", "2020-01-01"), ("--from is after --to",)),
        (("statement", "3", "--from", "2020-01-01", "--to", "now", "--limit", "0"), ("--limit",)),
        (("statement", "3", "--from", "2020-01-01", "--to", "now", "--limit", "x"), ("--limit",)),
        (("statement", "3"), ("--from", "--to", "required")),
        (("statement", "999", "--from", "2020-01-01", "--to", "now"), ("account 999 is unknown",)),
        (("balance", "abc"), ("account 'abc' is not an account id",)),
        (("balance", "0"), ("is not an account id",)),
        (("balance", str(1 << 128)), ("is not an account id",)),
        (("balance", "999"), ("account 999 is unknown",)),
        (("balance", "3", "--at", "noon"), ("--at", "'noon'")),
        (("totals", "--from", "2026-01-01", "--to", "01/02/2026"), ("--to",)),
        (("audit", "export", "--from", "x", "--to", "now", "--out", "fresh"), ("--from",)),
        (("audit", "export", "--from", "0", "--to", "now", "--format", "xlsx", "--out", "fresh"), ("--format",)),
        (("audit", "verify", "--export", "missing"), ("--export", "no manifest.json")),
        (("audit", "verify", "--export", "missing", "--public-key", "nokey"), ("--export",)),
        (("audit", "frobnicate"), ("invalid choice",)),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    ledger: Callable[..., subprocess.CompletedProcess[str]], argv: tuple[str, ...], phrases: tuple[str, ...]
) -> None:
    refused(ledger(*argv), *phrases)


def test_export_refuses_a_non_empty_directory(
    tmp_path: Path, ledger: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me\n")
    refused(ledger("audit", "export", "--from", "0", "--to", "now", "--out", str(occupied)), "--out", "not empty")
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]  # Nothing written.
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    refused(ledger("audit", "export", "--from", "0", "--to", "now", "--out", str(a_file)), "not a directory")

    empty = tmp_path / "empty"
    empty.mkdir()
    done = ledger("audit", "export", "--from", "1970-01-01", "--to", "now", "--format", "parquet", "--out", str(empty))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["row_count"] == 16
    refused(ledger("audit", "export", "--from", "0", "--to", "now", "--out", str(empty)), "not empty")


def test_good_times_in_every_form(ledger: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    done = ledger("statement", "3", "--from", "1970-01-01", "--to", "2262-04-11T23:47:16.854775807Z")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["lines"]) > 0
    done = ledger("balance", "3", "--at", "2000-01-01T00:00:00+05:30")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["credits_posted"] == 0  # Before any transfer.
    done = ledger("totals", "--from", "0", "--to", "now")
    assert done.returncode == 0, done.stderr
    assert sum(json.loads(line)["transactions"] for line in done.stdout.splitlines()) == 16


def test_damaged_export_and_evidence_inputs(
    tmp_path: Path, ledger: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """A damaged manifest is a failed verification (exit 1, a report), not a traceback; proofs of what
    does not exist are bad input (exit 2, one line)."""
    export = tmp_path / "export"
    done = ledger("audit", "export", "--from", "0", "--to", "now", "--out", str(export))
    assert done.returncode == 0, done.stderr
    (export / "manifest.json").write_text("{not json")
    done = ledger("audit", "verify", "--export", str(export), "--files-only")
    assert done.returncode == 1 and done.stderr == "", done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is False and "manifest.json is unreadable" in report["problems"][0]["reason"]
    refused(ledger("audit", "prove", "--sequence", "10000"), "not in the checkpoint")
    refused(ledger("audit", "prove", "--sequence", "1", "--tree-size", "7"), "--tree-size", "no checkpoint")
    refused(ledger("audit", "prove", "--transaction", "no-such-transaction"), "no such change")
    refused(ledger("audit", "consistency", "--old", "7"), "no checkpoint")
