"""The read-model CLI as a client of the running service (the default; `--offline` opens the files).

chDB opens its directory in one process only and the embedded engine's journal takes an flock, so while
`ledger serve` runs, nothing else may open either. The read commands therefore ask the service:
statement, balance, totals, correlation and reconcile through the JSON gateway (the same History queries,
ownership checks and errors as gRPC), audit export and verify through the SQL endpoint (the same
`projections.audit` code over clickhouse-connect, scope `ledger.audit`) and the audit routes for the
export's signed evidence.

Credentials (settings.client, LEDGER_CLIENT__*): a bearer token or an API key; with neither, in
auth.mode=dev, a short-lived development token minted from the same settings `ledger dev-token` uses.

`--offline` first probes the locks the service holds (the journal's flock, chDB's `status` flock) and
refuses with one line while they are held, instead of a lock traceback from deep inside chDB.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from facade.auth import SCOPE_ADMIN, SCOPE_AUDIT, SCOPE_READ, issue_token
from facade.settings import Settings
from projections._cli_input import CliInputError
from projections.client import (
    BoundValue,
    ClickHouseClient,
    ClickHouseError,
    ParameterError,
    Parameters,
    Row,
    bind_parameters,
)

__all__ = [
    "DEV_TOKEN_TTL_SECONDS",
    "ServiceError",
    "ServiceGateway",
    "SqlEndpointClient",
    "offline_refusal",
    "open_gateway",
    "open_sql_client",
]

DEV_TOKEN_TTL_SECONDS = 300
"""A minted development token lives for one command, not a day."""
DEV_CLIENT_ID = "ledger-cli"
DEV_SCOPES = frozenset({SCOPE_READ, SCOPE_ADMIN, SCOPE_AUDIT})
"""Read-only scopes: the CLI's commands never write (ledger.admin: totals, correlation, reconcile cross clients)."""
ERROR_TEXT_LENGTH_MAX = 300
"""A service error message is cut to this many characters: it is one line on a terminal."""
STATUS_CLIENT_ERRORS = range(400, 500)
CHDB_STATUS_FILE = "status"
"""ClickHouse's status file in its data directory; its server (and chDB) holds an flock on it."""


class ServiceError(Exception):
    """The service refused or could not be reached: one line for the user, and whether it was their input."""

    def __init__(self, message: str, *, usage: bool) -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


class _Edge(enum.Enum):
    GATEWAY = "gateway"
    SQL = "sql"


def _base_url(settings: Settings, edge: _Edge) -> str:
    configured = settings.client.gateway_url if edge is _Edge.GATEWAY else settings.client.sql_url
    if configured:
        return configured.rstrip("/")
    port = settings.api.http_port if edge is _Edge.GATEWAY else settings.api.sql_port
    if port <= 0:
        name = "api.http_port" if edge is _Edge.GATEWAY else "api.sql_port"
        variable = "GATEWAY_URL" if edge is _Edge.GATEWAY else "SQL_URL"
        raise ServiceError(f"{name} is {port}: set LEDGER_CLIENT__{variable} or use --offline", usage=True)
    host = settings.api.host if settings.api.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    scheme = "https" if settings.auth.tls_cert_file is not None else "http"
    return f"{scheme}://{host}:{port}"


def _authorization(settings: Settings) -> str:
    token = settings.client.token.get_secret_value()
    if token:
        return f"Bearer {token}"
    api_key = settings.client.api_key.get_secret_value()
    if api_key:
        return f"ApiKey {api_key}"
    if settings.auth.mode == "dev":
        return f"Bearer {issue_token(settings.auth, DEV_CLIENT_ID, DEV_SCOPES, DEV_TOKEN_TTL_SECONDS)}"
    raise ServiceError("no credentials: set LEDGER_CLIENT__TOKEN or LEDGER_CLIENT__API_KEY", usage=True)


def _verify(settings: Settings) -> str | bool:
    return str(settings.client.ca_file) if settings.client.ca_file is not None else True


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= ERROR_TEXT_LENGTH_MAX else line[:ERROR_TEXT_LENGTH_MAX] + "..."


def _unreachable(url: str, error: Exception) -> ServiceError:
    return ServiceError(
        f"the service is not reachable at {url} ({type(error).__name__}): start it (bash scripts/run.sh), "
        "point LEDGER_CLIENT__* at it, or use --offline while it is stopped",
        usage=False,
    )


class ServiceGateway:
    """The JSON gateway's History routes, answered as the service's JSON (proto3 JSON: u64/u128 as strings)."""

    def __init__(self, settings: Settings) -> None:
        self.url = _base_url(settings, _Edge.GATEWAY)
        self._http = httpx.Client(
            base_url=self.url,
            headers={"authorization": _authorization(settings)},
            verify=_verify(settings),
            timeout=settings.client.timeout_seconds,
        )

    def get(self, path: str, params: Mapping[str, str | int] | None = None) -> dict[str, Any]:
        assert path.startswith("/v1/")
        try:
            response = self._http.get(path, params=dict(params or {}))
        except httpx.TransportError as error:
            raise _unreachable(self.url, error) from None
        if response.status_code != httpx.codes.OK:
            raise ServiceError(self._refusal(response), usage=response.status_code in STATUS_CLIENT_ERRORS)
        body = response.json()
        assert isinstance(body, dict)
        return body

    @staticmethod
    def _refusal(response: httpx.Response) -> str:
        """`<reason>: <message>` from the gateway's error body (facade.http), else the status line."""
        try:
            body = response.json()
            detail = body.get("error", body) if isinstance(body, dict) else {}
            reason, message = detail.get("reason", ""), detail.get("message", "")
        except (ValueError, AttributeError):
            reason, message = "", ""
        text = f"{reason}: {message}" if reason else f"HTTP {response.status_code} {response.reason_phrase}"
        return _one_line(f"the service refused: {text}")

    def close(self) -> None:
        self._http.close()


@contextlib.contextmanager
def open_gateway(settings: Settings) -> Iterator[ServiceGateway]:
    gateway = ServiceGateway(settings)
    try:
        yield gateway
    finally:
        gateway.close()


class SqlEndpointClient:
    """ClickHouseClient over the service's SQL endpoint (facade.api.sql): read-only, so `projections.audit`
    (export, verify) runs unchanged while the service runs. No SETTINGS clause (the endpoint refuses a
    caller's): 64-bit and wider integers come back quoted, which projections.queries.to_int reads exactly."""

    def __init__(self, settings: Settings) -> None:
        import clickhouse_connect
        from clickhouse_connect.driver.exceptions import ClickHouseError as DriverError

        self.url = _base_url(settings, _Edge.SQL)
        self.database = settings.clickhouse.database
        authorization = _authorization(settings)
        credential = authorization.partition(" ")[2]  # The endpoint takes a token or an API key as the password.
        try:
            self._client = clickhouse_connect.get_client(
                dsn=self.url,
                username=DEV_CLIENT_ID,
                password=credential,
                database=self.database,
                verify=_verify(settings) is not False,
                ca_cert=str(settings.client.ca_file) if settings.client.ca_file is not None else None,
                send_receive_timeout=int(settings.client.timeout_seconds),
                autogenerate_session_id=False,
            )
        except DriverError as error:
            raise _sql_error(self.url, error) from None

    def command(self, sql: str, parameters: Parameters | None = None) -> None:
        del parameters
        raise AssertionError(f"the SQL endpoint is read-only: {sql[:40]!r}")

    def insert_tsv(self, table: str, columns: Sequence[str], data: str) -> None:
        del columns, data
        raise AssertionError(f"the SQL endpoint is read-only: insert into {table}")

    def query_rows(self, sql: str, parameters: Parameters | None = None) -> list[Row]:
        import json

        raw = self.query_raw(sql, "JSONCompact", parameters)
        if not raw.strip():
            return []
        data = json.loads(raw)["data"]
        assert isinstance(data, list)
        return data

    def query_raw(self, sql: str, fmt: str, parameters: Parameters | None = None) -> bytes:
        from clickhouse_connect.driver.exceptions import ClickHouseError as DriverError

        bound: dict[str, BoundValue] = bind_parameters(parameters)
        try:
            raw: bytes = self._client.raw_query(sql, parameters=bound, fmt=fmt)
        except ParameterError:
            raise
        except DriverError as error:
            raise _sql_error(self.url, error) from None
        return raw

    def close(self) -> None:
        self._client.close()


def _sql_error(url: str, error: Exception) -> ClickHouseError | ServiceError:
    text = str(error)
    if "Connection refused" in text or "Max retries" in text or "timed out" in text:
        return _unreachable(url, error)
    if "AUTHENTICATION_FAILED" in text or "ACCESS_DENIED" in text or "Code: 516" in text or "Code: 497" in text:
        return ServiceError(_one_line(f"the SQL endpoint refused the credentials: {text}"), usage=True)
    return ClickHouseError(_one_line(text))


def open_sql_client(settings: Settings) -> ClickHouseClient:
    """The read model while the service runs: the SQL endpoint on the embedded chDB defaults; with a
    ClickHouse server backend, the server itself (several clients may use it at once)."""
    if settings.clickhouse.backend != "chdb":
        from projections.client import ServerClient

        return ServerClient(settings.clickhouse)
    return SqlEndpointClient(settings)


def _held(path: Path) -> bool:
    """True when another process holds an flock on `path` (probed without blocking, released at once)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # Closing releases the probe's lock, if it got one.
    return False


@dataclass(frozen=True, slots=True)
class _Held:
    what: str
    path: Path


def offline_refusal(settings: Settings, *, engine: bool) -> CliInputError | None:
    """The one-line refusal for `--offline` while a service holds the read model (and, for commands that
    open the engine, the journal); None when both are free."""
    from facade.engine.journal import LOCK_FILE

    held: list[_Held] = []
    if settings.clickhouse.backend == "chdb" and _held(settings.clickhouse.chdb_path / CHDB_STATUS_FILE):
        held.append(_Held("the read model", settings.clickhouse.chdb_path))
    if engine and settings.engine.backend == "embedded" and _held(settings.engine.data_dir / LOCK_FILE):
        held.append(_Held("the engine journal", settings.engine.data_dir))
    if not held:
        return None
    where = " and ".join(f"{h.what} ({h.path})" for h in held)
    return CliInputError(f"--offline: a running service holds {where}; drop --offline to ask the service")
