"""The ClickHouse client seam: chDB in-process (the default, and what tests run on) or a server.

Both backends expose the same four calls, and every statement the read model runs goes through them
unchanged: DDL from `projections.schema`, queries from `projections.queries`, inserts as
TabSeparated text built once by `projections.rows`. So one set of SQL serves both, and what the chDB
tests exercise is what runs against a server.

Query parameters use ClickHouse's own binding (`{name:Type}` placeholders), never string
formatting, so ids, strings and timestamps cannot change a statement's meaning. Results come back
as JSONCompact (64-bit and wider integers unquoted; Python's json parses them exactly).

The calls are synchronous: chDB runs queries on the calling thread (and releases the GIL), and the
async callers (the projector) hand them to a worker thread.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
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


def _parameter_strings(parameters: Parameters | None) -> dict[str, str]:
    return {name: str(value) for name, value in (parameters or {}).items()}


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
        self.command(f"CREATE DATABASE IF NOT EXISTS {database}")
        self.command(f"USE {database}")

    def _query(self, sql: str, fmt: str, parameters: Parameters | None) -> bytes:
        assert not self._closed, "ChdbClient is closed"
        try:
            result = self._session.query(sql, fmt, params=_parameter_strings(parameters))  # type: ignore[no-untyped-call]
        except Exception as error:  # chdb raises its own ChdbError (untyped); keep the message.
            raise ClickHouseError(str(error)) from error
        return bytes(result.bytes()) if result is not None else b""

    def command(self, sql: str, parameters: Parameters | None = None) -> None:
        self._query(sql, "TabSeparated", parameters)

    def insert_tsv(self, table: str, columns: Sequence[str], data: str) -> None:
        if not data:
            return
        self._query(f"INSERT INTO {table} ({', '.join(columns)}) FORMAT TabSeparated\n{data}", "TabSeparated", None)

    def query_rows(self, sql: str, parameters: Parameters | None = None) -> list[Row]:
        return _rows(self._query(f"{sql}\nSETTINGS {JSON_SETTINGS}", "JSONCompact", parameters))

    def query_raw(self, sql: str, fmt: str, parameters: Parameters | None = None) -> bytes:
        return self._query(sql, fmt, parameters)

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
        bootstrap.command(f"CREATE DATABASE IF NOT EXISTS {settings.database}")
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
            self._client.command(sql, parameters=dict(parameters or {}))
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
            return self._client.raw_query(sql, parameters=dict(parameters or {}), fmt=fmt)
        except Exception as error:
            raise ClickHouseError(str(error)) from error

    def close(self) -> None:
        self._client.close()


def open_client(settings: ClickHouseSettings) -> ClickHouseClient:
    """The configured backend, with its database created and selected (schema: projections.schema)."""
    if settings.backend == "chdb":
        return ChdbClient(settings.chdb_path, settings.database)
    return ServerClient(settings)
