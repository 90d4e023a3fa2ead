"""SQL for analysts while the service runs: the embedded read model (chDB in the read-model child) behind
the subset of ClickHouse's HTTP interface that clickhouse-connect, curl and Grafana use.

chDB opens its directory in one process only, so an analyst cannot open it while the service runs; this
port runs their queries through the same client seam the History service uses (projections._process
RemoteClient), never a second chDB.

Read-only and bounded, in two layers:
- before chDB: one statement (chDB, unlike a ClickHouse server, runs `;`-separated statements), its first
  keyword one of SELECT/WITH/SHOW/DESCRIBE/DESC/EXISTS, and no SETTINGS clause of the caller's (a query-level
  `readonly=0` placed before ours would switch read-only off: verified against chDB);
- in chDB: every query carries `SETTINGS readonly=1` and the limits on time, rows, bytes and memory, so
  ClickHouse itself refuses writes, table functions that reach files or the network, and oversized results.

Credentials are the service's (facade.auth): a bearer token, or a token/API key as the password
(basic auth, X-ClickHouse-Key or the `password` parameter); the principal must hold `ledger.audit`.
Errors look like ClickHouse's (`Code: N. DB::Exception: …` with X-ClickHouse-Exception-Code), so clients
report them as they would a server's.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import json
import re
import struct
import uuid
import zlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from facade.api._native import NativeFormatError, at_revision
from facade.auth import SCOPE_AUDIT, Authenticator, AuthError
from facade.observability.logs import get_logger
from projections._process import RemoteClient
from projections.client import ChdbClient, ClickHouseClient, ClickHouseError
from projections.read_model import ReadModel

__all__ = ["RESULT_BYTES_MAX", "SqlRefusedError", "build_sql_app", "checked_statement", "run_limited"]

QUERY_BYTES_MAX = 1024 * 1024
"""The longest query text (URL parameter plus body) accepted."""
RESULT_BYTES_MAX = 256 * 1024 * 1024
"""The largest formatted result one query may return (it crosses the pipe from the child in one piece)."""
RESULT_ROWS_MAX = 10_000_000
EXECUTION_SECONDS_MAX = 60
MEMORY_BYTES_MAX = 2 * 1024 * 1024 * 1024
PARAMETERS_MAX = 256
CHUNK_BYTES = 1024 * 1024
"""Responses are streamed in chunks of this size (compressed chunk by chunk)."""
FORMAT_DEFAULT = "TabSeparated"
TIMEZONE = "UTC"
DISPLAY_NAME = "ledger-read-model"
KEYWORDS_ALLOWED = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS"})
FUNCTIONS_DENIED = frozenset(
    {
        # chDB reads any path with the file() *function* even under readonly=1 (verified), and python()
        # reaches objects of the child's interpreter; the rest readonly=1 refuses already (belt and braces).
        *("file", "python", "executable", "url", "s3", "s3cluster", "gcs", "azureblobstorage", "hdfs"),
        *("remote", "remotesecure", "cluster", "clusterallreplicas", "mysql", "postgresql", "sqlite"),
        *("jdbc", "odbc", "mongodb", "redis", "iceberg", "deltalake", "hudi", "input"),
    }
)

# ClickHouse error codes the clients know.
_CODE_SYNTAX_ERROR = 62
_CODE_UNKNOWN_DATABASE = 81
_CODE_READONLY = 164
_CODE_ACCESS_DENIED = 497
_CODE_AUTHENTICATION_FAILED = 516
_CODE_UNKNOWN = 1002

_LIMITS = (
    f"readonly=1, max_execution_time={EXECUTION_SECONDS_MAX}, max_result_rows={RESULT_ROWS_MAX}, "
    f"max_result_bytes={RESULT_BYTES_MAX}, result_overflow_mode='throw', max_memory_usage={MEMORY_BYTES_MAX}, "
    # As a server whose profile turns HTTP compression on: system.settings shows it set, so clients that
    # read it (clickhouse-connect) ask by Accept-Encoding alone, as they must under readonly=1.
    "enable_http_compression=1"
)
"""Appended to every statement; constants only (no SQL built from request text)."""

CLIENT_PROTOCOL_VERSION_MAX = 1 << 32
"""A ClickHouse TCP protocol revision (54xxx today); larger is a client's mistake."""
FORMAT_NATIVE = "Native"

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CODE_IN_MESSAGE = re.compile(r"Code: (\d+)\.")

log = get_logger("ledger.sql")


class SqlRefusedError(Exception):
    """A request refused before chDB: HTTP status, ClickHouse error code, message."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class _Token(enum.Enum):
    WORD = "word"
    SEMICOLON = "semicolon"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Statement:
    sql: str
    """The statement without a trailing `;`, ready for the limits to be appended."""
    format: str | None
    """The statement's own FORMAT clause, if any (chDB produces it)."""


def _tokens(sql: str) -> list[tuple[_Token, str]]:
    """The statement's tokens outside literals and comments (enough to find `;`, the first keyword,
    SETTINGS and FORMAT); an unterminated literal or comment is refused (it could swallow our limits)."""
    found: list[tuple[_Token, str]] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif sql.startswith("--", i) or c == "#":
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                raise SqlRefusedError(400, _CODE_SYNTAX_ERROR, "unterminated comment")
            i = end + 2
        elif c in "'\"`":
            j = i + 1
            while j < n and sql[j] != c:
                j += 2 if sql[j] == "\\" else 1
            if j >= n:
                raise SqlRefusedError(400, _CODE_SYNTAX_ERROR, "unterminated quoted text")
            found.append((_Token.OTHER, sql[i : j + 1]))
            i = j + 1
        elif c == ";":
            found.append((_Token.SEMICOLON, c))
            i += 1
        else:
            match = _WORD.match(sql, i)
            if match is not None:
                found.append((_Token.WORD, match.group()))
                i = match.end()
            else:
                found.append((_Token.OTHER, c))
                i += 1
    return found


def checked_statement(sql: str) -> Statement:
    """`sql` when it is one read statement without a SETTINGS clause of its own, else SqlRefusedError."""
    tokens = _tokens(sql)
    if not tokens:
        raise SqlRefusedError(400, _CODE_SYNTAX_ERROR, "empty query")
    semicolons = [index for index, (kind, _) in enumerate(tokens) if kind is _Token.SEMICOLON]
    if semicolons and semicolons != [len(tokens) - 1]:
        raise SqlRefusedError(400, _CODE_SYNTAX_ERROR, "Multi-statements are not allowed")
    kind, first = tokens[0]
    if kind is not _Token.WORD or first.upper() not in KEYWORDS_ALLOWED:
        raise SqlRefusedError(
            403, _CODE_READONLY, "Cannot execute query in readonly mode: only SELECT, WITH, SHOW, DESCRIBE, EXISTS"
        )
    # Keywords only: a word after `.` names a table or column (system.settings).
    words = [
        text.upper()
        for index, (kind, text) in enumerate(tokens)
        if kind is _Token.WORD and (index == 0 or tokens[index - 1][1] != ".")
    ]
    if "SETTINGS" in words:
        raise SqlRefusedError(403, _CODE_READONLY, "SETTINGS clauses are not allowed: the endpoint's limits apply")
    for index in range(len(tokens) - 1):
        name = tokens[index][1].strip('`"').lower()
        if tokens[index + 1][1] == "(" and name in FUNCTIONS_DENIED:
            raise SqlRefusedError(403, _CODE_READONLY, f"function {name}() is not allowed")
    if "OUTFILE" in words:
        raise SqlRefusedError(403, _CODE_READONLY, "INTO OUTFILE is not allowed")
    text = sql.rstrip()
    if semicolons:
        text = text[: text.rindex(";")]
    body = tokens[: len(tokens) - len(semicolons)]
    fmt = None
    if len(body) >= 2 and body[-2][0] is _Token.WORD and body[-2][1].upper() == "FORMAT" and body[-1][0] is _Token.WORD:
        fmt = body[-1][1]
    assert ";" not in text[-1:]
    return Statement(text, fmt)


def _credential(request: Request) -> str | None:
    """The Authorization value facade.auth understands: a bearer token as is; a password (basic auth,
    X-ClickHouse-Key, `password` parameter) as a bearer token when it looks like a JWT, else an API key."""
    header = request.headers.get("authorization")
    password: str | None = None
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return header
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        password = decoded.partition(":")[2]
    password = password or request.headers.get("x-clickhouse-key") or request.query_params.get("password")
    if not password:
        return None
    return f"Bearer {password}" if password.count(".") == 2 else f"ApiKey {password}"


def _error(status: int, code: int, message: str, query_id: str) -> Response:
    return PlainTextResponse(
        f"Code: {code}. DB::Exception: {message}. (version ledger)\n",
        status_code=status,
        headers={"X-ClickHouse-Exception-Code": str(code), "X-ClickHouse-Query-Id": query_id},
    )


class Encoding(enum.Enum):
    """Response compressions, by their Accept-Encoding names (ClickHouse's: lz4 is an LZ4 frame)."""

    LZ4 = "lz4"
    ZSTD = "zstd"
    GZIP = "gzip"
    DEFLATE = "deflate"


ACCEPT_ENCODING_ITEMS_MAX = 16
"""Items of an Accept-Encoding header considered: a longer list is a client's mistake or an attack."""


def _encoding(request: Request) -> Encoding | None:
    """The first encoding in the client's Accept-Encoding we speak. HTTP compression is on unless the
    request turns it off (enable_http_compression=0), as on a ClickHouse server whose profile enables it
    (and the queries report it so: _LIMITS). clickhouse-connect lists its preference first (lz4, zstd,
    ..., gzip, deflate with compress=True; the one it names with compress="zstd"; identity with False)."""
    if request.query_params.get("enable_http_compression") == "0":
        return None
    items = request.headers.get("accept-encoding", "").split(",")[:ACCEPT_ENCODING_ITEMS_MAX]
    known = {encoding.value: encoding for encoding in Encoding}
    for item in items:
        name, _, weight = item.strip().lower().partition(";")
        if name in known and weight.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000"):
            return known[name]
    return None


class _Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class _Lz4Frame:
    """One LZ4 frame over the whole response (lz4.frame: the frame header, blocks, the end mark)."""

    def __init__(self) -> None:
        import lz4.frame  # type: ignore[import-untyped]  # lz4 ships no type hints.

        self._frame = lz4.frame.LZ4FrameCompressor()
        self._header: bytes | None = bytes(self._frame.begin())

    def compress(self, data: bytes) -> bytes:
        header, self._header = self._header or b"", None
        return header + bytes(self._frame.compress(data))

    def flush(self) -> bytes:
        header, self._header = self._header or b"", None
        return header + bytes(self._frame.flush())


def _compressor(encoding: Encoding) -> _Compressor:
    if encoding is Encoding.LZ4:
        return _Lz4Frame()
    if encoding is Encoding.ZSTD:
        try:
            from compression import zstd  # type: ignore[import-not-found,unused-ignore]  # Python 3.14+
        except ImportError:
            from backports import zstd  # type: ignore[import-not-found,no-redef,unused-ignore]
        compressor: _Compressor = zstd.ZstdCompressor()
        return compressor
    return zlib.compressobj(wbits=31 if encoding is Encoding.GZIP else 15)


async def _chunks(payload: bytes, encoding: Encoding | None) -> AsyncIterator[bytes]:
    compressor = _compressor(encoding) if encoding is not None else None
    for start in range(0, len(payload), CHUNK_BYTES):
        chunk = payload[start : start + CHUNK_BYTES]
        yield compressor.compress(chunk) if compressor is not None else chunk
    if compressor is not None:
        yield compressor.flush()


class NativeCompression(enum.Enum):
    """ClickHouse's own block compression (`compress=1`, `network_compression_method`), which clickhouse-go
    asks for with lz4 and zstd: per block a CityHash128 checksum, the method byte, the compressed size
    (header included) and the raw size, both UInt32 little-endian, then the compressed bytes."""

    LZ4 = 0x82
    ZSTD = 0x90


_NATIVE_HEADER_BYTES = 9
NATIVE_COMPRESSION_LEVEL_MAX = 22


def _native_compression(request: Request) -> NativeCompression | None:
    if request.query_params.get("compress") != "1":
        return None
    method = request.query_params.get("network_compression_method", "LZ4").upper()
    if method not in NativeCompression.__members__:
        raise SqlRefusedError(400, _CODE_SYNTAX_ERROR, f"unknown network_compression_method {method[:16]!r}")
    return NativeCompression[method]


def _native_block(data: bytes, method: NativeCompression) -> bytes:
    from clickhouse_cityhash.cityhash import CityHash128  # type: ignore[import-untyped]  # No type hints.

    if method is NativeCompression.LZ4:
        import lz4.block  # type: ignore[import-untyped]  # lz4 ships no type hints.

        compressed = bytes(lz4.block.compress(data, store_size=False))
    else:
        compressor = _compressor(Encoding.ZSTD)  # One zstd frame per block.
        compressed = bytes(compressor.compress(data)) + bytes(compressor.flush())
    header = struct.pack("<BII", method.value, _NATIVE_HEADER_BYTES + len(compressed), len(data))
    checksum: int = CityHash128(header + compressed)
    # CityHash128 returns (high << 64) | low as one int; on the wire: the first half (high), then the second.
    block = struct.pack("<QQ", checksum >> 64, checksum & 0xFFFF_FFFF_FFFF_FFFF) + header + compressed
    assert len(block) == 16 + _NATIVE_HEADER_BYTES + len(compressed)
    return block


async def _native_chunks(payload: bytes, method: NativeCompression) -> AsyncIterator[bytes]:
    for start in range(0, len(payload), CHUNK_BYTES):
        yield _native_block(payload[start : start + CHUNK_BYTES], method)


async def _query_text(request: Request) -> str:
    text = request.query_params.get("query", "")
    if request.method == "POST":
        body = b""
        async for part in request.stream():
            body += part
            if len(body) > QUERY_BYTES_MAX:
                raise SqlRefusedError(413, _CODE_SYNTAX_ERROR, f"query longer than {QUERY_BYTES_MAX} bytes")
        encoding = request.headers.get("content-encoding", "").lower()
        if encoding in ("gzip", "deflate"):
            inflater = zlib.decompressobj(wbits=47)  # gzip or zlib, detected from the header.
            body = inflater.decompress(body, QUERY_BYTES_MAX + 1)
            if len(body) > QUERY_BYTES_MAX or inflater.unconsumed_tail:
                raise SqlRefusedError(413, _CODE_SYNTAX_ERROR, f"query longer than {QUERY_BYTES_MAX} bytes")
        try:
            posted = body.decode("utf-8")
        except UnicodeDecodeError as error:
            raise SqlRefusedError(400, _CODE_SYNTAX_ERROR, "query is not UTF-8") from error
        text = f"{text}\n{posted}" if text else posted
    if len(text) > QUERY_BYTES_MAX:
        raise SqlRefusedError(413, _CODE_SYNTAX_ERROR, f"query longer than {QUERY_BYTES_MAX} bytes")
    return text


def _parameters(request: Request) -> dict[str, str]:
    found = {key[6:]: value for key, value in request.query_params.items() if key.startswith("param_")}
    if len(found) > PARAMETERS_MAX:
        raise SqlRefusedError(400, _CODE_SYNTAX_ERROR, f"more than {PARAMETERS_MAX} parameters")
    for name in found:
        if not _PARAMETER_NAME.fullmatch(name):
            raise SqlRefusedError(400, _CODE_SYNTAX_ERROR, f"bad parameter name {name!r}")
    return found


def _client_protocol_version(request: Request) -> int:
    """The revision an HTTP client decodes Native at (clickhouse-go sends its own on every request); 0 if
    none: chDB's own Native, as a server writes it for a client that names no revision."""
    text = request.query_params.get("client_protocol_version", "")
    if not text:
        return 0
    if not text.isdigit() or int(text) > CLIENT_PROTOCOL_VERSION_MAX:
        raise SqlRefusedError(400, _CODE_SYNTAX_ERROR, f"bad client_protocol_version {text[:32]!r}")
    return int(text)


def run_limited(client: ClickHouseClient, sql: str, fmt: str, parameters: Mapping[str, str]) -> bytes:
    """`sql` with the endpoint's SETTINGS (readonly=1 and the limits) appended, on the read model's
    thread: through the child (RemoteClient) or the in-process chDB client."""
    if not isinstance(client, RemoteClient | ChdbClient):
        raise ClickHouseError("the SQL endpoint serves the embedded chDB read model only")
    payload = client.query_formatted(f"{sql}\nSETTINGS {_LIMITS}", fmt, parameters, RESULT_BYTES_MAX)
    assert len(payload) <= RESULT_BYTES_MAX
    return payload


def build_sql_app(read_model: ReadModel, authenticator: Authenticator, database: str) -> Starlette:
    """The ASGI app for api.sql_port."""

    async def ping(_request: Request) -> Response:
        return PlainTextResponse("Ok.\n")

    async def query(request: Request) -> Response:
        query_id = request.query_params.get("query_id") or str(uuid.uuid4())
        try:
            principal = await authenticator.authenticate_async(_credential(request))
        except AuthError as error:
            return _error(401, _CODE_AUTHENTICATION_FAILED, error.message, query_id)
        if SCOPE_AUDIT not in principal.scopes:
            return _error(403, _CODE_ACCESS_DENIED, f"requires scope {SCOPE_AUDIT}", query_id)
        try:
            requested = request.headers.get("x-clickhouse-database") or request.query_params.get("database")
            if requested and requested not in (database, "default"):
                raise SqlRefusedError(404, _CODE_UNKNOWN_DATABASE, f"Database {requested} unknown; use {database}")
            text = await _query_text(request)
            if not text.strip():
                return PlainTextResponse("Ok.\n")  # As ClickHouse: GET / without a query.
            statement = checked_statement(text)
            parameters = _parameters(request)
            revision = _client_protocol_version(request)
            native_compression = _native_compression(request)
        except SqlRefusedError as refusal:
            return _error(refusal.status, refusal.code, refusal.message, query_id)
        fmt = (
            statement.format
            or request.headers.get("x-clickhouse-format")
            or request.query_params.get("default_format")
            or FORMAT_DEFAULT
        )
        if not _WORD.fullmatch(fmt):
            return _error(400, _CODE_SYNTAX_ERROR, f"bad format {fmt!r}", query_id)
        try:
            payload = await read_model.query(lambda client: run_limited(client, statement.sql, fmt, parameters))
        except ClickHouseError as error:
            message = str(error)
            found = _CODE_IN_MESSAGE.search(message)
            code = int(found.group(1)) if found else _CODE_UNKNOWN
            status = 403 if code == _CODE_READONLY else 400 if code == _CODE_SYNTAX_ERROR else 500
            return PlainTextResponse(
                message if message.endswith("\n") else message + "\n",
                status_code=status,
                headers={"X-ClickHouse-Exception-Code": str(code), "X-ClickHouse-Query-Id": query_id},
            )
        if fmt == FORMAT_NATIVE and revision:
            try:  # Off the event loop: it walks every value of the result.
                payload = await asyncio.to_thread(at_revision, payload, revision)
            except NativeFormatError as error:
                return _error(400, _CODE_UNKNOWN, str(error), query_id)
        log.info("sql query", client_id=principal.client_id, query_id=query_id, bytes=len(payload))
        encoding = _encoding(request)
        headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Format": fmt,
            "X-ClickHouse-Timezone": TIMEZONE,
            "X-ClickHouse-Server-Display-Name": DISPLAY_NAME,
            "X-ClickHouse-Summary": json.dumps(
                {
                    "read_rows": "0",
                    "read_bytes": "0",
                    "written_rows": "0",
                    "written_bytes": "0",
                    "total_rows_to_read": "0",
                    "result_rows": "0",
                    "result_bytes": str(len(payload)),
                }
            ),
        }
        if native_compression is not None:  # The client decompresses the blocks itself: no HTTP encoding.
            chunks = _native_chunks(payload, native_compression)
        else:
            if encoding is not None:
                headers["Content-Encoding"] = encoding.value
            chunks = _chunks(payload, encoding)
        return StreamingResponse(chunks, headers=headers, media_type="text/plain; charset=UTF-8")

    return Starlette(routes=[Route("/ping", ping, methods=["GET", "HEAD"]), Route("/", query, methods=["GET", "POST"])])
