"""Statement reconciliation end to end over real chDB: a ledger account's entries posted by the
embedded engine and projected, then statements generated from them (camt.053 and CSV) with one
case of every rule and every mismatch, reconciled, persisted, exported and read back."""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from facade.changes.into_read_model import change_capture
from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import Transfer, TransferFlags
from facade.settings import ApiSettings, ClickHouseSettings, Settings
from ledger_events.gen.ledger.v1 import entries_pb2
from projections import cli
from projections.client import ChdbClient
from projections.projector import Projector
from projections.schema import create_tables
from projections.statements import (
    CsvMapping,
    Direction,
    LedgerEntry,
    MatchOptions,
    MatchRule,
    Reconciliation,
    ResultKind,
    StatementError,
    StatementFormat,
    StatementLine,
    StoredResult,
    load_results,
    load_run,
    match,
    minor_units,
    parse_camt053,
    reconcile_statement,
    write_results_csv,
)
from projections.statements._csv import parse_csv
from projections.statements._store import ledger_entries
from tests.projections.conftest import CODE, LEDGER, Metadata, drain

ACCOUNT = 2
FUNDING = 1
CURRENCIES = {"USD": (LEDGER, 2)}
OPTIONS = MatchOptions(date_window_days=3, tolerance=0)


@dataclass(frozen=True)
class Line:
    """A generated statement line: amount in minor units, signed (credit to the account positive)."""

    amount: int
    day: datetime.date
    reference: str = ""
    end_to_end_id: str = ""
    description: str = ""
    reversal: bool = False


async def post_ledger(engine: EmbeddedEngine, metadata: Metadata) -> dict[str, int]:
    """The account's ledger: name -> transfer id. Amounts in cents."""
    plan = [
        # name, debit, credit, amount, correlation id, idempotency key
        ("exact", FUNDING, ACCOUNT, 10_000, "INV-1", "key-1"),
        ("amount_date", FUNDING, ACCOUNT, 2_550, "corr-2", "key-2"),
        ("part_a", FUNDING, ACCOUNT, 3_000, "", ""),
        ("part_b", FUNDING, ACCOUNT, 4_500, "", ""),
        ("split", ACCOUNT, FUNDING, 9_000, "", ""),
        ("amount_off", FUNDING, ACCOUNT, 1_234, "", "key-6"),
        ("date_off", FUNDING, ACCOUNT, 777, "INV-7", "key-7"),
        ("ledger_only", FUNDING, ACCOUNT, 99_999, "", ""),
        ("duplicated", FUNDING, ACCOUNT, 5_000, "INV-9", "key-9"),
        # Paid and refunded before the bank saw either: a reversal on the ledger side.
        ("refunded", FUNDING, ACCOUNT, 6_000, "ORD-5", "key-10"),
        ("refund", ACCOUNT, FUNDING, 6_000, "ORD-5", "key-11"),
    ]
    ids: dict[str, int] = {}
    transfers = []
    for number, (name, debit, credit, amount, correlation, key) in enumerate(plan, start=100):
        ids[name] = number
        transfers.append(
            Transfer(
                id=number, debit_account_id=debit, credit_account_id=credit, amount=amount, ledger=LEDGER, code=CODE
            )
        )
        if correlation or key:
            metadata.by_transfer[number] = entries_pb2.EntryMetadata(
                transaction_id=f"tx-{number}", correlation_id=correlation, idempotency_key=key, currency="USD"
            )
    # A reservation and its void move no posted money: never part of a reconciliation.
    transfers.append(
        Transfer(id=200, debit_account_id=FUNDING, credit_account_id=ACCOUNT, amount=11_111, ledger=LEDGER, code=CODE,
                 flags=TransferFlags.PENDING)
    )  # fmt: skip
    results = await engine.create_transfers(transfers)
    assert all(r.status.name == "CREATED" for r in results)
    void = Transfer(id=201, pending_id=200, ledger=LEDGER, code=CODE, flags=TransferFlags.VOID_PENDING_TRANSFER)
    assert (await engine.create_transfers([void]))[0].status.name == "CREATED"
    return ids


def statement_lines(entries: list[LedgerEntry], ids: dict[str, int]) -> list[Line]:
    """One line (or several) per case, dated relative to the ledger entries' own dates."""
    day = {entry.transfer_id: entry.date for entry in entries}

    def on(name: str, days: int = 0) -> datetime.date:
        return day[ids[name]] + datetime.timedelta(days=days)

    return [
        Line(10_000, on("exact"), reference="BANKREF-1", end_to_end_id="INV-1", description="invoice 1"),
        Line(2_550, on("amount_date", 1), description="no reference, one day late"),
        Line(7_500, on("part_a"), reference="BATCH-3", description="one line for two entries"),
        Line(-4_000, on("split"), description="first half"),
        Line(-5_000, on("split", 1), description="second half"),
        Line(1_243, on("amount_off"), reference="key-6", description="amount differs"),
        Line(777, on("date_off", 5), end_to_end_id="INV-7", description="booked five days later"),
        Line(33_333, on("exact"), reference="UNKNOWN-1", description="not in the ledger"),
        Line(5_000, on("duplicated"), reference="INV-9", description="sent twice"),
        Line(5_000, on("duplicated"), reference="INV-9", description="sent twice"),
        Line(2_000, on("exact"), reference="R-1", description="paid in"),
        Line(-2_000, on("exact"), reference="R-1", description="returned", reversal=True),
    ]


def decimal_text(minor: int) -> str:
    return f"{abs(minor) // 100}.{abs(minor) % 100:02d}"


def camt053(lines: list[Line]) -> bytes:
    entries = []
    for number, line in enumerate(lines, start=1):
        references = f"<Refs><EndToEndId>{line.end_to_end_id or 'NOTPROVIDED'}</EndToEndId></Refs>"
        entries.append(
            f"""<Ntry><NtryRef>{line.reference}</NtryRef>
<Amt Ccy="USD">{decimal_text(line.amount)}</Amt><CdtDbtInd>{"CRDT" if line.amount > 0 else "DBIT"}</CdtDbtInd>
{"<RvslInd>true</RvslInd>" if line.reversal else ""}<Sts><Cd>BOOK</Cd></Sts>
<BookgDt><Dt>{line.day.isoformat()}</Dt></BookgDt><ValDt><Dt>{line.day.isoformat()}</Dt></ValDt>
<AcctSvcrRef>SVC-{number}</AcctSvcrRef>
<NtryDtls><TxDtls>{references}<RmtInf><Ustrd>{line.description}</Ustrd></RmtInf></TxDtls></NtryDtls></Ntry>"""
        )
    pending = """<Ntry><Amt Ccy="USD">1.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts><Cd>PDNG</Cd></Sts>
<BookgDt><Dt>2026-01-01</Dt></BookgDt></Ntry>"""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.08"><BkToCstmrStmt>
<GrpHdr><MsgId>MSG-1</MsgId><CreDtTm>2026-01-01T00:00:00Z</CreDtTm></GrpHdr>
<Stmt><Id>STMT-1</Id><Acct><Id><IBAN>DE00123456780000000000</IBAN></Id></Acct>
{"".join(entries)}{pending}</Stmt></BkToCstmrStmt></Document>""".encode()


def csv_statement(lines: list[Line]) -> bytes:
    """A European layout: ';' separated, decimal comma, dd.mm.yyyy, a direction column."""
    rows = ["Buchungstag;Betrag;Soll/Haben;Referenz;E2E;Verwendungszweck"]
    for line in lines:
        amount = decimal_text(line.amount).replace(".", ",")
        direction = "H" if line.amount > 0 else "S"
        rows.append(
            f'{line.day:%d.%m.%Y};{amount};{direction};{line.reference};{line.end_to_end_id};"{line.description}"'
        )
    return ("\n".join(rows) + "\n").encode()


CSV_MAPPING = [
    "date=Buchungstag",
    "amount=Betrag",
    "direction=Soll/Haben",
    "reference=Referenz",
    "end_to_end_id=E2E",
    "description=Verwendungszweck",
    "date_format=%d.%m.%Y",
    "delimiter=;",
    "decimal=,",
]


async def setup_ledger(tmp_path: Path, engine: EmbeddedEngine, client: ChdbClient, metadata: Metadata) -> list[Line]:
    ids = await post_ledger(engine, metadata)
    await drain(change_capture(engine, Projector(client), tmp_path / "cp.json", metadata))
    create_tables(client)
    entries = ledger_entries(client, ACCOUNT, datetime.date(1970, 1, 1), datetime.date(2999, 1, 1))
    assert len(entries) == 11, "pending and voided entries are not posted money"
    return statement_lines(entries, ids)


def check_every_case(reconciliation: Reconciliation) -> None:
    by_line: dict[int, list[StoredResult]] = {}
    for r in reconciliation.results:
        for number in r.line_numbers:
            by_line.setdefault(number, []).append(r)
    assert all(len(v) == 1 for v in by_line.values()), "each statement line in exactly one result"
    assert sorted(by_line) == list(range(1, 13))
    kind_rule = {n: (v[0].kind, v[0].rule) for n, v in by_line.items()}
    assert kind_rule == {
        1: (ResultKind.MATCHED, MatchRule.REFERENCE),
        2: (ResultKind.MATCHED, MatchRule.AMOUNT_DATE),
        3: (ResultKind.MATCHED, MatchRule.ONE_TO_MANY),
        4: (ResultKind.MATCHED, MatchRule.MANY_TO_ONE),
        5: (ResultKind.MATCHED, MatchRule.MANY_TO_ONE),
        6: (ResultKind.MATCHED, MatchRule.REFERENCE),
        7: (ResultKind.MATCHED, MatchRule.REFERENCE),
        8: (ResultKind.UNMATCHED_STATEMENT, MatchRule.NONE),
        9: (ResultKind.MATCHED, MatchRule.REFERENCE),
        10: (ResultKind.DUPLICATE, MatchRule.NONE),
        11: (ResultKind.REVERSAL, MatchRule.NONE),
        12: (ResultKind.REVERSAL, MatchRule.NONE),
    }
    results = {r.line_numbers[0] if r.line_numbers else 0: r for r in reconciliation.results}
    assert results[1].transfer_ids == (100,) and results[1].amount_difference == 0
    assert results[2].transfer_ids == (101,) and results[2].date_difference_days == 1
    assert sorted(results[3].transfer_ids) == [102, 103] and results[3].ledger_amount == 7_500
    assert results[4].line_numbers == (4, 5) and results[4].transfer_ids == (104,)
    assert results[4].statement_amount == results[4].ledger_amount == -9_000
    assert results[6].transfer_ids == (105,) and results[6].amount_difference == 1_243 - 1_234
    assert results[7].transfer_ids == (106,) and results[7].date_difference_days == 5
    assert results[9].transfer_ids == (108,)
    assert results[10].note == "repeats line 9"
    assert results[11].line_numbers == (11, 12) and results[11].statement_amount == 0
    ledger_reversal = [r for r in reconciliation.results if r.kind is ResultKind.REVERSAL and not r.line_numbers]
    assert [r.transfer_ids for r in ledger_reversal] == [(109, 110)]
    unmatched_ledger = [r for r in reconciliation.results if r.kind is ResultKind.UNMATCHED_LEDGER]
    assert [r.transfer_ids for r in unmatched_ledger] == [(107,)] and unmatched_ledger[0].ledger_amount == 99_999
    summary = reconciliation.summary
    assert (summary.statement_lines, summary.ledger_entries, summary.matched) == (12, 11, 7)
    assert (summary.unmatched_statement, summary.unmatched_ledger) == (1, 1)
    assert (summary.duplicates, summary.reversals) == (1, 2)
    assert (summary.amount_discrepancies, summary.date_discrepancies) == (1, 3)


async def test_camt053_and_csv_statements_reconcile_every_case(
    tmp_path: Path, engine: EmbeddedEngine, client: ChdbClient, metadata: Metadata
) -> None:
    lines = await setup_ledger(tmp_path, engine, client, metadata)
    camt = reconcile_statement(
        client, account_id=ACCOUNT, data=camt053(lines), statement_format=StatementFormat.CAMT053,
        currencies=CURRENCIES, options=OPTIONS,
    )  # fmt: skip
    assert camt.created
    check_every_case(camt)
    from_csv = reconcile_statement(
        client, account_id=ACCOUNT, data=csv_statement(lines), statement_format=StatementFormat.CSV,
        currencies=CURRENCIES, mapping=CsvMapping.parse(CSV_MAPPING), options=OPTIONS,
    )  # fmt: skip
    assert from_csv.created and from_csv.summary.run_id != camt.summary.run_id
    check_every_case(from_csv)

    # Persisted: the run and its results read back from the read model, once each.
    assert load_run(client, camt.summary.run_id) == camt.summary
    assert load_results(client, camt.summary.run_id) == camt.results
    again = reconcile_statement(
        client, account_id=ACCOUNT, data=camt053(lines), statement_format=StatementFormat.CAMT053,
        currencies=CURRENCIES, options=OPTIONS,
    )  # fmt: skip
    assert not again.created and again.summary == camt.summary and again.results == camt.results
    counts = client.query_rows(
        "SELECT count() FROM reconciliation_results WHERE run_id = {run:String}", {"run": camt.summary.run_id}
    )
    assert counts == [[len(camt.results)]]
    assert client.query_rows("SELECT count() FROM reconciliation_runs") == [[2]]

    # Exported: the CSV holds every result with exact decimal amounts and quoted ids.
    out = tmp_path / "results.csv"
    assert write_results_csv(out, camt.summary, camt.results, 2) == len(camt.results)
    with out.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(camt.results)
    discrepancy = next(row for row in rows if row["statement_lines"] == "6")
    assert (discrepancy["amount_difference"], discrepancy["amount_difference_minor"]) == ("0.09", "9")
    assert (
        '"104"' in out.read_text() and next(r for r in rows if r["statement_lines"] == "4;5")["transfer_ids"] == "104"
    )


async def test_tolerance_and_window_are_options(
    tmp_path: Path, engine: EmbeddedEngine, client: ChdbClient, metadata: Metadata
) -> None:
    lines = await setup_ledger(tmp_path, engine, client, metadata)
    # The batch line is 1 cent short: matched only with a tolerance of at least 1 minor unit.
    short = [Line(7_499, lines[2].day, description="short batch")]
    strict = reconcile_statement(
        client, account_id=ACCOUNT, data=camt053(short), statement_format=StatementFormat.CAMT053,
        currencies=CURRENCIES, options=OPTIONS,
    )  # fmt: skip
    assert [r.kind for r in strict.results if r.line_numbers] == [ResultKind.UNMATCHED_STATEMENT]
    tolerant = reconcile_statement(
        client, account_id=ACCOUNT, data=camt053(short), statement_format=StatementFormat.CAMT053,
        currencies=CURRENCIES, options=MatchOptions(date_window_days=3, tolerance=1),
    )  # fmt: skip
    batch = next(r for r in tolerant.results if r.line_numbers)
    assert (batch.kind, batch.rule, batch.amount_difference) == (ResultKind.MATCHED, MatchRule.ONE_TO_MANY, -1)
    # The bank's reversal flag pairs lines that share no reference; without it they stay unmatched.
    day = lines[0].day
    flagged = [Line(1_500, day, description="card"), Line(-1_500, day, description="card", reversal=True)]
    for statement, kinds in (
        (flagged, [ResultKind.REVERSAL]),
        ([flagged[0], Line(-1_500, day)], [ResultKind.UNMATCHED_STATEMENT] * 2),
    ):
        run = reconcile_statement(
            client, account_id=ACCOUNT, data=camt053(statement), statement_format=StatementFormat.CAMT053,
            currencies=CURRENCIES, options=OPTIONS,
        )  # fmt: skip
        assert [r.kind for r in run.results if r.line_numbers] == kinds
    # One day late, with a window of 0 days: no amount+date match.
    late = [Line(2_550, lines[1].day)]
    windowless = reconcile_statement(
        client, account_id=ACCOUNT, data=camt053(late), statement_format=StatementFormat.CAMT053,
        currencies=CURRENCIES, options=MatchOptions(date_window_days=0),
    )  # fmt: skip
    assert next(r for r in windowless.results if r.line_numbers).kind is ResultKind.UNMATCHED_STATEMENT


BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<Document><BkToCstmrStmt><Stmt><Ntry><Amt Ccy="USD">1.00</Amt><CdtDbtInd>CRDT</CdtDbtInd>
<BookgDt><Dt>2026-01-01</Dt></BookgDt><NtryRef>&lol3;</NtryRef></Ntry></Stmt></BkToCstmrStmt></Document>"""
EXTERNAL = b"""<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<Document><BkToCstmrStmt><Stmt/></BkToCstmrStmt></Document>"""


@pytest.mark.parametrize("document", [BOMB, EXTERNAL])
def test_malicious_xml_is_refused(document: bytes) -> None:
    with pytest.raises(StatementError, match="refused"):
        parse_camt053(document, currency="USD", scale=2)


def test_amounts_are_exact_minor_units() -> None:
    assert minor_units("0.1", 2) == 10
    assert minor_units("1234567890123456789012345.67", 2) == 123456789012345678901234567
    assert minor_units("1.234,56", 2, decimal_separator=",", thousands_separator=".") == 123_456
    assert minor_units("-5", 0) == -5
    for bad in ("0.001", "1e400", "1E+999999999999", "1e-999999999999", "NaN", "-Infinity", "abc", "", "1.2.3"):
        with pytest.raises(StatementError):
            minor_units(bad, 2)


def command(settings: Settings, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], list[str]]:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    code = cli.run(parser.parse_args(argv), settings)
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.splitlines()


async def test_cli(
    tmp_path: Path, engine: EmbeddedEngine, metadata: Metadata, capsys: pytest.CaptureFixture[str]
) -> None:
    client = ChdbClient(tmp_path / "clickhouse", "ledger")
    try:
        lines = await setup_ledger(tmp_path, engine, client, metadata)
    finally:
        client.close()
    settings = Settings(
        clickhouse=ClickHouseSettings(chdb_path=tmp_path / "clickhouse", projector_checkpoint=tmp_path / "cp.json"),
        api=ApiSettings(metadata_db=tmp_path / "metadata.sqlite3"),
    )
    statement = tmp_path / "statement.csv"
    statement.write_bytes(csv_statement(lines))
    camt = tmp_path / "statement.xml"
    camt.write_bytes(camt053(lines))
    mapping = [arg for pair in CSV_MAPPING for arg in ("--mapping", pair)]
    out = tmp_path / "results.csv"
    code, stdout, _ = command(
        settings, capsys, "statement-reconcile", str(ACCOUNT), "--file", str(statement), *mapping, "--out", str(out)
    )
    assert code == 0
    report = json.loads(stdout[0])
    assert (report["matched"], report["unmatched_statement"], report["unmatched_ledger"]) == (7, 1, 1)
    assert report["created"] is True and report["statement_format"] == "csv"
    exceptions = [json.loads(line) for line in stdout[1:]]
    # Unmatched on each side, the duplicate, both reversals, and the three dated or priced differently.
    assert sorted(e["kind"] for e in exceptions) == sorted(
        ["UNMATCHED_STATEMENT", "UNMATCHED_LEDGER", "DUPLICATE", "REVERSAL", "REVERSAL"] + ["MATCHED"] * 4
    )
    assert {tuple(e["transfer_ids"]) for e in exceptions if e["kind"] == "MATCHED"} == {(101,), (104,), (105,), (106,)}
    assert len(out.read_text().splitlines()) == 1 + 7 + 1 + 1 + 1 + 2
    code, stdout, _ = command(settings, capsys, "statement-reconcile", "2", "--file", str(camt), "--format", "camt053")
    assert code == 0 and json.loads(stdout[0])["matched"] == 7

    bomb = tmp_path / "bomb.xml"
    bomb.write_bytes(BOMB)
    bad_amount = tmp_path / "bad.csv"
    bad_amount.write_text("date,amount\n2026-01-01,1.001\n")
    ancient = tmp_path / "ancient.csv"
    ancient.write_text("date,amount\n0001-01-01,1.00\n")
    failures = [
        ("2", "--file", str(bomb), "--format", "camt053"),
        ("2", "--file", str(bad_amount)),
        ("99", "--file", str(statement), *mapping),
        ("x", "--file", str(statement), *mapping),
        ("2", "--file", str(tmp_path / "missing.csv")),
        ("2", "--file", str(statement), "--mapping", "colour=red"),
        ("2", "--file", str(statement), *mapping, "--out", str(out)),
        ("2", "--file", str(statement), *mapping, "--date-window-days", "-1"),
        ("2", "--file", str(statement)),
        ("2", "--file", str(statement), *mapping, "--run-id", "rün"),
        ("2", "--file", str(camt), "--format", "camt053", "--run-id", report["run_id"]),
        ("2", "--file", str(ancient)),
    ]
    for arguments in failures:
        code, stdout, stderr = command(settings, capsys, "statement-reconcile", *arguments)
        assert (code, stdout, len(stderr)) == (2, [], 1), arguments
        assert stderr[0].startswith("ledger statement-reconcile: error: ")

    # The read model held by someone else (here: this process; in production the running service).
    holder = ChdbClient(tmp_path / "clickhouse", "ledger")
    try:
        code, stdout, stderr = command(
            settings, capsys, "statement-reconcile", "2", "--file", str(camt), "--format", "camt053"
        )
    finally:
        holder.close()
    assert (code, stdout, len(stderr)) == (1, [], 1) and "the read model is unavailable" in stderr[0]


EPOCH_DAY = datetime.date(2026, 3, 1)
NANOSECONDS_PER_DAY = 86_400 * 1_000_000_000


@hypothesis_settings(max_examples=200, deadline=None)
@given(
    ledger=st.lists(
        st.tuples(st.integers(0, 6), st.sampled_from([-1, 1]), st.integers(1, 60), st.sampled_from(["", "a", "b"])),
        max_size=30,
    ),
    statement=st.lists(
        st.tuples(st.integers(0, 6), st.sampled_from([-1, 1]), st.integers(1, 60), st.sampled_from(["", "a", "c"]),
                  st.booleans()),
        max_size=30,
    ),
    window=st.integers(0, 3),
    tolerance=st.integers(0, 2),
)  # fmt: skip
def test_matching_invariants(
    ledger: list[tuple[int, int, int, str]],
    statement: list[tuple[int, int, int, str, bool]],
    window: int,
    tolerance: int,
) -> None:
    """Whatever the statement and ledger: every line and entry in exactly one result (match() asserts
    it), and every match obeys its rule: same direction, amounts equal (reference: or the one
    candidate), within the window (all but reference), sums within the tolerance (groups)."""
    start = (EPOCH_DAY - datetime.date(1970, 1, 1)).days * NANOSECONDS_PER_DAY
    entries = [
        LedgerEntry(f"e{i}", start + day * NANOSECONDS_PER_DAY + i, sign * amount, i + 1, reference, "", "", "")
        for i, (day, sign, amount, reference) in enumerate(ledger)
    ]
    lines = [
        StatementLine(
            line_number=i + 1, booking_date=EPOCH_DAY + datetime.timedelta(days=day), value_date=None, amount=amount,
            direction=Direction.CREDIT if sign > 0 else Direction.DEBIT, currency="USD", reference=reference,
            end_to_end_id="", description="", reversal=flag,
        )
        for i, (day, sign, amount, reference, flag) in enumerate(statement)
    ]  # fmt: skip
    options = MatchOptions(date_window_days=window, tolerance=tolerance)
    results = match(lines, entries, options)
    by_number = {line.line_number: line for line in lines}
    by_id = {entry.event_id: entry for entry in entries}
    for result in results:
        if result.kind is not ResultKind.MATCHED:
            continue
        signs = {by_number[n].signed_amount > 0 for n in result.line_numbers}
        signs |= {by_id[e].signed_amount > 0 for e in result.event_ids}
        assert len(signs) == 1, result
        if result.rule is MatchRule.AMOUNT_DATE:
            assert result.amount_difference == 0 and result.date_difference_days <= window
        elif result.rule in (MatchRule.ONE_TO_MANY, MatchRule.MANY_TO_ONE):
            assert abs(result.amount_difference) <= tolerance and result.date_difference_days <= window
            assert 2 <= max(len(result.line_numbers), len(result.event_ids)) <= 3
        else:
            assert result.rule is MatchRule.REFERENCE and len(result.line_numbers) == len(result.event_ids) == 1
            line, entry = by_number[result.line_numbers[0]], by_id[result.event_ids[0]]
            assert set(line.references) & entry.references


def test_a_repeat_the_ledger_explains_is_not_a_duplicate() -> None:
    """Two equal card payments on one day, both "POS" on the statement: two payments when the ledger
    has two; a duplicate when it has one."""
    start = (EPOCH_DAY - datetime.date(1970, 1, 1)).days * NANOSECONDS_PER_DAY
    lines = [
        StatementLine(
            line_number=n, booking_date=EPOCH_DAY, value_date=None, amount=450, direction=Direction.DEBIT,
            currency="USD", reference="POS", end_to_end_id="", description="coffee",
        )
        for n in (1, 2)
    ]  # fmt: skip
    both = [LedgerEntry(f"e{i}", start + i, -450, i, "", "", "", "") for i in (1, 2)]
    assert [(r.kind, r.rule) for r in match(lines, both, OPTIONS)] == [(ResultKind.MATCHED, MatchRule.AMOUNT_DATE)] * 2
    one = match(lines, both[:1], OPTIONS)
    assert [r.kind for r in one] == [ResultKind.MATCHED, ResultKind.DUPLICATE] and one[1].note == "repeats line 1"


BATCH = b"""<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"><BkToCstmrStmt><Stmt>
<Ntry><Amt Ccy="EUR">1500.25</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts>BOOK</Sts>
<BookgDt><DtTm>2026-03-02T09:30:00+01:00</DtTm></BookgDt><AcctSvcrRef>BATCH-77</AcctSvcrRef>
<NtryDtls><Btch><NbOfTxs>3</NbOfTxs></Btch>
<TxDtls><Refs><EndToEndId>E2E-1</EndToEndId></Refs><RmtInf><Ustrd>first</Ustrd></RmtInf></TxDtls>
<TxDtls><Refs><EndToEndId>E2E-2</EndToEndId></Refs></TxDtls>
<TxDtls><Refs><EndToEndId>E2E-3</EndToEndId></Refs></TxDtls>
</NtryDtls></Ntry></Stmt></BkToCstmrStmt></Document>"""


def test_a_camt053_batch_booking_settles_one_entry_per_end_to_end_id() -> None:
    """camt.053.001.02 (Sts as text, BookgDt as DtTm): one booked entry for three payments, each
    known to the ledger by its EndToEndId (here the idempotency key) and one of them far from the
    others in amount: no amount rule could find them, the references do."""
    (line,) = parse_camt053(BATCH, currency="EUR", scale=2)
    assert (line.amount, line.booking_date, line.reference) == (150_025, datetime.date(2026, 3, 2), "BATCH-77")
    assert line.batch_references == ("E2E-1", "E2E-2", "E2E-3") and line.end_to_end_id == "E2E-1"
    start = (EPOCH_DAY - datetime.date(1970, 1, 1)).days * NANOSECONDS_PER_DAY
    entries = [
        LedgerEntry(f"e{i}", start + i, amount, i, "", f"E2E-{i}", "", "")
        for i, amount in ((1, 100_000), (2, 50_000), (3, 25), (4, 25))
    ]
    results = match([line], entries, OPTIONS)
    assert (results[0].kind, results[0].rule, results[0].transfer_ids) == (
        ResultKind.MATCHED,
        MatchRule.ONE_TO_MANY,
        (1, 2, 3),
    )
    assert [r.transfer_ids for r in results[1:]] == [(4,)] and results[1].kind is ResultKind.UNMATCHED_LEDGER
    # One payment missing from the ledger: the batch is not settled by reference (nor by amount).
    assert match([line], entries[:2], OPTIONS)[0].kind is ResultKind.UNMATCHED_STATEMENT


CSV_CELLS = st.sampled_from(
    ["2026-01-01", "01.02.2026", "1,00", "1.5", "-2", "0", "1e3", "C", "DBIT", "x", "", '"', "NaN", "9" * 41]
)  # fmt: skip


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(st.lists(st.one_of(CSV_CELLS, st.text(max_size=8)), min_size=0, max_size=5), max_size=6),
    mapping=st.lists(st.sampled_from([*CSV_MAPPING, "direction=c", "amount=b", "date=a", "decimal=,", "delimiter=;"])),
    raw=st.binary(max_size=64),
)
def test_any_statement_bytes_give_lines_or_one_statement_error(
    rows: list[list[str]], mapping: list[str], raw: bytes
) -> None:
    """Whatever the bytes, parsing answers lines or a StatementError (the CLI's one-line error, the
    API's 400), never another exception."""
    text = "a,b,c,Buchungstag,Betrag,Soll/Haben\n" + "\n".join(",".join(row) for row in rows)
    for data in (text.encode("utf-8", "surrogatepass"), raw, b"<Document><BkToCstmrStmt><Stmt>" + raw):
        with contextlib.suppress(StatementError):
            parse_csv(data, CsvMapping.parse(mapping), currency="USD", scale=2)
        with contextlib.suppress(StatementError):
            parse_camt053(data, currency="USD", scale=2)
