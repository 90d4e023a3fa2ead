"""ledger.v1.History: read-model queries (projections/queries.py) over gRPC. No SQL and no business
logic here: ownership comes from the ledger service, numbers from the read model."""

from __future__ import annotations

import time
from typing import Any

import grpc

from facade.api.audit_proofs import AuditProofs
from facade.api.gen.ledger.v1 import history_pb2, history_pb2_grpc
from facade.audit.log import SealedCheckpoint
from facade.auth import Principal, current_principal
from facade.domain.errors import ErrorKind, LedgerError
from facade.engine.protocol import Engine
from facade.service import LedgerService
from projections import queries
from projections.read_model import ReadModel
from projections.reconcile import compare, read_figures

Context = grpc.aio.ServicerContext[Any, Any]
STATEMENT_LIMIT_DEFAULT = 1000


def _invalid(reason: str, message: str) -> LedgerError:
    return LedgerError(ErrorKind.INVALID, reason, message)


def _balance(account_id: int, balance: queries.Balance, projected_until: int) -> history_pb2.HistoricalBalance:
    return history_pb2.HistoricalBalance(
        account_id=str(account_id),
        debits_pending=str(balance.debits_pending),
        debits_posted=str(balance.debits_posted),
        credits_pending=str(balance.credits_pending),
        credits_posted=str(balance.credits_posted),
        timestamp=balance.timestamp,
        projected_until=projected_until,
    )


def _line(account_id: int, line: queries.StatementLine) -> history_pb2.StatementLine:
    message = history_pb2.StatementLine(
        engine_timestamp=line.engine_timestamp,
        change=line.change,
        side=line.side,
        amount=str(line.amount),
        signed_amount=str(line.signed_amount),
        counterparty_account_id=str(line.counterparty_account_id),
        transfer_id=str(line.transfer_id),
        transaction_id=line.transaction_id,
        transaction_type=line.transaction_type,
        source=line.source,
        correlation_id=line.correlation_id,
        description=line.description,
        currency=line.currency,
    )
    if line.balance_after is not None:
        message.balance_after.CopyFrom(_balance(account_id, line.balance_after, 0))
    return message


def _period_end(timestamp_to: int) -> int:
    return timestamp_to or time.time_ns()


def signed_checkpoint(sealed: SealedCheckpoint) -> history_pb2.SignedCheckpoint:
    checkpoint = sealed.checkpoint
    return history_pb2.SignedCheckpoint(
        note=sealed.note,
        tree_size=checkpoint.tree_size,
        root_hash=checkpoint.root_hash,
        timestamp_last=checkpoint.timestamp_last,
        key_id=checkpoint.key_id,
    )


class HistoryQueries:
    """The History read queries, one method per RPC: the principal and the request message in, the
    response message out, a LedgerError for anything refused. The gRPC servicer and the JSON gateway
    (facade.http.history_routes) both delegate here, so the two edges give the same answers."""

    def __init__(self, service: LedgerService, engine: Engine, read_model: ReadModel) -> None:
        self._service = service
        self._engine = engine
        self._read_model = read_model

    async def _owned(self, principal: Principal, account_id_text: str) -> int:
        """The account id when the caller may read it: NOT_FOUND otherwise (as GetAccount)."""
        view = await self._service.get_account(principal, account_id_text)
        return view.record.account_id

    async def statement(self, principal: Principal, request: history_pb2.GetStatementRequest) -> history_pb2.Statement:
        account_id = await self._owned(principal, request.account_id)
        limit = request.limit or STATEMENT_LIMIT_DEFAULT
        if limit > queries.STATEMENT_LINES_MAX:
            raise _invalid("LIMIT_TOO_LARGE", f"limit is at most {queries.STATEMENT_LINES_MAX}")
        timestamp_to = _period_end(request.to)
        timestamp_from = getattr(request, "from")
        if timestamp_from > timestamp_to:
            raise _invalid("INVALID_PERIOD", "from is after to")

        def read(client: Any) -> tuple[queries.Statement, int]:
            found = queries.statement(client, account_id, timestamp_from, timestamp_to, limit)
            return found, queries.projected_timestamp(client)

        found, projected_until = await self._read_model.query(read)
        return history_pb2.Statement(
            account_id=str(account_id),
            to=timestamp_to,
            opening=_balance(account_id, found.opening, projected_until),
            closing=_balance(account_id, found.closing, projected_until),
            lines=[_line(account_id, line) for line in found.lines],
            truncated=found.truncated,
            projected_until=projected_until,
            **{"from": timestamp_from},
        )

    async def balance_as_of(
        self, principal: Principal, request: history_pb2.GetBalanceAsOfRequest
    ) -> history_pb2.HistoricalBalance:
        account_id = await self._owned(principal, request.account_id)
        as_of = _period_end(request.as_of)

        def read(client: Any) -> tuple[queries.Balance, int]:
            return queries.balance_as_of(client, account_id, as_of), queries.projected_timestamp(client)

        balance, projected_until = await self._read_model.query(read)
        return _balance(account_id, balance, projected_until)

    async def daily_totals(
        self, principal: Principal, request: history_pb2.GetDailyTotalsRequest
    ) -> history_pb2.DailyTotals:
        del principal  # Cross-client: the scope (ledger.admin) is the whole check.
        timestamp_from, timestamp_to = getattr(request, "from"), _period_end(request.to)
        if timestamp_from > timestamp_to:
            raise _invalid("INVALID_PERIOD", "from is after to")

        def read(client: Any) -> tuple[list[queries.DailyTotal], int]:
            return queries.daily_totals(client, timestamp_from, timestamp_to), queries.projected_timestamp(client)

        totals, projected_until = await self._read_model.query(read)
        return history_pb2.DailyTotals(
            totals=[
                history_pb2.DailyTotal(
                    day=t.day,
                    currency=t.currency,
                    transaction_type=t.transaction_type,
                    source=t.source,
                    change=t.change,
                    transfers=t.transactions,
                    amount=str(t.amount),
                )
                for t in totals
            ],
            projected_until=projected_until,
        )

    async def transactions_by_correlation(
        self, principal: Principal, request: history_pb2.ListTransactionsByCorrelationRequest
    ) -> history_pb2.CorrelatedTransfers:
        del principal  # Cross-client: the scope (ledger.admin) is the whole check.
        correlation_id = request.correlation_id
        if not correlation_id:
            raise _invalid("CORRELATION_ID_REQUIRED", "correlation_id is required")

        def read(client: Any) -> tuple[list[queries.TransactionRow], int]:
            return queries.transactions_by_correlation_id(client, correlation_id), queries.projected_timestamp(client)

        found, projected_until = await self._read_model.query(read)
        return history_pb2.CorrelatedTransfers(
            transfers=[
                history_pb2.CorrelatedTransfer(
                    engine_timestamp=r.engine_timestamp,
                    change=r.change,
                    transaction_id=r.transaction_id,
                    leg_index=r.leg_index,
                    transfer_id=str(r.transfer_id),
                    debit_account_id=str(r.debit_account_id),
                    credit_account_id=str(r.credit_account_id),
                    amount=str(r.amount),
                    currency=r.currency,
                    transaction_type=r.transaction_type,
                    source=r.source,
                    description=r.description,
                    labels=r.labels,
                    chain_sequence=r.chain_sequence,
                )
                for r in found
            ],
            projected_until=projected_until,
        )

    async def reconcile(
        self, principal: Principal, request: history_pb2.ReconcileRequest
    ) -> history_pb2.ReconciliationReport:
        del principal, request  # Cross-client, no parameters.
        report = await compare(self._engine, await self._read_model.query(read_figures))
        return history_pb2.ReconciliationReport(
            ok=report.ok,
            accounts_checked=report.accounts_checked,
            as_of=report.timestamp,
            drift=[
                history_pb2.AccountDrift(
                    account_id=str(d.account_id),
                    source=d.source,
                    field=d.field,
                    engine=str(d.engine),
                    read_model=str(d.clickhouse),
                )
                for d in report.drifts
            ],
            accounts_not_comparable=[str(a) for a in report.accounts_not_comparable],
            unknown_accounts=[str(a) for a in report.unknown_accounts],
        )


class HistoryServicer(history_pb2_grpc.HistoryServicer):
    def __init__(self, service: LedgerService, engine: Engine, read_model: ReadModel) -> None:
        self.queries = HistoryQueries(service, engine, read_model)
        """The queries the JSON gateway serves too (build_app's `history`)."""
        self.audit = AuditProofs(None, read_model)
        """The server sets `audit.audit` once the audit log is open (facade.audit.service)."""

    async def GetCheckpoint(  # noqa: N802
        self, request: history_pb2.GetCheckpointRequest, _context: Context
    ) -> history_pb2.SignedCheckpoint:
        return signed_checkpoint(await self.audit.checkpoint(request.tree_size))

    async def GetInclusionProof(  # noqa: N802
        self, request: history_pb2.GetInclusionProofRequest, _context: Context
    ) -> history_pb2.InclusionProof:
        sealed, proofs = await self.audit.inclusion(
            sequence=request.sequence,
            transaction_id=request.transaction_id,
            event_id=request.event_id,
            tree_size=request.tree_size,
        )
        return history_pb2.InclusionProof(
            checkpoint=signed_checkpoint(sealed),
            proofs=[
                history_pb2.LeafProof(
                    sequence=p.sequence, leaf_index=p.sequence - 1, leaf_hash=p.leaf_hash, hashes=list(p.hashes)
                )
                for p in proofs
            ],
        )

    async def GetConsistencyProof(  # noqa: N802
        self, request: history_pb2.GetConsistencyProofRequest, _context: Context
    ) -> history_pb2.ConsistencyProof:
        old, new, hashes = await self.audit.consistency(request.old_size, request.new_size)
        return history_pb2.ConsistencyProof(
            old_checkpoint=signed_checkpoint(old), new_checkpoint=signed_checkpoint(new), hashes=hashes
        )

    async def GetStatement(  # noqa: N802
        self, request: history_pb2.GetStatementRequest, _context: Context
    ) -> history_pb2.Statement:
        return await self.queries.statement(current_principal.get(), request)

    async def GetBalanceAsOf(  # noqa: N802
        self, request: history_pb2.GetBalanceAsOfRequest, _context: Context
    ) -> history_pb2.HistoricalBalance:
        return await self.queries.balance_as_of(current_principal.get(), request)

    async def GetDailyTotals(  # noqa: N802
        self, request: history_pb2.GetDailyTotalsRequest, _context: Context
    ) -> history_pb2.DailyTotals:
        return await self.queries.daily_totals(current_principal.get(), request)

    async def ListTransactionsByCorrelation(  # noqa: N802
        self, request: history_pb2.ListTransactionsByCorrelationRequest, _context: Context
    ) -> history_pb2.CorrelatedTransfers:
        return await self.queries.transactions_by_correlation(current_principal.get(), request)

    async def Reconcile(  # noqa: N802
        self, request: history_pb2.ReconcileRequest, _context: Context
    ) -> history_pb2.ReconciliationReport:
        return await self.queries.reconcile(current_principal.get(), request)
