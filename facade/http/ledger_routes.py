"""JSON routes for ledger.v1.Ledger: each turns its path, query and body into the RPC's request message and
delegates to facade.operations.ledger, as the gRPC servicer does (facade.http._routes declares them)."""

# No `from __future__ import annotations`: FastAPI must see the Annotated dependencies as objects.

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from google.rpc import code_pb2
from pydantic import TypeAdapter, ValidationError

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.domain.errors import invalid
from facade.http import models as m
from facade.http._json import StrictJsonRoute, parse_body
from facade.http._routes import API_PREFIX, CurrentPrincipal, Service, route
from facade.http.admission import request_deadline
from facade.operations import ledger as ops
from facade.service import BATCH_TRANSACTIONS_MAX

__all__ = ["BATCH_REQUEST_BODY", "parse_batch", "router"]

U64_MAX = 2**64 - 1
_REPLAY_STATUS = 200
"""A transaction create that replays an earlier one (`deduplicated`): nothing was created by this call."""

router = APIRouter(prefix=API_PREFIX, route_class=StrictJsonRoute)

BATCH_REQUEST_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PostTransactionsRequest"}}},
}

AccountPath = Annotated[str, Path(description="The account id (u128, decimal string).")]
AuthorizationPath = Annotated[str, Path(description="The authorization's transaction id (32 hex digits).")]
PageSize = Annotated[int, Query(ge=0, le=m.UINT32_MAX, description="At most 1000; 0 = 100.")]
PageToken = Annotated[str, Query(description="A previous response's next_page_token.")]


def _created(message: pb.Transaction, response: Response) -> dict[str, Any]:
    """A created transaction's JSON; a replay's status is 200 (see facade.http._routes)."""
    if message.deduplicated:
        response.status_code = _REPLAY_STATUS
    return m.from_message(message)


@route(router, "CreateAccount")
async def create_account(service: Service, principal: CurrentPrincipal, body: m.CreateAccountRequest) -> dict[str, Any]:
    request = m.to_message(body, pb.CreateAccountRequest())
    return m.from_message(await ops.create_account(service, principal, request, request_deadline.get()))


@route(router, "ListAccounts")
async def list_accounts(
    service: Service,
    principal: CurrentPrincipal,
    page_size: PageSize = 0,
    page_token: PageToken = "",
    currency: Annotated[str, Query(description="Only accounts in this currency.")] = "",
) -> dict[str, Any]:
    request = pb.ListAccountsRequest(page_size=page_size, page_token=page_token, currency=currency)
    return m.from_message(await ops.list_accounts(service, principal, request, request_deadline.get()))


@route(router, "GetAccount")
async def get_account(service: Service, principal: CurrentPrincipal, account_id: AccountPath) -> dict[str, Any]:
    request = pb.GetAccountRequest(account_id=account_id)
    return m.from_message(await ops.get_account(service, principal, request, request_deadline.get()))


@route(router, "GetBalance")
async def get_balance(service: Service, principal: CurrentPrincipal, account_id: AccountPath) -> dict[str, Any]:
    request = pb.GetBalanceRequest(account_id=account_id)
    return m.from_message(await ops.get_balance(service, principal, request, request_deadline.get()))


@route(router, "ListAccountEntries")
async def list_account_entries(
    service: Service,
    principal: CurrentPrincipal,
    account_id: AccountPath,
    page_size: PageSize = 0,
    page_token: PageToken = "",
    from_ns: Annotated[
        int, Query(ge=0, le=U64_MAX, description="Engine time, inclusive, ns since the epoch; 0 = unbounded.")
    ] = 0,
    to_ns: Annotated[
        int, Query(ge=0, le=U64_MAX, description="Engine time, inclusive, ns since the epoch; 0 = unbounded.")
    ] = 0,
    order: Annotated[Literal["asc", "desc"], Query(description="asc: oldest first; desc: newest first.")] = "asc",
    descending: Annotated[bool, Query(description="Newest first (the gRPC field; the same as order=desc).")] = False,
    from_rfc3339: Annotated[str, Query(description="from_ns as RFC 3339 (either, or both naming one time).")] = "",
    to_rfc3339: Annotated[str, Query(description="to_ns as RFC 3339 (either, or both naming one time).")] = "",
) -> dict[str, Any]:
    request = pb.ListAccountEntriesRequest(
        account_id=account_id,
        page_size=page_size,
        page_token=page_token,
        from_ns=from_ns,
        to_ns=to_ns,
        descending=descending or order == "desc",
        from_rfc3339=from_rfc3339,
        to_rfc3339=to_rfc3339,
    )
    return m.from_message(await ops.list_account_entries(service, principal, request, request_deadline.get()))


@route(router, "PostTransaction")
async def post_transaction(
    service: Service, principal: CurrentPrincipal, body: m.PostTransactionRequest, response: Response
) -> dict[str, Any]:
    request = m.to_message(body, pb.PostTransactionRequest())
    return _created(await ops.post_transaction(service, principal, request, request_deadline.get()), response)


@route(router, "PostTransactions", openapi_extra={"requestBody": BATCH_REQUEST_BODY})
async def post_transactions(service: Service, principal: CurrentPrincipal, http_request: Request) -> Response:
    # Read here, parsed in a worker thread (parse_batch): the body is declared in BATCH_REQUEST_BODY.
    request = await asyncio.to_thread(parse_batch, await http_request.body())
    response = await ops.post_transactions(service, principal, request, request_deadline.get())
    return await asyncio.to_thread(_batch_response, response)


@route(router, "GetTransactionByIdempotencyKey")
async def get_transaction_by_key(
    service: Service,
    principal: CurrentPrincipal,
    idempotency_key: Annotated[str, Query(min_length=1, description="The key the transaction was posted with.")],
) -> dict[str, Any]:
    request = pb.GetTransactionRequest(idempotency_key=idempotency_key)
    return m.from_message(await ops.get_transaction(service, principal, request, request_deadline.get()))


@route(router, "GetTransaction")
async def get_transaction(
    service: Service,
    principal: CurrentPrincipal,
    transaction_id: Annotated[str, Path(description="32 lowercase hex digits.")],
) -> dict[str, Any]:
    request = pb.GetTransactionRequest(transaction_id=transaction_id)
    return m.from_message(await ops.get_transaction(service, principal, request, request_deadline.get()))


@route(router, "CaptureTransaction")
async def capture(
    service: Service,
    principal: CurrentPrincipal,
    authorization_id: AuthorizationPath,
    body: m.CaptureTransactionRequest,
    response: Response,
) -> dict[str, Any]:
    request = m.to_message(body, pb.CaptureTransactionRequest())
    request.authorization_id = authorization_id
    return _created(await ops.capture_transaction(service, principal, request, request_deadline.get()), response)


@route(router, "VoidTransaction")
async def void(
    service: Service,
    principal: CurrentPrincipal,
    authorization_id: AuthorizationPath,
    body: m.VoidTransactionRequest,
    response: Response,
) -> dict[str, Any]:
    request = m.to_message(body, pb.VoidTransactionRequest())
    request.authorization_id = authorization_id
    return _created(await ops.void_transaction(service, principal, request, request_deadline.get()), response)


# ------------------------------------------------------------------------------------------------
# The batch body: parsed in a worker thread, item by item.

_TRANSACTION = TypeAdapter(m.PostTransactionRequest)


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
