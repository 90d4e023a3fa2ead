"""The FastAPI JSON gateway: every ledger.v1.Ledger RPC as an HTTP route, for teams behind an HTTP API
gateway. OpenAPI at /openapi.json, Swagger UI at /docs, ReDoc at /redoc (their assets served from the
fastapi-offline package: no CDN). With the read model served in-service, the History queries too
(facade.http.history_routes: statement, as-of balance, daily totals, by correlation id, reconciliation).

Same operations, same auth, same errors as gRPC:
- Every route is declared in one table (facade.http._routes.ROUTES: method, path, RPC, request message,
  scope) on a module-level router (ledger_routes, history_routes, audit_routes), and delegates to the same
  facade.operations function the gRPC servicer calls: a transaction posted here is the same transaction
  over gRPC, with the same id. OpenAPI marks each operation with `x-grpc-method` (its full gRPC method)
  and lists the scope it needs (`Security(..., scopes=[...])`).
- Credentials: the `Authorization` header, `Bearer <jwt>` or `ApiKey <key_id>.<secret>`, checked by the
  same Authenticator, needing the scope facade.auth.METHOD_SCOPES gives the corresponding RPC.
- The JSON is the proto3 JSON mapping of the gRPC messages (see facade.http.models).
- Creating a resource answers 201; a transaction's replay 200 (facade.http._routes says why).
(StreamTransactions has no HTTP form: use POST /v1/transactions:batch.)

Errors: a JSON body {"code", "reason", "message", "metadata"}: `code` is the gRPC status name and
`reason` the google.rpc.ErrorInfo reason the gRPC API gives for the same failure. The HTTP status
follows the error's kind (facade.http.errors.HTTP_STATUS, which says why FAILED_PRECONDITION is 422).
Requests the schema
rejects (wrong types, unknown fields, integers out of range) are 400 INVALID_ARGUMENT with reason
INVALID_REQUEST, or INVALID_AMOUNT when the bad field is an amount (e.g. a JSON number: amounts are
decimal strings), and metadata.field naming the field as the mapping module does (legs[0].amount).
A body that is not one well-formed JSON document is 400 INVALID_ARGUMENT before any schema sees it
(facade.http._json): MALFORMED_JSON (syntax, not UTF-8, NaN, too deep), DUPLICATE_KEY (a key twice
in one object: no "last one wins"), INVALID_UNICODE (a lone surrogate escape); a query parameter the
route does not declare is 400 UNKNOWN_QUERY_PARAMETER. Nothing unexpected
answers with its text: 500 INTERNAL "internal error (error id ...)", the detail logged under that id.
Every answer, 500s included, is counted in ledger_request_duration_seconds{edge="http"}.

A batch answers 200 with one result per item; each failed item carries the same error object.

Admission (facade.http.admission): a body above api.http_body_bytes_max is 413 REQUEST_TOO_LARGE before
it is read; a write the queue cannot take in time is 429 before its body is parsed; the optional
`X-Request-Timeout-Ms` header is the caller's deadline (as gRPC's): work still queued when it passes is
never committed (504 DEADLINE_EXCEEDED). A batch body is parsed, validated and converted in a worker
thread, item by item, so a large one does not stall the event loop that serves gRPC too.
"""

# No `from __future__ import annotations`: the routes' Annotated dependencies are built in build_app
# (per-operation scopes), and FastAPI must see them as objects, not as strings naming locals.

import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facade.auth import Authenticator
from facade.domain.errors import ErrorKind, LedgerError
from facade.http import audit_routes, history_routes, ledger_routes
from facade.http import models as m
from facade.http._json import MalformedRequest
from facade.http._routes import credentials
from facade.http.admission import AdmissionMiddleware
from facade.http.errors import error_response, http_error_response
from facade.observability import metrics
from facade.operations.history import HistoryBackend
from facade.operations.unexpected import REASON_MALFORMED_REQUEST, unexpected_error
from facade.service import LedgerService
from projections.read_model import ReadModel

API_VERSION = "v1"
CLIENT_CLOSED_STATUS = 499

# Fields whose schema errors get the mapping module's reason rather than INVALID_REQUEST.
_FIELD_REASONS = {"amount": "INVALID_AMOUNT"}

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {
        "model": m.Error,
        "description": "INVALID_ARGUMENT: INVALID_REQUEST (the schema rejected it), MALFORMED_JSON, DUPLICATE_KEY, "
        "INVALID_UNICODE, UNKNOWN_QUERY_PARAMETER, INVALID_TIMESTAMP (a time neither ns nor RFC 3339), or the "
        "mapping's reason (INVALID_AMOUNT, ...)",
    },
    401: {
        "model": m.Error,
        "description": "UNAUTHENTICATED: MISSING_CREDENTIALS, INVALID_TOKEN, TOKEN_EXPIRED, TOKEN_NOT_YET_VALID, "
        "TOKEN_CLAIM_INVALID (metadata.claim), TOKEN_KEY_UNKNOWN, INVALID_API_KEY",
    },
    403: {"model": m.Error, "description": "PERMISSION_DENIED: the credentials lack the route's scope"},
    404: {"model": m.Error, "description": "NOT_FOUND (e.g. ACCOUNT_NOT_FOUND, TRANSACTION_NOT_FOUND)"},
    409: {"model": m.Error, "description": "ALREADY_EXISTS (e.g. IDEMPOTENCY_KEY_REUSED)"},
    422: {"model": m.Error, "description": "FAILED_PRECONDITION (e.g. INSUFFICIENT_FUNDS)"},
    429: {"model": m.Error, "description": "RESOURCE_EXHAUSTED: write queue full; see Retry-After"},
    500: {"model": m.Error, "description": "INTERNAL: an unexpected failure; metadata.error_id finds it in the logs"},
    503: {"model": m.Error, "description": "UNAVAILABLE: the engine is unavailable"},
    504: {"model": m.Error, "description": "DEADLINE_EXCEEDED"},
}


def _field_name(location: tuple[int | str, ...]) -> str:
    """('body', 'legs', 0, 'amount') → 'legs[0].amount', as the mapping module names fields."""
    name = ""
    for part in location[1:] if location and location[0] in ("body", "query", "path", "header") else location:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or str(location[0] if location else "body")


def _operation(scope: Scope) -> str:
    """The matched route's operation id (the router puts the route in the scope), or "unmatched"."""
    return getattr(scope.get("route"), "operation_id", None) or "unmatched"


def _unexpected_response(scope: Scope, error: Exception) -> JSONResponse:
    return error_response(unexpected_error(error, edge="http", operation=_operation(scope)))


class _ObserveMiddleware:
    """Latency per operation and HTTP status, next to the gRPC edge's (label values are bounded: operation
    ids and status codes); an exception no handler answered is answered here, as 500 INTERNAL, so it is
    counted too.

    A plain ASGI middleware rather than Starlette's `@app.middleware("http")` (BaseHTTPMiddleware), which
    runs each request's app in an anyio task group fed through memory streams: under bench_overload.py's
    40 HTTP clients that machinery was ~15% of the event loop's time (py-spy), the loop gRPC is served on too.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        """The status sent; 0 until the response starts."""

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        except Exception as error:
            if status:
                raise  # Already answering: nothing can replace the response (uvicorn closes the connection).
            await _unexpected_response(scope, error)(scope, receive, send_observed)
        # An app that returned without answering (the client went away first): nginx's 499 for "client
        # closed request", so the label stays a status code.
        metrics.request_duration_seconds.labels("http", _operation(scope), str(status or CLIENT_CLOSED_STATUS)).observe(
            time.perf_counter() - started
        )


def _install_error_handlers(app: FastAPI) -> None:
    async def ledger_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, LedgerError)  # AuthError included.
        return error_response(error)

    async def validation_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        errors = list(error.errors())
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": "invalid"}
        location = tuple(first.get("loc", ()))
        field = _field_name(location)
        last = location[-1] if location else ""
        reason = _FIELD_REASONS.get(last, "INVALID_REQUEST") if isinstance(last, str) else "INVALID_REQUEST"
        if reason == "INVALID_REQUEST" and first.get("type") == "missing" and len(location) > 1:
            reason = "MISSING_FIELD"  # As the mapping module says over gRPC (proto3: an absent string is empty).
        message = "; ".join(f"{_field_name(tuple(e.get('loc', ())))}: {e.get('msg', '')}" for e in errors[:10])
        metadata = {"field": field, "error": str(first.get("type", "")), "errors": str(len(errors))}
        return error_response(LedgerError(ErrorKind.INVALID, reason, message, metadata))

    async def http_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        if isinstance(error, MalformedRequest):
            metadata = {"field": error.field} if error.field else {}
            return error_response(LedgerError(ErrorKind.INVALID, error.reason, error.message, metadata))
        if error.status_code == 400:
            return error_response(LedgerError(ErrorKind.INVALID, REASON_MALFORMED_REQUEST, "malformed request"))
        if error.status_code == 404:
            return error_response(LedgerError(ErrorKind.NOT_FOUND, "ROUTE_NOT_FOUND", "no such route"))
        if error.status_code == 405:
            return http_error_response(405, "UNIMPLEMENTED", "METHOD_NOT_ALLOWED", "method not allowed")
        return http_error_response(error.status_code, "UNKNOWN", "HTTP_ERROR", str(error.detail))

    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        return _unexpected_response(request.scope, error)

    app.add_exception_handler(LedgerError, ledger_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)


def build_app(
    service: LedgerService,
    authenticator: Authenticator,
    *,
    history: HistoryBackend | None = None,
    read_model: ReadModel | None = None,
) -> FastAPI:
    # Swagger UI and ReDoc from fastapi-offline's bundled assets (under /static-offline-docs), not a CDN:
    # /docs and /redoc render on a machine without internet (tests/http/test_docs_offline.py).
    app = FastAPIOffline(
        title="Ledger JSON gateway",
        version=API_VERSION,
        description=(__doc__ or "").split("\n\n", 1)[0]
        + "\n\nMoney, ids and 64-bit timestamps are decimal strings, never JSON numbers. Errors carry the gRPC "
        "status name and the same machine-readable reason as the gRPC API.",
    )
    _install_error_handlers(app)
    # Added before _ObserveMiddleware, so it runs inside it: refusals are measured like any other answer.
    app.add_middleware(
        AdmissionMiddleware,
        service=service,
        body_bytes_max=service.settings.http_body_bytes_max,
        concurrent_writes_max=service.settings.http_concurrent_requests_max,
        refuse=error_response,
    )

    app.add_middleware(_ObserveMiddleware)

    app.state.service = service
    app.state.authenticator = authenticator
    app.state.history = history
    app.include_router(ledger_routes.router, responses=_ERROR_RESPONSES)
    if history is not None:
        app.include_router(history_routes.router, responses=_ERROR_RESPONSES)
        app.include_router(audit_routes.router, responses=_ERROR_RESPONSES)
    if read_model is not None:
        from facade.http.statement_routes import statement_router

        app.include_router(
            statement_router(
                read_model,
                authenticator,
                service.settings.currencies,
                credentials=credentials,
                responses=_ERROR_RESPONSES,
            )
        )
    _declare_batch_schema(app)
    return app


def _declare_batch_schema(app: FastAPI) -> None:
    """The batch route reads its body itself (parse_batch), so FastAPI does not see the model: its
    schema joins the components here, under the name the route's requestBody refers to."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            schema = m.PostTransactionsRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = document["components"]["schemas"]
            for name, definition in schema.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components["PostTransactionsRequest"] = schema
        return app.openapi_schema  # type: ignore[return-value]  # Set by generate().

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema.
