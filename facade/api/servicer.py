"""The gRPC servicer: protobuf in, LedgerService, protobuf out. No business logic lives here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from facade.api.errors import item_code
from facade.api.gen.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from facade.auth import current_principal
from facade.domain.errors import LedgerError
from facade.domain.mapping import Kind, LegSpec, Metadata, TransactionType
from facade.engine.types import Account, AccountFlags
from facade.service import (
    BATCH_TRANSACTIONS_MAX,
    MAP_IN_THREAD_TRANSACTIONS_MIN,
    AccountView,
    EntryView,
    LedgerService,
    PostRequest,
    TransactionView,
    deadline_from_timeout,
)

Context = grpc.aio.ServicerContext[Any, Any]
STREAM_IN_FLIGHT_MAX = 4096
"""Requests a StreamTransactions call may have in flight before the server stops reading more."""

_STATUS = {
    Kind.POST: ledger_pb2.TRANSACTION_STATUS_POSTED,
    Kind.AUTHORIZE: ledger_pb2.TRANSACTION_STATUS_AUTHORIZED,
    Kind.CAPTURE: ledger_pb2.TRANSACTION_STATUS_POSTED,
    Kind.VOID: ledger_pb2.TRANSACTION_STATUS_VOIDED,
}
_ENTRY_STATUS = {
    "posted": ledger_pb2.TRANSACTION_STATUS_POSTED,
    "authorized": ledger_pb2.TRANSACTION_STATUS_AUTHORIZED,
    "voided": ledger_pb2.TRANSACTION_STATUS_VOIDED,
}


def balance_message(account: Account, currency: str) -> ledger_pb2.Balance:
    posted = account.credits_posted - account.debits_posted
    return ledger_pb2.Balance(
        currency=currency,
        posted=str(posted),
        pending_debits=str(account.debits_pending),
        pending_credits=str(account.credits_pending),
        available=str(posted - account.debits_pending),
        debits_posted=str(account.debits_posted),
        credits_posted=str(account.credits_posted),
    )


def account_message(view: AccountView) -> ledger_pb2.Account:
    r = view.record
    return ledger_pb2.Account(
        account_id=str(r.account_id),
        currency=r.currency,
        external_reference=r.external_reference,
        owner=r.owner,
        type=r.type,  # type: ignore[arg-type]
        metadata=r.metadata,
        balance=balance_message(view.account, r.currency),
        created_at_ns=view.account.timestamp,
        closed=bool(view.account.flags & AccountFlags.CLOSED),
    )


def leg_message(leg: LegSpec, currency: str) -> ledger_pb2.Leg:
    if leg.type == TransactionType.CREDIT:
        return ledger_pb2.Leg(
            type=ledger_pb2.LEG_TYPE_CREDIT,
            account_id=str(leg.credit_account_id),
            amount=str(leg.amount),
            currency=currency,
        )
    if leg.type == TransactionType.DEBIT:
        return ledger_pb2.Leg(
            type=ledger_pb2.LEG_TYPE_DEBIT,
            account_id=str(leg.debit_account_id),
            amount=str(leg.amount),
            currency=currency,
        )
    return ledger_pb2.Leg(
        type=ledger_pb2.LEG_TYPE_TRANSFER,
        from_account_id=str(leg.debit_account_id),
        to_account_id=str(leg.credit_account_id),
        amount=str(leg.amount),
        currency=currency,
    )


def metadata_message(metadata: Metadata) -> ledger_pb2.TransactionMetadata:
    return ledger_pb2.TransactionMetadata(
        source=metadata.source,
        correlation_id=metadata.correlation_id,
        description=metadata.description,
        labels=metadata.labels,
        occurred_at_ns=metadata.occurred_at_ns,
    )


def transaction_message(view: TransactionView) -> ledger_pb2.Transaction:
    t = view.transaction
    return ledger_pb2.Transaction(
        transaction_id=format(t.transaction_id, "032x"),
        idempotency_key=t.idempotency_key,
        status=_STATUS[t.kind],
        legs=[leg_message(leg, t.currency) for leg in t.legs],
        metadata=metadata_message(t.metadata),
        committed_at_ns=view.committed_at_ns,
        deduplicated=view.deduplicated,
        authorization_id=format(t.authorization_id, "032x") if t.authorization_id else "",
        currency=t.currency,
    )


def metadata_from(message: ledger_pb2.TransactionMetadata) -> Metadata:
    return Metadata(
        source=message.source,
        correlation_id=message.correlation_id,
        description=message.description,
        labels=dict(message.labels) if message.labels else {},
        occurred_at_ns=message.occurred_at_ns,
    )


def post_request(message: ledger_pb2.PostTransactionRequest) -> PostRequest:
    return PostRequest(
        idempotency_key=message.idempotency_key,
        legs=message.legs,  # ledger_pb2.Leg is a LegInput: no copy.
        metadata=metadata_from(message.metadata),
        authorize_only=message.authorize_only,
        timeout_seconds=message.authorization_timeout_seconds,
    )


def fill_posted(
    message: ledger_pb2.Transaction, request: ledger_pb2.PostTransactionRequest, view: TransactionView
) -> None:
    """`message` = the posted transaction, its legs and metadata copied from the request it answers.
    Exact: the request mapped to this transaction (same canonical body, or it would have been
    IDEMPOTENCY_KEY_REUSED), and decimals are canonical; a message copy is far cheaper than a rebuild."""
    t = view.transaction
    message.transaction_id = format(t.transaction_id, "032x")
    message.idempotency_key = request.idempotency_key
    message.status = _STATUS[t.kind]
    message.legs.extend(request.legs)
    message.metadata.CopyFrom(request.metadata)
    message.committed_at_ns = view.committed_at_ns
    message.deduplicated = view.deduplicated
    message.currency = t.currency


def posted_result(
    request: ledger_pb2.PostTransactionRequest, result: TransactionView | LedgerError
) -> ledger_pb2.TransactionResult:
    if isinstance(result, LedgerError):
        return item_result(result)
    message = ledger_pb2.TransactionResult()
    fill_posted(message.transaction, request, result)
    return message


def batch_response(
    request: ledger_pb2.PostTransactionsRequest, results: list[TransactionView | LedgerError]
) -> ledger_pb2.PostTransactionsResponse:
    response = ledger_pb2.PostTransactionsResponse()
    response.results.extend([posted_result(q, r) for q, r in zip(request.transactions, results, strict=True)])
    return response


def item_result(result: TransactionView | LedgerError) -> ledger_pb2.TransactionResult:
    if isinstance(result, LedgerError):
        return ledger_pb2.TransactionResult(
            error=ledger_pb2.ItemError(
                code=item_code(result), message=result.message, reason=result.reason, metadata=result.metadata
            )
        )
    return ledger_pb2.TransactionResult(transaction=transaction_message(result))


def entry_message(view: EntryView) -> ledger_pb2.Entry:
    t = view.transfer
    is_debit = t.debit_account_id == view.account_id
    return ledger_pb2.Entry(
        transaction_id=format(t.user_data_128, "032x"),
        is_debit=is_debit,
        amount=str(t.amount),
        currency=view.currency,
        counterparty_account_id=str(t.credit_account_id if is_debit else t.debit_account_id),
        status=_ENTRY_STATUS[view.status],
        committed_at_ns=t.timestamp,
        transfer_id=str(t.id),
    )


_StreamItem = tuple[ledger_pb2.PostTransactionRequest, asyncio.Task[list[TransactionView | LedgerError]]]


class LedgerServicer(ledger_pb2_grpc.LedgerServicer):
    def __init__(self, service: LedgerService) -> None:
        self._service = service

    async def CreateAccount(self, request: ledger_pb2.CreateAccountRequest, _context: Context) -> ledger_pb2.Account:  # noqa: N802
        view = await self._service.create_account(
            current_principal.get(),
            request.currency,
            request.external_reference,
            request.owner,
            int(request.type),
            dict(request.metadata),
        )
        return account_message(view)

    async def GetAccount(self, request: ledger_pb2.GetAccountRequest, _context: Context) -> ledger_pb2.Account:  # noqa: N802
        view = await self._service.get_account(current_principal.get(), request.account_id)
        return account_message(view)

    async def ListAccounts(  # noqa: N802
        self, request: ledger_pb2.ListAccountsRequest, _context: Context
    ) -> ledger_pb2.ListAccountsResponse:
        views, token = await self._service.list_accounts(
            current_principal.get(), request.page_size, request.page_token, request.currency
        )
        return ledger_pb2.ListAccountsResponse(accounts=[account_message(v) for v in views], next_page_token=token)

    async def GetBalance(self, request: ledger_pb2.GetBalanceRequest, _context: Context) -> ledger_pb2.Balance:  # noqa: N802
        view = await self._service.get_account(current_principal.get(), request.account_id)
        return balance_message(view.account, view.record.currency)

    async def PostTransaction(  # noqa: N802
        self, request: ledger_pb2.PostTransactionRequest, context: Context
    ) -> ledger_pb2.Transaction:
        deadline = deadline_from_timeout(context.time_remaining())
        self._service.admit(len(request.legs), deadline)
        [result] = await self._service.post_transactions(current_principal.get(), [post_request(request)], deadline)
        if isinstance(result, LedgerError):
            raise result
        response = ledger_pb2.Transaction()
        fill_posted(response, request, result)
        return response

    async def PostTransactions(  # noqa: N802
        self, request: ledger_pb2.PostTransactionsRequest, context: Context
    ) -> ledger_pb2.PostTransactionsResponse:
        deadline = deadline_from_timeout(context.time_remaining())
        if len(request.transactions) <= BATCH_TRANSACTIONS_MAX:  # A larger batch is refused below.
            # Admission before mapping: a batch the queue cannot take in time costs a count, not a parse.
            self._service.admit(sum(len(r.legs) for r in request.transactions), deadline)
        results = await self._service.post_transactions(
            current_principal.get(), [post_request(r) for r in request.transactions], deadline
        )
        if len(results) >= MAP_IN_THREAD_TRANSACTIONS_MIN:  # Off the event loop, as the mapping was.
            return await asyncio.to_thread(batch_response, request, results)
        return batch_response(request, results)

    async def StreamTransactions(  # noqa: N802
        self, request_iterator: AsyncIterator[ledger_pb2.PostTransactionRequest], _context: Context
    ) -> AsyncIterator[ledger_pb2.TransactionResult]:
        """Reads ahead (bounded) so concurrent requests coalesce into engine batches; answers in order."""
        principal = current_principal.get()
        pending: asyncio.Queue[_StreamItem | None] = asyncio.Queue(STREAM_IN_FLIGHT_MAX)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(self._service.post_transactions(principal, [post_request(request)]))
                    await pending.put((request, task))
            finally:
                await pending.put(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await pending.get()) is not None:
                request, task = item
                try:
                    [result] = await task
                except LedgerError as error:
                    result = error
                yield posted_result(request, result)
        finally:
            reader.cancel()

    async def CaptureTransaction(  # noqa: N802
        self, request: ledger_pb2.CaptureTransactionRequest, context: Context
    ) -> ledger_pb2.Transaction:
        return await self._resolve(
            request.idempotency_key, request.authorization_id, True, request.amount, request.metadata, context
        )

    async def VoidTransaction(  # noqa: N802
        self, request: ledger_pb2.VoidTransactionRequest, context: Context
    ) -> ledger_pb2.Transaction:
        return await self._resolve(
            request.idempotency_key, request.authorization_id, False, "", request.metadata, context
        )

    async def _resolve(
        self,
        key: str,
        authorization_id: str,
        capture: bool,
        amount: str,
        metadata: ledger_pb2.TransactionMetadata,
        context: Context,
    ) -> ledger_pb2.Transaction:
        view = await self._service.resolve_authorization(
            current_principal.get(),
            key,
            authorization_id,
            capture,
            amount,
            metadata_from(metadata),
            deadline_from_timeout(context.time_remaining()),
        )
        return transaction_message(view)

    async def GetTransaction(  # noqa: N802
        self, request: ledger_pb2.GetTransactionRequest, _context: Context
    ) -> ledger_pb2.Transaction:
        view = await self._service.get_transaction(
            current_principal.get(), request.transaction_id, request.idempotency_key
        )
        return transaction_message(view)

    async def ListAccountEntries(  # noqa: N802
        self, request: ledger_pb2.ListAccountEntriesRequest, _context: Context
    ) -> ledger_pb2.ListAccountEntriesResponse:
        entries, token = await self._service.list_account_entries(
            current_principal.get(),
            request.account_id,
            request.page_size,
            request.page_token,
            request.from_ns,
            request.to_ns,
            request.descending,
        )
        return ledger_pb2.ListAccountEntriesResponse(entries=[entry_message(e) for e in entries], next_page_token=token)
