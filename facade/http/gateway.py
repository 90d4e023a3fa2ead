"""The FastAPI JSON gateway: every ledger.v1.Ledger RPC as an HTTP route, for teams behind an HTTP API
gateway. OpenAPI at /openapi.json, Swagger UI at /docs, ReDoc at /redoc (their assets served from the
fastapi-offline package: no CDN). With the read model served in-service, the History queries too
(facade.http.history_routes: statement, as-of balance, daily totals, by correlation id, reconciliation).

Same service, same mapping, same auth, same errors as gRPC:
- Each route calls the one LedgerService (so facade.domain.mapping maps, validates and derives ids:
  a transaction posted here has the same id and is the same transaction over gRPC).
- Credentials: the `Authorization` header, `Bearer <jwt>` or `ApiKey <key_id>.<secret>`, checked by the
  same Authenticator, needing the scope facade.auth.METHOD_SCOPES gives the corresponding RPC.
- The JSON is the proto3 JSON mapping of the gRPC messages (see facade.http.models).

Routes (custom methods in the `:verb` style of Google's API design guide):
    POST /v1/accounts                                 CreateAccount        ledger.admin
    GET  /v1/accounts                                 ListAccounts         ledger.read
    GET  /v1/accounts/{account_id}                    GetAccount           ledger.read
    GET  /v1/accounts/{account_id}/balance            GetBalance           ledger.read
    GET  /v1/accounts/{account_id}/entries            ListAccountEntries   ledger.read
    POST /v1/transactions                             PostTransaction      ledger.write
    POST /v1/transactions:batch                       PostTransactions     ledger.write
    GET  /v1/transactions?idempotency_key=...         GetTransaction       ledger.read
    GET  /v1/transactions/{transaction_id}            GetTransaction       ledger.read
    POST /v1/transactions/{authorization_id}:capture  CaptureTransaction   ledger.write
    POST /v1/transactions/{authorization_id}:void     VoidTransaction      ledger.write
(StreamTransactions has no HTTP form: use :batch.)

Errors: a JSON body {"code", "reason", "message", "metadata"}: `code` is the gRPC status name and
`reason` the google.rpc.ErrorInfo reason the gRPC API gives for the same failure. The HTTP status
follows the error's kind (facade.http.errors.HTTP_STATUS). FAILED_PRECONDITION is 422, not 409: the request is valid
but the ledger's state refuses it (INSUFFICIENT_FUNDS, AUTHORIZATION_ALREADY_CAPTURED, ...), and 409
stays ALREADY_EXISTS alone (IDEMPOTENCY_KEY_REUSED, ACCOUNT_REFERENCE_REUSED), so a client that looks
at the status only can still tell "retry later / fix the state" from "you reused a key". RESOURCE_EXHAUSTED
is 429 with Retry-After (whole seconds, rounded up) and metadata.retry_after_ms. Requests the schema
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

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi_offline import FastAPIOffline
from google.rpc import code_pb2
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from facade.api.errors import REASON_MALFORMED_REQUEST, unexpected_error
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.auth import METHOD_SCOPES, Authenticator, Principal
from facade.domain.errors import ErrorKind, LedgerError, invalid
from facade.http import models as m
from facade.http._json import MalformedRequest, StrictJsonRoute, parse_body
from facade.http.admission import AdmissionMiddleware, request_deadline
from facade.http.audit_routes import audit_router
from facade.http.errors import error_response, http_error_response
from facade.http.history_routes import history_router
from facade.observability import metrics
from facade.operations import ledger as ops
from facade.operations.history import HistoryBackend
from facade.service import BATCH_TRANSACTIONS_MAX, LedgerService
from projections.read_model import ReadModel

API_VERSION = "v1"
RPC_PREFIX = "/ledger.v1.Ledger/"
U64_MAX = 2**64 - 1

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

_credentials = APIKeyHeader(
    name="Authorization",
    scheme_name="LedgerCredentials",
    description="`Bearer <jwt>` (HS256 with the shared secret, or RS/PS/ES/EdDSA with the JWKS key named by `kid`; "
    "`exp` required, `sub` = client id, `scope` = space-separated scopes) or "
    "`ApiKey <key_id>.<secret>`. Scopes: ledger.read, ledger.write, ledger.admin.",
    auto_error=False,
)


def _field_name(location: tuple[int | str, ...]) -> str:
    """('body', 'legs', 0, 'amount') → 'legs[0].amount', as the mapping module names fields."""
    name = ""
    for part in location[1:] if location and location[0] in ("body", "query", "path", "header") else location:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or str(location[0] if location else "body")


def _unexpected_response(request: Request, error: Exception) -> JSONResponse:
    route = request.scope.get("route")
    operation = getattr(route, "operation_id", None) or "unmatched"
    found = unexpected_error(error, edge="http", operation=operation)
    return error_response(found)


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
        return _unexpected_response(request, error)

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
    # Added before `observe`, so it runs inside it: refusals are measured like any other answer.
    app.add_middleware(
        AdmissionMiddleware,
        service=service,
        body_bytes_max=service.settings.http_body_bytes_max,
        concurrent_writes_max=service.settings.http_concurrent_requests_max,
        refuse=error_response,
    )

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """Latency per operation and HTTP status, next to the gRPC edge's (label values are bounded:
        operation ids and status codes)."""
        started = time.perf_counter()
        try:
            response: Response = await call_next(request)
        except Exception as error:  # Answered here (not by Starlette's outermost handler) so it is counted.
            response = _unexpected_response(request, error)
        route = request.scope.get("route")
        operation = getattr(route, "operation_id", None) or "unmatched"
        metrics.request_duration_seconds.labels("http", operation, str(response.status_code)).observe(
            time.perf_counter() - started
        )
        return response

    router = APIRouter(prefix="/" + API_VERSION, responses=_ERROR_RESPONSES, route_class=StrictJsonRoute)

    def caller(rpc: str) -> Any:
        """The authenticated principal, holding the scope the gRPC method `rpc` needs."""
        scope = METHOD_SCOPES[RPC_PREFIX + rpc]

        async def principal(authorization: Annotated[str | None, Security(_credentials)]) -> Principal:
            found = await authenticator.authenticate_async(authorization)
            authenticator.authorize(found, scope)
            return found

        return Depends(principal)

    def route(
        method: Literal["GET", "POST"],
        path: str,
        rpc: str,
        response_model: type[BaseModel],
        tag: str,
        summary: str,
        *,
        openapi_extra: dict[str, Any] | None = None,
    ) -> Callable[[Callable[..., Coroutine[Any, Any, Any]]], Any]:
        scope = METHOD_SCOPES[RPC_PREFIX + rpc]
        return router.api_route(
            path,
            methods=[method],
            response_model=response_model,
            tags=[tag],
            summary=summary,
            operation_id=rpc if rpc != "GetTransaction" or "{" in path else "GetTransactionByIdempotencyKey",
            description=f"gRPC: `ledger.v1.Ledger/{rpc}`. Scope: `{scope}`.",
            openapi_extra={"x-required-scope": scope, **(openapi_extra or {})},
        )

    AccountPath = Annotated[str, Path(description="The account id (u128, decimal string).")]  # noqa: N806

    @route("POST", "/accounts", "CreateAccount", m.Account, "accounts", "Open an account (idempotent per reference)")
    async def create_account(
        principal: Annotated[Principal, caller("CreateAccount")], body: m.CreateAccountRequest
    ) -> dict[str, Any]:
        request = m.to_message(body, pb.CreateAccountRequest())
        return m.from_message(await ops.create_account(service, principal, request, request_deadline.get()))

    @route("GET", "/accounts", "ListAccounts", m.ListAccountsResponse, "accounts", "List the caller's accounts")
    async def list_accounts(
        principal: Annotated[Principal, caller("ListAccounts")],
        page_size: Annotated[int, Query(ge=0, le=m.UINT32_MAX, description="At most 1000; 0 = 100.")] = 0,
        page_token: Annotated[str, Query(description="A previous response's next_page_token.")] = "",
        currency: Annotated[str, Query(description="Only accounts in this currency.")] = "",
    ) -> dict[str, Any]:
        request = pb.ListAccountsRequest(page_size=page_size, page_token=page_token, currency=currency)
        return m.from_message(await ops.list_accounts(service, principal, request, request_deadline.get()))

    @route("GET", "/accounts/{account_id}", "GetAccount", m.Account, "accounts", "An account and its balance")
    async def get_account(
        principal: Annotated[Principal, caller("GetAccount")], account_id: AccountPath
    ) -> dict[str, Any]:
        request = pb.GetAccountRequest(account_id=account_id)
        return m.from_message(await ops.get_account(service, principal, request, request_deadline.get()))

    @route("GET", "/accounts/{account_id}/balance", "GetBalance", m.Balance, "accounts", "Posted, pending, available")
    async def get_balance(
        principal: Annotated[Principal, caller("GetBalance")], account_id: AccountPath
    ) -> dict[str, Any]:
        request = pb.GetBalanceRequest(account_id=account_id)
        return m.from_message(await ops.get_balance(service, principal, request, request_deadline.get()))

    @route(
        "GET",
        "/accounts/{account_id}/entries",
        "ListAccountEntries",
        m.ListAccountEntriesResponse,
        "accounts",
        "An account's entries, cursor-paginated",
    )
    async def list_account_entries(
        principal: Annotated[Principal, caller("ListAccountEntries")],
        account_id: AccountPath,
        page_size: Annotated[int, Query(ge=0, le=m.UINT32_MAX, description="At most 1000; 0 = 100.")] = 0,
        page_token: Annotated[str, Query(description="A previous response's next_page_token.")] = "",
        from_ns: Annotated[
            int, Query(ge=0, le=U64_MAX, description="Engine time, inclusive, ns since the epoch; 0 = unbounded.")
        ] = 0,
        to_ns: Annotated[
            int, Query(ge=0, le=U64_MAX, description="Engine time, inclusive, ns since the epoch; 0 = unbounded.")
        ] = 0,
        order: Annotated[Literal["asc", "desc"], Query(description="asc: oldest first; desc: newest first.")] = "asc",
    ) -> dict[str, Any]:
        request = pb.ListAccountEntriesRequest(
            account_id=account_id,
            page_size=page_size,
            page_token=page_token,
            from_ns=from_ns,
            to_ns=to_ns,
            descending=order == "desc",
        )
        return m.from_message(await ops.list_account_entries(service, principal, request, request_deadline.get()))

    @route("POST", "/transactions", "PostTransaction", m.Transaction, "transactions", "Post one atomic transaction")
    async def post_transaction(
        principal: Annotated[Principal, caller("PostTransaction")], body: m.PostTransactionRequest
    ) -> dict[str, Any]:
        request = m.to_message(body, pb.PostTransactionRequest())
        return m.from_message(await ops.post_transaction(service, principal, request, request_deadline.get()))

    @route(
        "POST",
        "/transactions:batch",
        "PostTransactions",
        m.PostTransactionsResponse,
        "transactions",
        "Post independent transactions; a result per item",
        openapi_extra={"requestBody": _BATCH_REQUEST_BODY},
    )
    async def post_transactions(
        principal: Annotated[Principal, caller("PostTransactions")], http_request: Request
    ) -> Response:
        # Read here, parsed in a worker thread (parse_batch): the body is declared in openapi_extra.
        request = await asyncio.to_thread(parse_batch, await http_request.body())
        response = await ops.post_transactions(service, principal, request, request_deadline.get())
        return await asyncio.to_thread(_batch_response, response)

    @route(
        "GET",
        "/transactions",
        "GetTransaction",
        m.Transaction,
        "transactions",
        "A transaction by the idempotency key it was posted with",
    )
    async def get_transaction_by_key(
        principal: Annotated[Principal, caller("GetTransaction")],
        idempotency_key: Annotated[str, Query(min_length=1, description="The key the transaction was posted with.")],
    ) -> dict[str, Any]:
        request = pb.GetTransactionRequest(idempotency_key=idempotency_key)
        return m.from_message(await ops.get_transaction(service, principal, request, None))

    @route("GET", "/transactions/{transaction_id}", "GetTransaction", m.Transaction, "transactions", "A transaction")
    async def get_transaction(
        principal: Annotated[Principal, caller("GetTransaction")],
        transaction_id: Annotated[str, Path(description="32 lowercase hex digits.")],
    ) -> dict[str, Any]:
        request = pb.GetTransactionRequest(transaction_id=transaction_id)
        return m.from_message(await ops.get_transaction(service, principal, request, None))

    AuthorizationPath = Annotated[str, Path(description="The authorization's transaction id (32 hex digits).")]  # noqa: N806

    @route(
        "POST",
        "/transactions/{authorization_id}:capture",
        "CaptureTransaction",
        m.Transaction,
        "transactions",
        "Capture an authorization, fully or partly",
    )
    async def capture(
        principal: Annotated[Principal, caller("CaptureTransaction")],
        authorization_id: AuthorizationPath,
        body: m.CaptureTransactionRequest,
    ) -> dict[str, Any]:
        request = m.to_message(body, pb.CaptureTransactionRequest())
        request.authorization_id = authorization_id
        return m.from_message(await ops.capture_transaction(service, principal, request, request_deadline.get()))

    @route(
        "POST",
        "/transactions/{authorization_id}:void",
        "VoidTransaction",
        m.Transaction,
        "transactions",
        "Release an authorization's hold",
    )
    async def void(
        principal: Annotated[Principal, caller("VoidTransaction")],
        authorization_id: AuthorizationPath,
        body: m.VoidTransactionRequest,
    ) -> dict[str, Any]:
        request = m.to_message(body, pb.VoidTransactionRequest())
        request.authorization_id = authorization_id
        return m.from_message(await ops.void_transaction(service, principal, request, request_deadline.get()))

    app.include_router(router)
    if history is not None:
        app.include_router(history_router(history, authenticator, credentials=_credentials, responses=_ERROR_RESPONSES))
    if history is not None:
        app.include_router(audit_router(history, authenticator, credentials=_credentials, responses=_ERROR_RESPONSES))
    if read_model is not None:
        from facade.http.statement_routes import statement_router

        app.include_router(
            statement_router(
                read_model,
                authenticator,
                service.settings.currencies,
                credentials=_credentials,
                responses=_ERROR_RESPONSES,
            )
        )
    _declare_batch_schema(app)
    return app


_BATCH_REQUEST_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PostTransactionsRequest"}}},
}
_TRANSACTION = TypeAdapter(m.PostTransactionRequest)


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


def _request_error(errors: list[Any], *location: int | str) -> RequestValidationError:
    return RequestValidationError([{**error, "loc": ("body", *location, *error["loc"])} for error in errors])


def parse_batch(body: bytes) -> pb.PostTransactionsRequest:
    """A PostTransactions JSON body → the ledger_pb2 request, validated exactly as the route's model would
    be. Runs in a worker thread: the JSON is decoded in one call, then the items are validated and
    converted one at a time, so the event loop (which serves gRPC too) keeps its turns; the item count
    is checked before any item is validated, so an oversized batch costs one decode."""
    document = parse_body(body)  # Strict: duplicate keys, lone surrogates, NaN refused (MalformedRequest).
    items = document.get("transactions") if isinstance(document, dict) else None
    if not isinstance(items, list) or len(document) != 1:
        try:
            m.PostTransactionsRequest.model_validate(document)  # Its errors name what is wrong.
        except ValidationError as error:
            raise _request_error(list(error.errors(include_url=False))) from error
        raise _request_error([{"loc": (), "msg": "invalid batch", "type": "invalid"}])
    if len(items) > BATCH_TRANSACTIONS_MAX:
        raise invalid("BATCH_TOO_LARGE", f"at most {BATCH_TRANSACTIONS_MAX} transactions per call")
    message = pb.PostTransactionsRequest()
    for index, item in enumerate(items):
        try:
            model = _TRANSACTION.validate_python(item)
        except ValidationError as error:
            raise _request_error(list(error.errors(include_url=False)), "transactions", index) from error
        m.to_message(model, message.transactions.add())
    assert len(message.transactions) == len(items)
    return message


def _batch_response(response: pb.PostTransactionsResponse) -> Response:
    """The batch's JSON response, rendered in a worker thread (a thousand results take a while). A refused
    item's error is the gateway's error body (`code` the status name), as for a refused single call."""
    content = {
        "results": [
            {"error": _item_error_body(result.error)}
            if result.HasField("error")
            else {"transaction": m.from_message(result.transaction)}
            for result in response.results
        ]
    }
    # What FastAPI does with a route's response_model: validate, then dump (every field present).
    return JSONResponse(m.PostTransactionsResponse.model_validate(content).model_dump(mode="json", by_alias=True))


def _item_error_body(error: pb.ItemError) -> dict[str, Any]:
    return {
        "code": code_pb2.Code.Name(error.code),
        "reason": error.reason,
        "message": error.message,
        "metadata": dict(error.metadata),
    }
