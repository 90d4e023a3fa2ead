"""Exports an analyst loads: pyarrow and chDB read each format with typed columns, and the posted sums
per account equal the engine's balances exactly, including amounts at the decimal128 edge and u128 max."""

from __future__ import annotations

import csv
import decimal
import json
from pathlib import Path

import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no type hints.
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest
from hypothesis import given
from hypothesis import strategies as st

from facade.changes.into_read_model import change_capture
from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import Account, Transfer
from facade.settings import CurrencySettings
from projections import audit
from projections._analyst_columns import AmountScales, rfc3339_nanoseconds
from projections._cli_input import parse_time
from projections.client import ChdbClient
from projections.projector import Projector
from projections.queries import TIMESTAMP_MAX
from tests.projections.conftest import CODE, LEDGER, Metadata, Workload, drain

ROUNDS = 3
JPY_LEDGER = 392
UNKNOWN_LEDGER = 4242
"""A ledger the currency table does not know: no scale, a null decimal."""
DECIMAL_FITS = 10**38 - 1
"""The largest amount decimal128(38, 2) holds at scale 2 (unscaled digits = the amount's)."""
DECIMAL_OVERFLOWS = 10**38
U128_MAX = (1 << 128) - 1
EDGE_ACCOUNTS = {7: LEDGER, 8: LEDGER, 9: LEDGER, 10: LEDGER, 11: JPY_LEDGER, 12: JPY_LEDGER}
EDGE_ACCOUNTS |= {13: UNKNOWN_LEDGER, 14: UNKNOWN_LEDGER}
EDGE_TRANSFERS = (
    (7, 8, DECIMAL_FITS, LEDGER),
    (7, 9, DECIMAL_OVERFLOWS, LEDGER),
    (9, 10, U128_MAX, LEDGER),
    (11, 12, 500, JPY_LEDGER),
    (12, 11, 1, JPY_LEDGER),
    (13, 14, 42, UNKNOWN_LEDGER),
)
POSTED_CHANGES = ("SINGLE_PHASE", "TWO_PHASE_POSTED")
EXACT = decimal.Context(prec=100)


@pytest.fixture
async def exported(
    tmp_path: Path, engine: EmbeddedEngine, client: ChdbClient, metadata: Metadata, workload: Workload
) -> tuple[dict[int, tuple[int, int]], dict[str, Path]]:
    """The engine's (debits_posted, credits_posted) per account, and a CSV and a Parquet export of everything."""
    created = await engine.create_accounts([Account(id=i, ledger=lg, code=CODE) for i, lg in EDGE_ACCOUNTS.items()])
    assert all(r.status.name == "CREATED" for r in created)
    for number in range(ROUNDS):
        await workload.round(number)
    for transfer_id, (debit, credit, amount, ledger) in enumerate(EDGE_TRANSFERS, start=90_000):
        await workload.post(
            [Transfer(id=transfer_id, debit_account_id=debit, credit_account_id=credit, amount=amount,
                      ledger=ledger, code=CODE)]
        )  # fmt: skip
    await drain(change_capture(engine, Projector(client), tmp_path / "cp.json", metadata))
    accounts = await engine.lookup_accounts([*range(1, 7), *EDGE_ACCOUNTS])
    balances = {a.id: (a.debits_posted, a.credits_posted) for a in accounts}
    assert balances[10] == (0, U128_MAX)
    directories = {}
    for fmt in ("csv", "parquet"):
        directory = tmp_path / f"export-{fmt}"
        manifest = audit.export(
            client, directory, timestamp_from=0, timestamp_to=TIMESTAMP_MAX, fmt=fmt, progress=False
        )
        # Null decimals: the 10**38 and u128-max rows in Parquet (39 digits), the unknown ledger's row in both.
        assert manifest.amount_decimal_null_rows == (3 if fmt == "parquet" else 1)
        assert manifest.amount_decimal_scale == 2
        assert audit.verify_export(directory).ok
        directories[fmt] = directory
    return balances, directories


def posted_sums(rows: list[dict[str, object]], amount: str) -> dict[int, tuple[int, int]]:
    """(debits, credits) per account from export rows, the amount read from column `amount` as an int."""
    sums: dict[int, list[int]] = {}
    for row in rows:
        if row["change"] not in POSTED_CHANGES:
            continue
        value = int(str(row[amount]))
        sums.setdefault(int(str(row["debit_account_id"])), [0, 0])[0] += value
        sums.setdefault(int(str(row["credit_account_id"])), [0, 0])[1] += value
    return {account: (debits, credits) for account, (debits, credits) in sums.items()}


def test_parquet_with_pyarrow(exported: tuple[dict[int, tuple[int, int]], dict[str, Path]]) -> None:
    balances, directories = exported
    table = pa.concat_tables([pq.read_table(path) for path in sorted(directories["parquet"].glob("*.parquet"))])
    schema = table.schema
    assert schema.field("engine_time").type == pa.timestamp("ns", tz="UTC")
    assert schema.field("transfer_time").type == pa.timestamp("ns", tz="UTC")
    assert schema.field("amount_decimal").type == pa.decimal128(38, 2)
    assert schema.field("labels_map").type == pa.map_(pa.string(), pa.string())
    assert b"beyond 38 digits" in schema.field("amount_decimal").metadata[b"description"]
    # The typed time is the raw engine nanoseconds, to the nanosecond.
    assert table.column("engine_time").cast(pa.int64()).to_pylist() == table.column("engine_timestamp").to_pylist()
    rows = table.drop_columns(["engine_time", "transfer_time"]).to_pylist()
    assert posted_sums(rows, "amount") == {account: balances[account] for account in posted_sums(rows, "amount")}
    assert set(posted_sums(rows, "amount")) == set(balances)
    for row in rows:
        amount, scale, value = int(row["amount"]), row["amount_scale"], row["amount_decimal"]
        assert dict(row["labels_map"]) == json.loads(row["labels"])
        if row["ledger"] == UNKNOWN_LEDGER:
            assert (scale, value) == (None, None)
        elif amount >= DECIMAL_OVERFLOWS:
            assert (scale, value) == (2, None)  # Null, never rounded: `amount` holds it exactly.
        else:
            assert EXACT.multiply(value, decimal.Decimal(10**scale)) == amount
    assert {row["amount_decimal"] for row in rows if int(row["amount"]) == DECIMAL_FITS} == {
        decimal.Decimal("999999999999999999999999999999999999.99")
    }
    assert {row["amount_decimal"] for row in rows if row["ledger"] == JPY_LEDGER} == {
        decimal.Decimal("500.00"),
        decimal.Decimal("1.00"),
    }


def test_csv_with_pyarrow(exported: tuple[dict[int, tuple[int, int]], dict[str, Path]]) -> None:
    import pyarrow.csv as pcsv  # type: ignore[import-untyped]

    balances, directories = exported
    (path,) = directories["csv"].glob("*.csv")
    text = path.read_text()
    header, first = text.splitlines()[:2]
    assert header.startswith('"engine_timestamp","change","debit_account_id"')
    cells = next(csv.reader([first], quoting=csv.QUOTE_NONE))
    names = next(csv.reader([header]))
    assert cells[names.index("transfer_id")].startswith('"')  # Ids quoted: no reader makes them floats.
    # pyarrow's inference ignores quotes (a u128 would become a double): ids and amounts are read as
    # text, as the data dictionary says (docs/exports.md); times are inferred as UTC instants.
    text_columns = ("debit_account_id", "credit_account_id", "amount", "transfer_id", "pending_id", "user_data_128")
    options = pcsv.ConvertOptions(column_types={name: pa.string() for name in (*text_columns, "amount_decimal")})
    table = pcsv.read_csv(path, convert_options=options)
    assert table.schema.field("engine_time").type == pa.timestamp("ns", tz="UTC")
    assert table.column("engine_time").cast(pa.int64()).to_pylist() == table.column("engine_timestamp").to_pylist()
    rows = table.drop_columns(["engine_time", "transfer_time"]).to_pylist()
    assert posted_sums(rows, "amount") == balances
    for row in rows:
        if row["ledger"] == UNKNOWN_LEDGER:
            assert (row["amount_decimal"], row["amount_scale"]) == ("", None)  # Empty (unquoted): no scale known.
            continue
        scale = int(row["amount_scale"])
        assert EXACT.multiply(decimal.Decimal(row["amount_decimal"]), decimal.Decimal(10**scale)) == int(row["amount"])


def test_both_with_chdb(client: ChdbClient, exported: tuple[dict[int, tuple[int, int]], dict[str, Path]]) -> None:
    """chDB's file() reads both formats with their types; its exact sums equal the engine's balances."""
    balances, directories = exported
    for fmt, input_format in (("parquet", "Parquet"), ("csv", "CSVWithNames")):
        source = str(directories[fmt] / f"*.{fmt}")
        types = {
            str(name): str(kind)
            for name, kind, *_ in client.query_rows(
                "DESCRIBE file({source:String}, {format:String})", {"source": source, "format": input_format}
            )
        }
        if fmt == "parquet":
            assert "Decimal(38, 2)" in types["amount_decimal"]
            assert "DateTime64(9, 'UTC')" in types["engine_time"]
            assert types["labels_map"].startswith("Map(String, ")
        else:
            assert "DateTime64(9" in types["engine_time"]
            # Quoted values stay text (exact), unquoted ones are numbers.
            assert [types[name] for name in ("transfer_id", "amount", "amount_decimal")] == ["Nullable(String)"] * 3
            assert types["amount_scale"] == "Nullable(Int64)"  # Bare integers, an empty field for unknown.
        found = client.query_rows(
            """
            SELECT account, toString(sum(debits)), toString(sum(credits)), toString(sum(credits_decimal))
            FROM (
                SELECT toUInt128(debit_account_id) AS account, toUInt256(amount) AS debits,
                       toUInt256(0) AS credits, toDecimal256(0, 2) AS credits_decimal
                FROM file({source:String}, {format:String}) WHERE change IN ('SINGLE_PHASE', 'TWO_PHASE_POSTED')
                UNION ALL
                SELECT toUInt128(credit_account_id), toUInt256(0), toUInt256(amount),
                       toDecimal256(ifNull(nullIf(toString(amount_decimal), ''), '0'), 2)
                FROM file({source:String}, {format:String}) WHERE change IN ('SINGLE_PHASE', 'TWO_PHASE_POSTED')
            )
            GROUP BY account ORDER BY account""",
            {"source": source, "format": input_format},
        )
        sums = {int(str(account)): (int(str(d)), int(str(c))) for account, d, c, _ in found}
        assert sums == balances, fmt
        decimals = {int(str(account)): decimal.Decimal(str(value)) for account, _, _, value in found}
        for account in (*range(1, 7), 8, 11, 12):  # Every credit fits the column: the decimal sum is exact.
            scale = 0 if EDGE_ACCOUNTS.get(account) == JPY_LEDGER else 2
            assert EXACT.multiply(decimals[account], decimal.Decimal(10**scale)) == balances[account][1], (fmt, account)


@given(amount=st.integers(min_value=0, max_value=U128_MAX), scale=st.integers(min_value=0, max_value=18))
def test_decimal_columns_are_exact_or_null(amount: int, scale: int) -> None:
    """Across the whole u128 range and every allowed scale: the CSV text is exact, the decimal128 value
    exact when its unscaled digits fit in 38, and null (never rounded) when they do not."""
    scales = AmountScales({1: scale, 2: 18})
    text = scales.decimal_text(amount, 1)
    assert EXACT.multiply(decimal.Decimal(text), decimal.Decimal(10**scale)) == amount
    assert text.count(".") == (1 if scale else 0) and len(text.partition(".")[2]) == scale
    value = scales.decimal_value(amount, 1)
    fits = amount * 10 ** (18 - scale) < 10**38
    assert (value is not None) == fits
    if value is not None:
        assert EXACT.multiply(value, decimal.Decimal(10**scale)) == amount
        assert pa.array([value], type=pa.decimal128(38, 18)).to_pylist() == [value]
    assert (scales.decimal_text(amount, 3), scales.decimal_value(amount, 3)) == ("", None)  # Unknown ledger.


@given(timestamp=st.integers(min_value=0, max_value=(1 << 63) - 1))
def test_rfc3339_text_is_the_engine_nanoseconds(timestamp: int) -> None:
    """What the CSV writes, pyarrow reads back to the same nanosecond, and the CLI parses back too."""
    text = rfc3339_nanoseconds(timestamp)
    assert text.endswith("Z") and len(text) == 30
    assert parse_time(text) == timestamp
    parsed = pa.array([text]).cast(pa.timestamp("ns", tz="UTC"))
    assert parsed.cast(pa.int64()).to_pylist() == [timestamp]


def test_scales_from_the_currency_table() -> None:
    assert audit.amount_scales().by_ledger == {840: 2, 978: 2, 826: 2, 392: 0}
    table = {"BTC": CurrencySettings(ledger=9001, scale=8), "XBT": CurrencySettings(ledger=9001, scale=8)}
    assert audit.amount_scales(table).decimal_scale == 8
    with pytest.raises(ValueError, match="ledger 9001"):
        audit.amount_scales(table | {"SAT": CurrencySettings(ledger=9001, scale=0)})
