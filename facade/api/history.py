"""The gRPC servicer of ledger.v1.History: each RPC delegates to facade.operations.history with the caller
and the call's deadline; a LedgerError becomes the status in the request guard (facade.api.guard)."""

from __future__ import annotations

from typing import Any

import grpc

from facade.api.gen.ledger.v1 import history_pb2 as hpb
from facade.api.gen.ledger.v1 import history_pb2_grpc
from facade.audit.proofs import AuditProofs
from facade.auth import current_principal
from facade.engine.protocol import Engine
from facade.operations import history as ops
from facade.operations.history import HistoryBackend
from facade.service import LedgerService, deadline_from_timeout
from projections.read_model import ReadModel

__all__ = ["HistoryServicer"]

Context = grpc.aio.ServicerContext[Any, Any]


def _deadline(context: Context) -> float | None:
    return deadline_from_timeout(context.time_remaining())


class HistoryServicer(history_pb2_grpc.HistoryServicer):
    def __init__(self, service: LedgerService, engine: Engine, read_model: ReadModel) -> None:
        self.audit = AuditProofs(None, read_model)
        """The server sets `audit.audit` once the audit log is open (facade.audit.service)."""
        self.queries = HistoryBackend(service, engine, read_model, self.audit)
        """What the JSON gateway serves too (build_app's `history`)."""

    async def GetCheckpoint(self, request: hpb.GetCheckpointRequest, context: Context) -> hpb.SignedCheckpoint:  # noqa: N802
        return await ops.get_checkpoint(self.queries, current_principal.get(), request, _deadline(context))

    async def GetInclusionProof(  # noqa: N802
        self, request: hpb.GetInclusionProofRequest, context: Context
    ) -> hpb.InclusionProof:
        return await ops.get_inclusion_proof(self.queries, current_principal.get(), request, _deadline(context))

    async def GetConsistencyProof(  # noqa: N802
        self, request: hpb.GetConsistencyProofRequest, context: Context
    ) -> hpb.ConsistencyProof:
        return await ops.get_consistency_proof(self.queries, current_principal.get(), request, _deadline(context))

    async def GetStatement(self, request: hpb.GetStatementRequest, context: Context) -> hpb.Statement:  # noqa: N802
        return await ops.get_statement(self.queries, current_principal.get(), request, _deadline(context))

    async def GetBalanceAsOf(  # noqa: N802
        self, request: hpb.GetBalanceAsOfRequest, context: Context
    ) -> hpb.HistoricalBalance:
        return await ops.get_balance_as_of(self.queries, current_principal.get(), request, _deadline(context))

    async def GetDailyTotals(self, request: hpb.GetDailyTotalsRequest, context: Context) -> hpb.DailyTotals:  # noqa: N802
        return await ops.get_daily_totals(self.queries, current_principal.get(), request, _deadline(context))

    async def ListTransactionsByCorrelation(  # noqa: N802
        self, request: hpb.ListTransactionsByCorrelationRequest, context: Context
    ) -> hpb.CorrelatedTransfers:
        return await ops.list_transactions_by_correlation(
            self.queries, current_principal.get(), request, _deadline(context)
        )

    async def Reconcile(self, request: hpb.ReconcileRequest, context: Context) -> hpb.ReconciliationReport:  # noqa: N802
        return await ops.reconcile(self.queries, current_principal.get(), request, _deadline(context))

    async def ListTransactions(  # noqa: N802
        self, request: hpb.ListTransactionsRequest, context: Context
    ) -> hpb.ListTransactionsResponse:
        return await ops.list_transactions(self.queries, current_principal.get(), request, _deadline(context))

    async def ListAccounts(  # noqa: N802
        self, request: hpb.ListHistoryAccountsRequest, context: Context
    ) -> hpb.ListHistoryAccountsResponse:
        return await ops.list_accounts(self.queries, current_principal.get(), request, _deadline(context))
