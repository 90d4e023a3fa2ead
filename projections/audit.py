"""Audit: verify the hash chain in the live read model, export a range of it, verify an export.

The chain (ledger_events/chain.py, the one definition of its bytes) links every change in commit
order. Verification rebuilds each change's canonical bytes from stored columns alone, with the
chain module's own functions, and recomputes the hash from the previous row's: a changed, missing,
inserted or reordered row breaks the first link it touches, and `chain_sequence` makes a gap
explicit. The live check also holds `entries` to the chain: each change must have exactly one
debit and one credit entry carrying the same transfer, metadata and link as its `transactions` row.

An export is the `transactions` rows of an engine-time range, in chain order, as CSV or Parquet
files of at most AUDIT_PAGE_ROWS rows (one page per file), plus `manifest.json`: row count, SHA-256 per file,
first/last sequence, the previous hash at the range start and the chain head at its end. An export
verifies from its files alone; given the live read model, its head is also checked against it.
Beside the chain columns each row carries typed columns for analysts (projections/_analyst_columns.py,
docs/exports.md): UTC times, exact decimal amounts with their scale, labels as a map.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from facade.engine.types import Transfer
from facade.settings import ApiSettings, CurrencySettings
from ledger_events.chain import Link, canonical_metadata, metadata_mapping, next_link
from projections._analyst_columns import DECIMAL_PRECISION, AmountScales, rfc3339_nanoseconds
from projections.client import ClickHouseClient, Row
from projections.queries import TIMESTAMP_MAX, to_bool, to_int, to_labels, to_str
from projections.rows import CHANGE_VALUES

AUDIT_PAGE_ROWS = 20_000
"""Rows read per query while walking the chain: bounds memory whatever the table size. An export
writes one file per page, so no file needs more than one page in memory."""
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
Format = Literal["csv", "parquet"]


@dataclass(slots=True, frozen=True)
class ChainRow:
    """One `transactions` row: everything the chain hashes, plus the link itself."""

    engine_timestamp: int
    change: str
    debit_account_id: int
    credit_account_id: int
    amount: int
    transfer_id: int
    pending_id: int
    ledger: int
    code: int
    transfer_flags: int
    user_data_128: int
    user_data_64: int
    user_data_32: int
    timeout_seconds: int
    transfer_timestamp: int
    chain_sequence: int
    chain_previous_hash: str
    chain_hash: str
    has_metadata: bool
    transaction_id: str
    idempotency_key: str
    client_id: str
    transaction_type: str
    source: str
    correlation_id: str
    description: str
    labels: dict[str, str]
    currency: str
    leg_index: int

    def transfer(self) -> Transfer:
        return Transfer(
            id=self.transfer_id,
            debit_account_id=self.debit_account_id,
            credit_account_id=self.credit_account_id,
            amount=self.amount,
            pending_id=self.pending_id,
            user_data_128=self.user_data_128,
            user_data_64=self.user_data_64,
            user_data_32=self.user_data_32,
            timeout=self.timeout_seconds,
            ledger=self.ledger,
            code=self.code,
            flags=self.transfer_flags,
            timestamp=self.transfer_timestamp,
        )

    def metadata_bytes(self) -> bytes:
        if not self.has_metadata:
            return b""
        return canonical_metadata(metadata_mapping(self))

    def link_after(self, previous: Link) -> Link:
        """The link this row must carry, computed by the chain module from the previous link."""
        change = CHANGE_VALUES.get(self.change)
        if change is None:
            raise ValueError(f"unknown change {self.change!r}")
        return next_link(previous, self.engine_timestamp, change, self.transfer(), self.metadata_bytes())


COLUMNS = tuple(f.name for f in fields(ChainRow))
_STR_COLUMNS = frozenset(
    {
        "change", "chain_previous_hash", "chain_hash", "transaction_id", "idempotency_key", "client_id",
        "transaction_type", "source", "correlation_id", "description", "currency",
    }
)  # fmt: skip
_INT_COLUMNS = frozenset(COLUMNS) - _STR_COLUMNS - {"has_metadata", "labels"}
_U128_COLUMNS = frozenset(
    {"debit_account_id", "credit_account_id", "amount", "transfer_id", "pending_id", "user_data_128"}
)
_SELECT = ", ".join(COLUMNS)
CSV_ANALYST_COLUMNS = ("engine_time", "transfer_time", "amount_scale", "amount_decimal")
PARQUET_ANALYST_COLUMNS = (*CSV_ANALYST_COLUMNS, "labels_map")
"""Typed columns after the chain columns (projections/_analyst_columns.py); verifiers ignore them."""


def amount_scales(currencies: Mapping[str, CurrencySettings] | None = None) -> AmountScales:
    """Minor-unit digits per ledger from a currency table (default: api.currencies' default)."""
    if currencies is None:
        currencies = ApiSettings().currencies
    by_ledger: dict[int, int] = {}
    for code, currency in currencies.items():
        if by_ledger.setdefault(currency.ledger, currency.scale) != currency.scale:
            raise ValueError(f"currency {code}: ledger {currency.ledger} has another currency with another scale")
    return AmountScales(by_ledger)


def _row(values: Row) -> ChainRow:
    converted: dict[str, object] = {}
    for name, value in zip(COLUMNS, values, strict=True):
        if name in _INT_COLUMNS:
            converted[name] = to_int(value)
        elif name == "has_metadata":
            converted[name] = to_bool(value)
        elif name == "labels":
            converted[name] = to_labels(value)
        else:
            converted[name] = to_str(value)
    return ChainRow(**converted)  # type: ignore[arg-type]  # Names and types: COLUMNS and the branches above.


@dataclass(slots=True, frozen=True)
class Problem:
    sequence: int
    """The chain sequence where verification first failed (expected, when a row is missing)."""
    reason: str


@dataclass(slots=True)
class VerifyReport:
    rows_checked: int = 0
    first_sequence: int = 0
    last_sequence: int = 0
    head_hash: str = ""
    """Hash of the last row verified: the chain head when `ok`."""
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class _ChainWalker:
    """Checks rows one by one against the chain, from a given link; stops at the first break."""

    def __init__(self, report: VerifyReport, previous: Link) -> None:
        self.report = report
        self.previous = previous
        self.broken = False

    def check(self, row: ChainRow) -> bool:
        if self.broken:
            return False
        expected = self.previous.sequence + 1
        reason = ""
        if row.chain_sequence != expected:
            reason = f"sequence {row.chain_sequence} where {expected} was expected (missing, extra or reordered row)"
        elif row.chain_previous_hash != self.previous.hash.hex():
            reason = "previous_hash does not match the previous row's hash"
        else:
            link = row.link_after(self.previous)
            if link.hash.hex() != row.chain_hash:
                reason = "hash does not match the row's contents (altered row)"
            else:
                self.previous = link
        if reason:
            self.report.problems.append(Problem(expected, reason))
            self.broken = True
            return False
        if self.report.rows_checked == 0:
            self.report.first_sequence = row.chain_sequence
        self.report.rows_checked += 1
        self.report.last_sequence = row.chain_sequence
        self.report.head_hash = row.chain_hash
        return True


_CHAIN_PAGE = f"""
SELECT {_SELECT}
FROM transactions
WHERE engine_timestamp >= {{cursor:UInt64}} AND engine_timestamp < {{timestamp_to:UInt64}}
ORDER BY engine_timestamp, chain_sequence
LIMIT {{limit:UInt32}}"""
_ENTRY_AS_CHAIN_ROW = {
    "debit_account_id": "if(side = 'DEBIT', account_id, counterparty_account_id)",
    "credit_account_id": "if(side = 'DEBIT', counterparty_account_id, account_id)",
}
_ENTRIES_PAGE = f"""
SELECT {", ".join(_ENTRY_AS_CHAIN_ROW.get(name, name) for name in COLUMNS)}, side
FROM entries
WHERE engine_timestamp BETWEEN {{timestamp_min:UInt64}} AND {{timestamp_max:UInt64}}
ORDER BY engine_timestamp, side"""
"""Entries in the shape of the chain row they must match (debit/credit accounts from the side), plus the side."""


def _chain_pages(client: ClickHouseClient, timestamp_from: int, timestamp_to: int) -> Iterator[list[ChainRow]]:
    """The chain rows in [timestamp_from, timestamp_to), in chain order, AUDIT_PAGE_ROWS at a time."""
    cursor = timestamp_from
    while True:
        found = client.query_rows(
            _CHAIN_PAGE, {"cursor": cursor, "timestamp_to": timestamp_to, "limit": AUDIT_PAGE_ROWS}
        )
        if not found:
            return
        page = [_row(values) for values in found]
        yield page
        if len(found) < AUDIT_PAGE_ROWS:
            return
        cursor = page[-1].engine_timestamp + 1


def _check_entries(client: ClickHouseClient, page: Sequence[ChainRow], report: VerifyReport) -> None:
    """Each chain row must have exactly its debit and its credit entry, each carrying the same
    transfer, metadata and link (entries are not hashed themselves; they are held to the chain)."""
    found = client.query_rows(
        _ENTRIES_PAGE, {"timestamp_min": page[0].engine_timestamp, "timestamp_max": page[-1].engine_timestamp}
    )
    by_timestamp: dict[int, list[tuple[str, ChainRow]]] = {}
    for values in found:
        row = _row(values[:-1])
        by_timestamp.setdefault(row.engine_timestamp, []).append((to_str(values[-1]), row))
    for row in page:
        sides = by_timestamp.pop(row.engine_timestamp, [])
        if sorted(side for side, _ in sides) != ["CREDIT", "DEBIT"]:
            report.problems.append(Problem(row.chain_sequence, f"entries sides {sorted(s for s, _ in sides)}"))
            return
        for side, entry in sides:
            if entry != row:
                report.problems.append(Problem(row.chain_sequence, f"{side} entry differs from the chain row"))
                return
    if by_timestamp:
        timestamp = min(by_timestamp)
        report.problems.append(Problem(0, f"entries at engine timestamp {timestamp} belong to no chain row"))


def verify_live(client: ClickHouseClient, progress: bool = False) -> VerifyReport:
    """Walks the whole `transactions` chain from genesis, and holds `entries` to it."""
    report = VerifyReport()
    walker = _ChainWalker(report, Link(0, bytes(32), bytes(32)))
    total = to_int(client.query_rows("SELECT count() FROM transactions")[0][0])
    with tqdm(total=total, desc="verify", unit="row", disable=not progress) as bar:
        for page in _chain_pages(client, 0, TIMESTAMP_MAX):
            for row in page:
                if not walker.check(row):
                    return report
            _check_entries(client, page, report)
            if report.problems:
                return report
            bar.update(len(page))
    return report


# Export -----------------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class ExportFile:
    name: str
    rows: int
    sha256: str


@dataclass(slots=True, frozen=True)
class Manifest:
    format: Format
    timestamp_from: int
    timestamp_to: int
    row_count: int
    first_sequence: int
    last_sequence: int
    previous_hash: str
    """The chain link before the first row (its previous_hash): where verification starts."""
    chain_head: str
    """Hash of the last row: the chain head at the range's end."""
    files: list[ExportFile]
    columns: list[str]
    version: int = MANIFEST_VERSION
    created_at: str = ""
    amount_decimal_scale: int = 0
    """Scale of the Parquet `amount_decimal` column (decimal128(38, scale))."""
    amount_decimal_null_rows: int = 0
    """Rows whose `amount_decimal` is null (unknown ledger, or more than 38 digits): sum `amount` for those."""

    def to_json(self) -> str:
        data = {name.name: getattr(self, name.name) for name in fields(self)}
        data["files"] = [{"name": f.name, "rows": f.rows, "sha256": f.sha256} for f in self.files]
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("version") != MANIFEST_VERSION:
            raise ValueError(f"manifest version {data.get('version')} not supported")
        data["files"] = [ExportFile(f["name"], int(f["rows"]), f["sha256"]) for f in data["files"]]
        return cls(**data)


def _export_value(row: ChainRow, name: str) -> str | int:
    value = getattr(row, name)
    if name == "labels":
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if name == "has_metadata":
        return 1 if value else 0
    if name in _U128_COLUMNS:
        return str(value)
    assert isinstance(value, int | str)
    return value


def _csv_analyst_values(row: ChainRow, scales: AmountScales) -> list[str | int | None]:
    decimal_text = scales.decimal_text(row.amount, row.ledger)
    return [
        rfc3339_nanoseconds(row.engine_timestamp),
        rfc3339_nanoseconds(row.transfer_timestamp),
        scales.scale(row.ledger),
        decimal_text or None,
    ]


def _csv_field(value: str | int | None) -> str:
    """Text quoted (ids, amounts, times: no reader that honours quotes makes them numbers), integers
    bare, unknown as an empty unquoted field (NULL in ClickHouse). RFC 4180 quoting, as `csv` reads it."""
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return '"' + value.replace('"', '""') + '"'


def _csv_bytes(page: Sequence[ChainRow], scales: AmountScales) -> bytes:
    lines = [",".join(_csv_field(name) for name in COLUMNS + CSV_ANALYST_COLUMNS)]
    for row in page:
        values = [_export_value(row, name) for name in COLUMNS] + _csv_analyst_values(row, scales)
        lines.append(",".join(_csv_field(value) for value in values))
    assert len(lines) == len(page) + 1
    return ("\n".join(lines) + "\n").encode()


def _parquet_schema(scales: AmountScales) -> object:
    import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no type hints.

    def kind(name: str) -> pa.DataType:
        if name in _INT_COLUMNS and name not in _U128_COLUMNS:
            return pa.uint64()
        if name == "has_metadata":
            return pa.uint8()
        return pa.string()

    utc = pa.timestamp("ns", tz="UTC")
    analyst = [
        pa.field("engine_time", utc, metadata={"description": "engine_timestamp as a UTC instant"}),
        pa.field("transfer_time", utc, metadata={"description": "transfer_timestamp as a UTC instant"}),
        pa.field("amount_scale", pa.uint8(), metadata={"description": "minor-unit digits; null: unknown ledger"}),
        pa.field(
            "amount_decimal",
            pa.decimal128(DECIMAL_PRECISION, scales.decimal_scale),
            metadata={"description": "amount in major units, exact; null: unknown ledger or beyond 38 digits"},
        ),
        pa.field("labels_map", pa.map_(pa.string(), pa.string()), metadata={"description": "labels as a map"}),
    ]
    assert tuple(f.name for f in analyst) == PARQUET_ANALYST_COLUMNS
    chain = [pa.field(name, kind(name)) for name in COLUMNS]
    return pa.schema(chain + analyst, metadata={"ledger.data_dictionary": "docs/exports.md"})


def _parquet_bytes(page: Sequence[ChainRow], scales: AmountScales) -> tuple[bytes, int]:
    """The file, and how many rows have a null `amount_decimal`."""
    import pyarrow as pa
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    schema = _parquet_schema(scales)
    assert isinstance(schema, pa.Schema)
    columns: dict[str, list[object]] = {name: [_export_value(row, name) for row in page] for name in COLUMNS}
    columns["engine_time"] = [row.engine_timestamp for row in page]
    columns["transfer_time"] = [row.transfer_timestamp for row in page]
    columns["amount_scale"] = [scales.scale(row.ledger) for row in page]
    columns["amount_decimal"] = [scales.decimal_value(row.amount, row.ledger) for row in page]
    columns["labels_map"] = [sorted(row.labels.items()) for row in page]
    table = pa.table(columns, schema=schema)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    nulls = sum(1 for value in columns["amount_decimal"] if value is None)
    assert 0 <= nulls <= len(page)
    return sink.getvalue(), nulls


def export(  # noqa: PLR0913  Keyword-only: the range, then options each with its default.
    client: ClickHouseClient,
    directory: Path,
    *,
    timestamp_from: int,
    timestamp_to: int,
    fmt: Format = "csv",
    progress: bool = True,
    scales: AmountScales | None = None,
) -> Manifest:
    """Writes the chain rows with engine timestamp in [timestamp_from, timestamp_to) and the manifest.
    The rows are written as stored: verify them (verify_live) to know they are intact. `scales`:
    the currency table's minor-unit digits per ledger (default: amount_scales())."""
    scales = scales or amount_scales()
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / MANIFEST_NAME).exists():
        raise FileExistsError(f"{directory / MANIFEST_NAME} exists: export into an empty directory")
    total = to_int(
        client.query_rows(
            "SELECT count() FROM transactions WHERE engine_timestamp >= {f:UInt64} AND engine_timestamp < {t:UInt64}",
            {"f": timestamp_from, "t": timestamp_to},
        )[0][0]
    )
    files: list[ExportFile] = []
    first: ChainRow | None = None
    last: ChainRow | None = None
    decimal_null_rows = 0
    with tqdm(total=total, desc="export", unit="row", disable=not progress) as bar:
        for page in _chain_pages(client, timestamp_from, timestamp_to):
            first = first or page[0]
            last = page[-1]
            if fmt == "csv":
                data = _csv_bytes(page, scales)
                decimal_null_rows += sum(1 for row in page if scales.scale(row.ledger) is None)
            else:
                data, nulls = _parquet_bytes(page, scales)
                decimal_null_rows += nulls
            name = f"transactions-{len(files) + 1:05d}.{fmt}"
            (directory / name).write_bytes(data)
            files.append(ExportFile(name, len(page), hashlib.sha256(data).hexdigest()))
            bar.update(len(page))
    manifest = Manifest(
        format=fmt,
        timestamp_from=timestamp_from,
        timestamp_to=timestamp_to,
        row_count=sum(f.rows for f in files),
        first_sequence=first.chain_sequence if first else 0,
        last_sequence=last.chain_sequence if last else 0,
        previous_hash=first.chain_previous_hash if first else "",
        chain_head=last.chain_hash if last else "",
        files=files,
        columns=list(COLUMNS + (CSV_ANALYST_COLUMNS if fmt == "csv" else PARQUET_ANALYST_COLUMNS)),
        created_at=datetime.datetime.now(datetime.UTC).isoformat(),
        amount_decimal_scale=scales.decimal_scale,
        amount_decimal_null_rows=decimal_null_rows,
    )
    (directory / MANIFEST_NAME).write_text(manifest.to_json())
    return manifest


def _parse_export_row(values: dict[str, object]) -> ChainRow:
    converted: dict[str, object] = {}
    for name in COLUMNS:
        value = values[name]
        if name in _INT_COLUMNS:
            converted[name] = to_int(value)
        elif name == "has_metadata":
            converted[name] = to_int(value) != 0
        elif name == "labels":
            converted[name] = to_labels(json.loads(to_str(value)))
        else:
            converted[name] = to_str(value)
    return ChainRow(**converted)  # type: ignore[arg-type]  # Names and types: COLUMNS and the branches above.


def _read_rows(path: Path, fmt: Format) -> list[ChainRow]:
    if fmt == "csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return [_parse_export_row(dict(record)) for record in csv.DictReader(handle)]
    import pyarrow.parquet as pq

    return [_parse_export_row(record) for record in pq.read_table(path, columns=list(COLUMNS)).to_pylist()]


def verify_export(directory: Path, client: ClickHouseClient | None = None, progress: bool = False) -> VerifyReport:
    """Checks an export from its files alone: SHA-256 and row count per file, then the chain from the
    manifest's previous hash to its head. With `client`, also that the head is the live chain's."""
    report = VerifyReport()
    try:
        manifest = Manifest.from_json((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError) as error:  # A damaged manifest is a failed check.
        report.problems.append(Problem(0, f"{MANIFEST_NAME} is unreadable: {error!r}"))
        return report
    for file in manifest.files:
        digest = hashlib.sha256((directory / file.name).read_bytes()).hexdigest()
        if digest != file.sha256:
            report.problems.append(Problem(0, f"{file.name}: SHA-256 {digest} differs from the manifest's"))
    if manifest.row_count == 0:
        return report
    previous = Link(manifest.first_sequence - 1, b"", bytes.fromhex(manifest.previous_hash))
    walker = _ChainWalker(report, previous)
    with tqdm(total=manifest.row_count, desc="verify", unit="row", disable=not progress) as bar:
        for file in manifest.files:
            page = _read_rows(directory / file.name, manifest.format)
            if len(page) != file.rows:
                report.problems.append(Problem(0, f"{file.name}: {len(page)} rows, manifest says {file.rows}"))
            for row in page:
                walker.check(row)
            bar.update(len(page))
    if walker.broken:
        return report
    if report.rows_checked != manifest.row_count or report.last_sequence != manifest.last_sequence:
        report.problems.append(Problem(report.last_sequence + 1, "export ends before the manifest's last sequence"))
    elif report.head_hash != manifest.chain_head:
        report.problems.append(Problem(report.last_sequence, "chain head differs from the manifest's"))
    if client is not None and report.ok:
        live = client.query_rows(
            "SELECT chain_hash FROM transactions WHERE chain_sequence = {s:UInt64}", {"s": manifest.last_sequence}
        )
        if [to_str(r[0]) for r in live] != [manifest.chain_head]:
            report.problems.append(Problem(manifest.last_sequence, "chain head differs from the live read model's"))
    return report
