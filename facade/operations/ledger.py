"""ledger.v1.Ledger, one function per RPC: the service, the caller, the typed request (the API's message),
the caller's deadline (time.monotonic(), None = none) in; the response message out, or a LedgerError.

Every edge calls these and nothing else: the gRPC servicer (facade.api.servicer), the JSON gateway
(facade.http.gateway, after turning its JSON into the same message) and Kafka ingestion (post_transactions).
So an RPC's body is written once and every edge gives the same answer for the same request. Writes hand the
deadline to the group commit (work still queued when it passes is never committed); reads are cut off.
"""

from __future__ import annotations

import asyncio
from operator import attrgetter

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.auth import Principal
from facade.domain.accounts import AccountRequest
from facade.domain.errors import LedgerError
from facade.domain.times import time_input
from facade.domain.transactions import ResolveRequest
from facade.operations import convert
from facade.operations._deadline import within
from facade.service import (
    BATCH_TRANSACTIONS_MAX,
    MAP_IN_THREAD_TRANSACTIONS_MIN,
    EntriesQuery,
    LedgerService,
    PostRequest,
)

__all__ = [
    "capture_transaction",
    "create_account",
    "get_account",
    "get_balance",
    "get_transaction",
    "list_account_entries",
    "list_accounts",
    "post_transaction",
    "post_transactions",
    "stream_item",
    "void_transaction",
]

Deadline = float | None
_LEGS = attrgetter("legs")


async def create_account(
    service: LedgerService, principal: Principal, request: pb.CreateAccountRequest, deadline: Deadline
) -> pb.Account:
    view = await within(
        deadline,
        service.create_account(
            principal,
            AccountRequest(
                request.currency, request.external_reference, request.owner, int(request.type), dict(request.metadata)
            ),
        ),
    )
    return convert.account_message(view)


async def get_account(
    service: LedgerService, principal: Principal, request: pb.GetAccountRequest, deadline: Deadline
) -> pb.Account:
    return convert.account_message(await within(deadline, service.get_account(principal, request.account_id)))


async def list_accounts(
    service: LedgerService, principal: Principal, request: pb.ListAccountsRequest, deadline: Deadline
) -> pb.ListAccountsResponse:
    views, token = await within(
        deadline, service.list_accounts(principal, request.page_size, request.page_token, request.currency)
    )
    return pb.ListAccountsResponse(accounts=[convert.account_message(v) for v in views], next_page_token=token)


async def get_balance(
    service: LedgerService, principal: Principal, request: pb.GetBalanceRequest, deadline: Deadline
) -> pb.Balance:
    view = await within(deadline, service.get_account(principal, request.account_id))
    return convert.balance_message(view.account, view.record.currency)


async def list_account_entries(
    service: LedgerService, principal: Principal, request: pb.ListAccountEntriesRequest, deadline: Deadline
) -> pb.ListAccountEntriesResponse:
    entries, token = await within(
        deadline,
        service.list_account_entries(
            principal,
            EntriesQuery(
                request.account_id,
                request.page_size,
                request.page_token,
                time_input(request.from_ns, request.from_rfc3339, ns_field="from_ns", rfc3339_field="from_rfc3339"),
                time_input(request.to_ns, request.to_rfc3339, ns_field="to_ns", rfc3339_field="to_rfc3339"),
                request.descending,
            ),
        ),
    )
    return pb.ListAccountEntriesResponse(entries=[convert.entry_message(e) for e in entries], next_page_token=token)


async def post_transaction(
    service: LedgerService, principal: Principal, request: pb.PostTransactionRequest, deadline: Deadline
) -> pb.Transaction:
    service.admit(len(request.legs), deadline)  # Before mapping: refused work costs a count, not a parse.
    [result] = await service.post_transactions(principal, [convert.post_request(request)], deadline)
    if isinstance(result, LedgerError):
        raise result
    response = pb.Transaction()
    convert.fill_posted(response, request, result)
    return response


async def post_transactions(
    service: LedgerService, principal: Principal, request: pb.PostTransactionsRequest, deadline: Deadline
) -> pb.PostTransactionsResponse:
    """Independent transactions, one result each (a refused one carries its error; the call succeeds)."""
    if len(request.transactions) <= BATCH_TRANSACTIONS_MAX:  # A larger batch is refused by the service.
        service.admit(sum(map(len, map(_LEGS, request.transactions))), deadline)  # C iterators: per item.
    if len(request.transactions) >= MAP_IN_THREAD_TRANSACTIONS_MIN:
        # Off the event loop, as the mapping and the response are: a thousand items took 4-25 ms of the
        # loop under bench_overload, every other call (and gRPC's accepting of new ones) waiting.
        converted, refused = await asyncio.to_thread(_converted, request)
    else:
        converted, refused = _converted(request)
    posted = await service.post_transactions(principal, converted, deadline)
    results = posted
    if refused:  # Each refused item in its place, the others in order.
        answers = iter(posted)
        results = [refused[i] if i in refused else next(answers) for i in range(len(request.transactions))]
    assert len(results) == len(request.transactions)
    if len(results) >= MAP_IN_THREAD_TRANSACTIONS_MIN:  # Off the event loop, as the mapping was.
        return await asyncio.to_thread(convert.batch_response, request, results)
    return convert.batch_response(request, results)


def _converted(request: pb.PostTransactionsRequest) -> tuple[list[PostRequest], dict[int, LedgerError]]:
    """The items that convert, and each refused one by its index (an RFC 3339 time that does not parse, say).
    Pure (reads the request only): safe in a worker thread."""
    converted: list[PostRequest] = []
    refused: dict[int, LedgerError] = {}
    for index, item in enumerate(request.transactions):
        try:
            converted.append(convert.post_request(item))
        except LedgerError as error:
            refused[index] = error
    assert len(converted) + len(refused) == len(request.transactions)
    return converted, refused


async def stream_item(
    service: LedgerService, principal: Principal, request: pb.PostTransactionRequest
) -> pb.TransactionResult:
    """One request of a StreamTransactions call: its result, a refusal included (the stream goes on)."""
    try:
        [result] = await service.post_transactions(principal, [convert.post_request(request)])
    except LedgerError as error:
        return convert.posted_result(request, error)
    return convert.posted_result(request, result)


async def capture_transaction(
    service: LedgerService, principal: Principal, request: pb.CaptureTransactionRequest, deadline: Deadline
) -> pb.Transaction:
    view = await service.resolve_authorization(
        principal,
        request.authorization_id,
        ResolveRequest(request.idempotency_key, True, request.amount, convert.metadata_from(request.metadata)),
        deadline,
    )
    return convert.transaction_message(view)


async def void_transaction(
    service: LedgerService, principal: Principal, request: pb.VoidTransactionRequest, deadline: Deadline
) -> pb.Transaction:
    view = await service.resolve_authorization(
        principal,
        request.authorization_id,
        ResolveRequest(request.idempotency_key, False, "", convert.metadata_from(request.metadata)),
        deadline,
    )
    return convert.transaction_message(view)


async def get_transaction(
    service: LedgerService, principal: Principal, request: pb.GetTransactionRequest, deadline: Deadline
) -> pb.Transaction:
    view = await within(deadline, service.get_transaction(principal, request.transaction_id, request.idempotency_key))
    return convert.transaction_message(view)
