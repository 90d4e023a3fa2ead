"""The gRPC servicer of ledger.v1.Ledger: each RPC delegates to facade.operations.ledger with the caller
(facade.api.auth_interceptor) and the call's deadline. A LedgerError becomes the call's status in the
request guard interceptor (facade.api.guard). StreamTransactions, gRPC-only, is the one body here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc
from facade.auth import current_principal
from facade.operations import ledger as ops
from facade.service import LedgerService, deadline_from_timeout

__all__ = ["STREAM_IN_FLIGHT_MAX", "LedgerServicer"]

Context = grpc.aio.ServicerContext[Any, Any]
STREAM_IN_FLIGHT_MAX = 4096
"""Requests a StreamTransactions call may have in flight before the server stops reading more."""


def _deadline(context: Context) -> float | None:
    return deadline_from_timeout(context.time_remaining())


class LedgerServicer(ledger_pb2_grpc.LedgerServicer):
    def __init__(self, service: LedgerService) -> None:
        self._service = service

    async def CreateAccount(self, request: pb.CreateAccountRequest, context: Context) -> pb.Account:  # noqa: N802
        return await ops.create_account(self._service, current_principal.get(), request, _deadline(context))

    async def GetAccount(self, request: pb.GetAccountRequest, context: Context) -> pb.Account:  # noqa: N802
        return await ops.get_account(self._service, current_principal.get(), request, _deadline(context))

    async def ListAccounts(  # noqa: N802
        self, request: pb.ListAccountsRequest, context: Context
    ) -> pb.ListAccountsResponse:
        return await ops.list_accounts(self._service, current_principal.get(), request, _deadline(context))

    async def GetBalance(self, request: pb.GetBalanceRequest, context: Context) -> pb.Balance:  # noqa: N802
        return await ops.get_balance(self._service, current_principal.get(), request, _deadline(context))

    async def PostTransaction(self, request: pb.PostTransactionRequest, context: Context) -> pb.Transaction:  # noqa: N802
        return await ops.post_transaction(self._service, current_principal.get(), request, _deadline(context))

    async def PostTransactions(  # noqa: N802
        self, request: pb.PostTransactionsRequest, context: Context
    ) -> pb.PostTransactionsResponse:
        return await ops.post_transactions(self._service, current_principal.get(), request, _deadline(context))

    async def StreamTransactions(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.PostTransactionRequest], _context: Context
    ) -> AsyncIterator[pb.TransactionResult]:
        """Reads ahead (bounded) so concurrent requests coalesce into engine batches; answers in order."""
        principal = current_principal.get()
        pending: asyncio.Queue[asyncio.Task[pb.TransactionResult] | None] = asyncio.Queue(STREAM_IN_FLIGHT_MAX)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await pending.put(asyncio.create_task(ops.stream_item(self._service, principal, request)))
            finally:
                await pending.put(None)

        reader = asyncio.create_task(read())
        try:
            while (task := await pending.get()) is not None:
                yield await task
        finally:
            reader.cancel()

    async def CaptureTransaction(  # noqa: N802
        self, request: pb.CaptureTransactionRequest, context: Context
    ) -> pb.Transaction:
        return await ops.capture_transaction(self._service, current_principal.get(), request, _deadline(context))

    async def VoidTransaction(self, request: pb.VoidTransactionRequest, context: Context) -> pb.Transaction:  # noqa: N802
        return await ops.void_transaction(self._service, current_principal.get(), request, _deadline(context))

    async def GetTransaction(self, request: pb.GetTransactionRequest, context: Context) -> pb.Transaction:  # noqa: N802
        return await ops.get_transaction(self._service, current_principal.get(), request, _deadline(context))

    async def ListAccountEntries(  # noqa: N802
        self, request: pb.ListAccountEntriesRequest, context: Context
    ) -> pb.ListAccountEntriesResponse:
        return await ops.list_account_entries(self._service, current_principal.get(), request, _deadline(context))
