"""The ClickHouse client seam: chDB in-process (the default, and what tests run on) or a server.

Both backends expose the same four calls, and every statement the read model runs goes through them
unchanged: DDL from `projections.schema`, queries from `projections.queries`, inserts as
TabSeparated text built once by `projections.rows`. So one set of SQL serves both, and what the chDB
tests exercise is what runs against a server.

No SQL from strings: every value reaches a statement as a bound parameter (ClickHouse's own
`{name:Type}` placeholders), rendered once by `bind_parameters` for both backends. The server parses a
parameter's value in its *escaped* text form (backslash escapes, as in TabSeparated), so the raw text
of a string is not its value: `a\nb` would arrive as a newline and a lone trailing backslash as a parse
error. `bind_parameters` escapes every string and range-checks every integer, so ids, strings and
timestamps cannot change a statement's meaning or fail to parse. The only other text spliced into SQL
is identifiers (table names, column lists, the database name), which come from constants or settings
and are checked by `identifier`. Results come back as JSONCompact (64-bit and wider integers unquoted;
Python's json parses them exactly).

The calls are synchronous: chDB runs queries on the calling thread (and releases the GIL), and the
async callers (the projector) hand them to a worker thread.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from facade.settings import ClickHouseSettings

Parameters = Mapping[str, int | str]
Row = list[object]

JSON_SETTINGS = "output_format_json_quote_64bit_integers=0, output_format_json_quote_decimals=0"
"""Appended to every row query: integers of any width unquoted, identical on both backends."""


class ClickHouseError(RuntimeError):
    """A statement failed (syntax, unknown table, type mismatch, connection): an operating error."""


class ClickHouseClient(Protocol):
    database: str

    def command(self, sql: str, parameters: Parameters | None = None) -> None:
        """Runs a statement that returns nothing (DDL, INSERT ... SELECT)."""
        ...

    def insert_tsv(self, table: str, columns: Sequence[str], data: str) -> None:
        """Inserts TabSeparated rows (one per line, escaped by projections.rows) into `table`."""
        ...

    def query_rows(self, sql: str, parameters: Parameters | None = None) -> list[Row]:
        """The rows of a SELECT, each a list of JSON values (ints exact, strings, dicts for maps)."""
        ...

    def query_raw(self, sql: str, fmt: str, parameters: Parameters | None = None) -> bytes:
        """The result of a SELECT in a ClickHouse output format (CSVWithNames, Parquet, ...)."""
        ...

    def close(self) -> None: ...


PARAMETER_INT_MAX = (1 << 256) - 1
"""The widest integer a parameter may carry (UInt256); the read model's values are at most u128."""
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_PARAMETER_NAME = _IDENTIFIER
# ClickHouse's escaped text form (readEscapedString): the escape character itself, the TabSeparated
# delimiters, and the characters a reader might take for quoting.
_ESCAPED_TEXT = str.maketrans(
    {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0", "'": "\\'", "`": "\\`"}
)


class ParameterError(ValueError):
    """A parameter value no ClickHouse value can equal (a string that is not valid Unicode, an
    integer out of range): the caller's input, not an operating error."""


@dataclass(frozen=True, slots=True)
class BoundValue:
    """A parameter value already in ClickHouse's escaped text form. clickhouse-connect sends a value
    of a type it does not know as `str(value)` (binding.format_bind_value), so the server receives
    exactly the text chDB receives; a plain str would be escaped a second time."""

    text: str

    def __str__(self) -> str:
        return self.text


def identifier(name: str) -> str:
    """`name` when it is a plain SQL identifier (the only text other than constants spliced into SQL)."""
    if not _IDENTIFIER.fullmatch(name):
        raise ClickHouseError(f"not a plain identifier: {name!r}")
    return name


def escaped_text(value: str) -> str:
    """`value` in ClickHouse's escaped text form, as a `{name:String}` parameter is parsed."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ParameterError("a string parameter is not valid Unicode (lone surrogate)") from error
    return value.translate(_ESCAPED_TEXT)


def bind_parameters(parameters: Parameters | None) -> dict[str, BoundValue]:
    """Every value of `parameters` rendered for `{name:Type}` binding: strings escaped, integers
    range-checked (bool is refused: it is an int to Python but no read-model column)."""
    bound: dict[str, BoundValue] = {}
    for name, value in (parameters or {}).items():
        assert _PARAMETER_NAME.fullmatch(name), f"parameter name {name!r}"
        if isinstance(value, str):
            bound[name] = BoundValue(escaped_text(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value <= PARAMETER_INT_MAX:
                raise ParameterError(f"integer parameter {name} out of range")
            bound[name] = BoundValue(str(value))
        else:
            raise AssertionError(f"parameter {name}: unsupported type {type(value).__name__}")
    assert len(bound) == len(parameters or {})
    return bound


def _rows(payload: bytes) -> list[Row]:
    if not payload.strip():
        return []
    data = json.loads(payload)["data"]
    assert isinstance(data, list)
    return data


class ChdbClient:
    """chDB on a persisted directory. chDB allows one database directory per process at a time, so
    at most one ChdbClient may be open; a second raises instead of failing obscurely later."""

    _open_lock = threading.Lock()
    _open_path: Path | None = None

    def __init__(self, path: Path, database: str) -> None:
        from chdb.session import Session

        path = Path(path).resolve()
        with ChdbClient._open_lock:
            if ChdbClient._open_path is not None:
                raise ClickHouseError(f"chDB is already open on {ChdbClient._open_path}; one directory per process")
            path.mkdir(parents=True, exist_ok=True)
            # chdb ships no type hints: Session, query and close are untyped.
            self._session = Session(str(path))  # type: ignore[no-untyped-call]
            ChdbClient._open_path = path
        self.path = path
        self.database = database
        self._closed = False
        self.command(f"CREATE DATABASE IF NOT EXISTS {identifier(database)}")
        self.command(f"USE {identifier(database)}")

    def _query(self, sql: str, fmt: str, parameters: Parameters | None) -> bytes:
        assert not self._closed, "ChdbClient is closed"
        try:
            params = {name: value.text for name, value in bind_parameters(parameters).items()}
            result = self._session.query(sql, fmt, params=params)  # type: ignore[no-untyped-call]
        except ParameterError:
            raise
        except Exception as error:  # chdb raises its own ChdbError (untyped); keep the message.
            raise ClickHouseError(str(error)) from error
        return bytes(result.bytes()) if result is not None else b""

    def command(self, sql: str, parameters: Parameters | None = None) -> None:
        self._query(sql, "TabSeparated", parameters)

    def insert_tsv(self, table: str, columns: Sequence[str], data: str) -> None:
        if not data:
            return
        names = ", ".join(identifier(column) for column in columns)
        # The rows are data, not SQL: TabSeparated text escaped by projections.rows. Synchronous: chDB turns
        # async_insert on by default, which queues the rows for a background flush the INSERT then waits for
        # (wait_for_async_insert): the projector inserts large batches from one thread, so the queue only
        # added latency and CPU (measured: 94 against 105 µs a change at 350-change batches, 43 against 50 at
        # 4,000; wall time per 4,000-change batch 154 against 377 ms).
        self._query(
            f"INSERT INTO {identifier(table)} ({names}) SETTINGS async_insert = 0 FORMAT TabSeparated\n{data}",
            "TabSeparated",
            None,
        )

    def query_rows(self, sql: str, parameters: Parameters | None = None) -> list[Row]:
        return _rows(self._query(f"{sql}\nSETTINGS {JSON_SETTINGS}", "JSONCompact", parameters))

    def query_raw(self, sql: str, fmt: str, parameters: Parameters | None = None) -> bytes:
        return self._query(sql, fmt, parameters)

    def insert_native(self, table: str, columns: Sequence[str], block: bytes, settings: str) -> None:
        """Inserts a Native block (projections._change_columns) into `table`'s `columns`, streamed into one
        `INSERT ... FORMAT Native`: no SQL derives the rows, nothing is parsed from text. `settings` is a
        constant (`name = value, ...`); synchronous, as insert_tsv (async_insert off)."""
        assert not self._closed, "ChdbClient is closed"
        assert block
        names = ", ".join(identifier(column) for column in columns)
        sql = f"INSERT INTO {identifier(table)} ({names}) SETTINGS async_insert = 0, {settings}"
        try:
            inserter = self._session.send_insert(sql, "Native")
            with inserter:
                inserter.append(block)  # type: ignore[no-untyped-call]
                inserter.finish()
        except Exception as error:  # chdb raises RuntimeError or its ChdbError (untyped); keep the message.
            raise ClickHouseError(str(error)) from error

    def query_formatted(self, sql: str, fmt: str, parameters: Mapping[str, str], size_max: int) -> bytes:
        """An analyst's query (facade.api.sql): `parameters` are already in ClickHouse's escaped text form
        (as the HTTP interface's `param_<name>` values are), the output is chDB's, at most `size_max` bytes."""
        assert not self._closed, "ChdbClient is closed"
        assert all(_PARAMETER_NAME.fullmatch(name) for name in parameters)
        try:
            result = self._session.query(sql, fmt, params=dict(parameters))  # type: ignore[no-untyped-call]
        except Exception as error:  # chdb raises its own ChdbError (untyped); keep the message.
            raise ClickHouseError(str(error)) from error
        output = bytes(result.bytes()) if result is not None else b""
        if len(output) > size_max:
            raise ClickHouseError(f"Code: 396. DB::Exception: result larger than {size_max} bytes (TOO_MANY_ROWS)")
        return output

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._session.close()  # type: ignore[no-untyped-call]
        with ChdbClient._open_lock:
            ChdbClient._open_path = None


class ServerClient:
    """A ClickHouse server over HTTP (clickhouse-connect). Same statements, same formats."""

    def __init__(self, settings: ClickHouseSettings) -> None:
        import clickhouse_connect

        self.database = settings.database
        bootstrap = clickhouse_connect.get_client(
            host=settings.host,
            port=settings.port,
            username=settings.user,
            password=settings.password.get_secret_value(),
        )
        bootstrap.command(f"CREATE DATABASE IF NOT EXISTS {identifier(settings.database)}")
        bootstrap.close()
        self._client = clickhouse_connect.get_client(
            host=settings.host,
            port=settings.port,
            username=settings.user,
            password=settings.password.get_secret_value(),
            database=settings.database,
        )

    def command(self, sql: str, parameters: Parameters | None = None) -> None:
        try:
            self._client.command(sql, parameters=bind_parameters(parameters))
        except ParameterError:
            raise
        except Exception as error:
            raise ClickHouseError(str(error)) from error

    def insert_tsv(self, table: str, columns: Sequence[str], data: str) -> None:
        if not data:
            return
        try:
            self._client.raw_insert(table, list(columns), data.encode(), fmt="TabSeparated")
        except Exception as error:
            raise ClickHouseError(str(error)) from error

    def query_rows(self, sql: str, parameters: Parameters | None = None) -> list[Row]:
        return _rows(self.query_raw(f"{sql}\nSETTINGS {JSON_SETTINGS}", "JSONCompact", parameters))

    def query_raw(self, sql: str, fmt: str, parameters: Parameters | None = None) -> bytes:
        try:
            return self._client.raw_query(sql, parameters=bind_parameters(parameters), fmt=fmt)
        except ParameterError:
            raise
        except Exception as error:
            raise ClickHouseError(str(error)) from error

    def close(self) -> None:
        self._client.close()


def open_client(settings: ClickHouseSettings) -> ClickHouseClient:
    """The configured backend, with its database created and selected (schema: projections.schema)."""
    if settings.backend == "chdb":
        return ChdbClient(settings.chdb_path, settings.database)
    return ServerClient(settings)
