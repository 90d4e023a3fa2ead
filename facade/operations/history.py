"""ledger.v1.History, one function per RPC: the read-model queries (projections/queries.py) and the audit
evidence (facade.audit.proofs). As facade.operations.ledger: the backend, the caller, the typed request,
the deadline in; the response message out, or a LedgerError. The gRPC servicer (facade.api.history) and the
JSON gateway (facade.http.history_routes, facade.http.audit_routes) both delegate here, so the two edges
give the same answers. No SQL and no business logic: ownership comes from the ledger service, numbers
from the read model."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from facade.api.gen.ledger.v1 import history_pb2 as hpb
from facade.audit.proofs import AuditProofs
from facade.auth import SCOPE_ADMIN, Principal
from facade.domain.errors import ErrorKind, LedgerError
from facade.domain.times import format_time, time_input
from facade.engine.protocol import Engine
from facade.operations import convert
from facade.operations._deadline import within
from facade.service import LedgerService
from projections import metadata_queries, queries
from projections.read_model import ReadModel
from projections.reconcile import compare, read_figures

__all__ = [
    "STATEMENT_LIMIT_DEFAULT",
    "HistoryBackend",
    "get_balance_as_of",
    "get_checkpoint",
    "get_consistency_proof",
    "get_daily_totals",
    "get_inclusion_proof",
    "get_statement",
    "list_accounts",
    "list_transactions",
    "list_transactions_by_correlation",
    "reconcile",
]

STATEMENT_LIMIT_DEFAULT = 1000
Deadline = float | None
FILTER_TEXT_BYTES_MAX = 128
"""As on PostTransaction: a longer label key or value, source or correlation id can match nothing."""
U128_DIGITS_MAX = 39
_Read = TypeVar("_Read")


@dataclass(frozen=True, slots=True)
class HistoryBackend:
    """What the History RPCs read: the ledger service (ownership), the engine (reconciliation), the read
    model (queries) and the audit evidence (proofs; `proofs.audit` is set once the audit log is open)."""

    service: LedgerService
    engine: Engine
    read_model: ReadModel
    proofs: AuditProofs


def _invalid(reason: str, message: str) -> LedgerError:
    return LedgerError(ErrorKind.INVALID, reason, message)


def _period_end(timestamp_to: int) -> int:
    return timestamp_to or time.time_ns()


def _period(request: hpb.GetStatementRequest | hpb.GetDailyTotalsRequest) -> tuple[int, int]:
    """(from, to) of a period request, each given as engine ns or RFC 3339; to = 0 is now."""
    timestamp_from = time_input(
        getattr(request, "from"), request.from_rfc3339, ns_field="from", rfc3339_field="from_rfc3339"
    )
    timestamp_to = _period_end(time_input(request.to, request.to_rfc3339, ns_field="to", rfc3339_field="to_rfc3339"))
    if timestamp_from > timestamp_to:
        raise _invalid("INVALID_PERIOD", "from is after to")
    return timestamp_from, timestamp_to


async def _owned(history: HistoryBackend, principal: Principal, account_id_text: str) -> int:
    """The account id when the caller may read it: NOT_FOUND otherwise (as GetAccount)."""
    view = await history.service.get_account(principal, account_id_text)
    return view.record.account_id


async def get_statement(
    history: HistoryBackend, principal: Principal, request: hpb.GetStatementRequest, deadline: Deadline
) -> hpb.Statement:
    account_id = await within(deadline, _owned(history, principal, request.account_id))
    limit = request.limit or STATEMENT_LIMIT_DEFAULT
    if limit > queries.STATEMENT_LINES_MAX:
        raise _invalid("LIMIT_TOO_LARGE", f"limit is at most {queries.STATEMENT_LINES_MAX}")
    timestamp_from, timestamp_to = _period(request)

    def read(client: Any) -> tuple[queries.Statement, int]:
        found = queries.statement(client, account_id, timestamp_from, timestamp_to, limit)
        return found, queries.projected_timestamp(client)

    found, projected_until = await within(deadline, history.read_model.query(read))
    return hpb.Statement(
        account_id=str(account_id),
        to=timestamp_to,
        opening=convert.historical_balance(account_id, found.opening, projected_until),
        closing=convert.historical_balance(account_id, found.closing, projected_until),
        lines=[convert.statement_line(account_id, line) for line in found.lines],
        truncated=found.truncated,
        projected_until=projected_until,
        from_rfc3339=format_time(timestamp_from),
        to_rfc3339=format_time(timestamp_to),
        projected_until_rfc3339=format_time(projected_until),
        **{"from": timestamp_from},
    )


async def get_balance_as_of(
    history: HistoryBackend, principal: Principal, request: hpb.GetBalanceAsOfRequest, deadline: Deadline
) -> hpb.HistoricalBalance:
    account_id = await within(deadline, _owned(history, principal, request.account_id))
    as_of = _period_end(
        time_input(request.as_of, request.as_of_rfc3339, ns_field="as_of", rfc3339_field="as_of_rfc3339")
    )

    def read(client: Any) -> tuple[queries.Balance, int]:
        return queries.balance_as_of(client, account_id, as_of), queries.projected_timestamp(client)

    balance, projected_until = await within(deadline, history.read_model.query(read))
    return convert.historical_balance(account_id, balance, projected_until)


async def get_daily_totals(
    history: HistoryBackend, principal: Principal, request: hpb.GetDailyTotalsRequest, deadline: Deadline
) -> hpb.DailyTotals:
    del principal  # Cross-client: the scope (ledger.admin) is the whole check.
    timestamp_from, timestamp_to = _period(request)

    def read(client: Any) -> tuple[list[queries.DailyTotal], int]:
        return queries.daily_totals(client, timestamp_from, timestamp_to), queries.projected_timestamp(client)

    totals, projected_until = await within(deadline, history.read_model.query(read))
    return hpb.DailyTotals(
        totals=[
            hpb.DailyTotal(
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
        projected_until_rfc3339=format_time(projected_until),
    )


async def list_transactions_by_correlation(
    history: HistoryBackend,
    principal: Principal,
    request: hpb.ListTransactionsByCorrelationRequest,
    deadline: Deadline,
) -> hpb.CorrelatedTransfers:
    del principal  # Cross-client: the scope (ledger.admin) is the whole check.
    correlation_id = request.correlation_id
    if not correlation_id:
        raise _invalid("CORRELATION_ID_REQUIRED", "correlation_id is required")

    def read(client: Any) -> tuple[list[queries.TransactionRow], int]:
        return queries.transactions_by_correlation_id(client, correlation_id), queries.projected_timestamp(client)

    found, projected_until = await within(deadline, history.read_model.query(read))
    return hpb.CorrelatedTransfers(
        transfers=[convert.correlated_transfer(r) for r in found],
        projected_until=projected_until,
        projected_until_rfc3339=format_time(projected_until),
    )


async def reconcile(
    history: HistoryBackend, principal: Principal, request: hpb.ReconcileRequest, deadline: Deadline
) -> hpb.ReconciliationReport:
    del principal, request  # Cross-client, no parameters.
    figures = await within(deadline, history.read_model.query(read_figures))
    report = await within(deadline, compare(history.engine, figures))
    return hpb.ReconciliationReport(
        ok=report.ok,
        accounts_checked=report.accounts_checked,
        as_of=report.timestamp,
        as_of_rfc3339=format_time(report.timestamp),
        drift=[
            hpb.AccountDrift(
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


async def get_checkpoint(
    history: HistoryBackend, principal: Principal, request: hpb.GetCheckpointRequest, deadline: Deadline
) -> hpb.SignedCheckpoint:
    del principal  # The scope (ledger.audit) is the whole check.
    return convert.signed_checkpoint(await within(deadline, history.proofs.checkpoint(request.tree_size)))


async def get_inclusion_proof(
    history: HistoryBackend, principal: Principal, request: hpb.GetInclusionProofRequest, deadline: Deadline
) -> hpb.InclusionProof:
    del principal  # The scope (ledger.audit) is the whole check.
    sealed, proofs = await within(
        deadline,
        history.proofs.inclusion(
            sequence=request.sequence,
            transaction_id=request.transaction_id,
            event_id=request.event_id,
            tree_size=request.tree_size,
        ),
    )
    return hpb.InclusionProof(
        checkpoint=convert.signed_checkpoint(sealed),
        proofs=[
            hpb.LeafProof(sequence=p.sequence, leaf_index=p.sequence - 1, leaf_hash=p.leaf_hash, hashes=list(p.hashes))
            for p in proofs
        ],
    )


async def get_consistency_proof(
    history: HistoryBackend, principal: Principal, request: hpb.GetConsistencyProofRequest, deadline: Deadline
) -> hpb.ConsistencyProof:
    del principal  # The scope (ledger.audit) is the whole check.
    old, new, hashes = await within(deadline, history.proofs.consistency(request.old_size, request.new_size))
    return hpb.ConsistencyProof(
        old_checkpoint=convert.signed_checkpoint(old), new_checkpoint=convert.signed_checkpoint(new), hashes=hashes
    )


def _amount_bound(text: str, field: str) -> int | None:
    if not text:
        return None
    if not text.isdigit() or len(text) > U128_DIGITS_MAX or int(text) > metadata_queries.U128_MAX:
        raise LedgerError(
            ErrorKind.INVALID,
            "INVALID_AMOUNT",
            f"filter.{field}: expected a decimal u128, got {text[:48]!r}",
            {"field": f"filter.{field}"},
        )
    return int(text)


def _filter(principal: Principal, message: hpb.TransactionFilter) -> metadata_queries.TransactionFilter:
    """The request's filter, checked; callers without ledger.admin see their own client's rows only."""
    if len(message.labels) > metadata_queries.LABELS_FILTER_MAX:
        raise _invalid("TOO_MANY_LABELS", f"filter.labels: at most {metadata_queries.LABELS_FILTER_MAX} pairs")
    texts = [*message.labels.keys(), *message.labels.values(), message.source, message.correlation_id]
    if any(len(text.encode()) > FILTER_TEXT_BYTES_MAX for text in texts):
        raise _invalid(
            "FILTER_TOO_LONG", f"filter: labels, source and correlation_id are at most {FILTER_TEXT_BYTES_MAX} bytes"
        )
    if any(not key for key in message.labels):
        raise _invalid("INVALID_LABEL", "filter.labels: a key is empty")
    timestamp_from = time_input(
        getattr(message, "from"), message.from_rfc3339, ns_field="filter.from", rfc3339_field="filter.from_rfc3339"
    )
    timestamp_to = time_input(message.to, message.to_rfc3339, ns_field="filter.to", rfc3339_field="filter.to_rfc3339")
    if timestamp_to and timestamp_from > timestamp_to:
        raise _invalid("INVALID_PERIOD", "from is after to")
    amount_min = _amount_bound(message.amount_min, "amount_min")
    amount_max = _amount_bound(message.amount_max, "amount_max")
    if amount_min is not None and amount_max is not None and amount_min > amount_max:
        raise _invalid("INVALID_AMOUNT_RANGE", "filter.amount_min is above filter.amount_max")
    return metadata_queries.TransactionFilter(
        labels=tuple(sorted(message.labels.items())),
        source=message.source,
        correlation_id=message.correlation_id,
        timestamp_from=timestamp_from,
        timestamp_to=timestamp_to,
        amount_min=amount_min,
        amount_max=amount_max,
        client_id=None if SCOPE_ADMIN in principal.scopes else principal.client_id,
    )


def _page_size(page_size: int) -> int:
    if page_size > metadata_queries.PAGE_SIZE_MAX:
        raise _invalid("PAGE_SIZE_TOO_LARGE", f"page_size is at most {metadata_queries.PAGE_SIZE_MAX}")
    return page_size


def _page_token_checked(read: Callable[[Any], _Read]) -> Callable[[Any], _Read]:
    """`read`, with a bad page token (found where the query runs) translated into INVALID_PAGE_TOKEN."""

    def run(client: Any) -> _Read:
        try:
            return read(client)
        except metadata_queries.InvalidPageTokenError as error:
            raise _invalid("INVALID_PAGE_TOKEN", str(error)) from None

    return run


async def list_transactions(
    history: HistoryBackend, principal: Principal, request: hpb.ListTransactionsRequest, deadline: Deadline
) -> hpb.ListTransactionsResponse:
    query = _filter(principal, request.filter)
    page_size, page_token = _page_size(request.page_size), request.page_token

    def read(client: Any) -> tuple[metadata_queries.TransactionsPage, int]:
        page = metadata_queries.list_transactions(client, query, page_size=page_size, page_token=page_token)
        return page, queries.projected_timestamp(client)

    page, projected_until = await within(deadline, history.read_model.query(_page_token_checked(read)))
    return hpb.ListTransactionsResponse(
        transfers=[convert.correlated_transfer(r) for r in page.transactions],
        next_page_token=page.next_page_token,
        projected_until=projected_until,
        projected_until_rfc3339=format_time(projected_until),
    )


def _account_labels(message: hpb.ListHistoryAccountsRequest) -> tuple[tuple[str, str], ...]:
    """The request's account labels, checked as the transaction labels are (same limits, same reasons)."""
    labels = message.account_labels
    if len(labels) > metadata_queries.LABELS_FILTER_MAX:
        raise LedgerError(
            ErrorKind.INVALID,
            "TOO_MANY_LABELS",
            f"account_labels: at most {metadata_queries.LABELS_FILTER_MAX} pairs",
            {"field": "account_labels"},
        )
    if any(len(text.encode()) > FILTER_TEXT_BYTES_MAX for text in (*labels.keys(), *labels.values())):
        raise LedgerError(
            ErrorKind.INVALID,
            "FILTER_TOO_LONG",
            f"account_labels: keys and values are at most {FILTER_TEXT_BYTES_MAX} bytes",
            {"field": "account_labels"},
        )
    if any(not key for key in labels):
        raise LedgerError(
            ErrorKind.INVALID, "INVALID_LABEL", "account_labels: a key is empty", {"field": "account_labels"}
        )
    return tuple(sorted(labels.items()))


async def list_accounts(
    history: HistoryBackend, principal: Principal, request: hpb.ListHistoryAccountsRequest, deadline: Deadline
) -> hpb.ListHistoryAccountsResponse:
    query = dataclasses.replace(_filter(principal, request.filter), account_labels=_account_labels(request))
    page_size, page_token = _page_size(request.page_size), request.page_token

    def read(client: Any) -> tuple[metadata_queries.AccountsPage, int]:
        page = metadata_queries.list_accounts(client, query, page_size=page_size, page_token=page_token)
        return page, queries.projected_timestamp(client)

    page, projected_until = await within(deadline, history.read_model.query(_page_token_checked(read)))
    return hpb.ListHistoryAccountsResponse(
        accounts=[
            hpb.HistoryAccount(
                account_id=str(a.account_id),
                currency=a.currency,
                entries=a.entries,
                first_timestamp=a.timestamp_first,
                last_timestamp=a.timestamp_last,
                first_timestamp_rfc3339=format_time(a.timestamp_first),
                last_timestamp_rfc3339=format_time(a.timestamp_last),
                labels=a.labels,
                external_reference=a.external_reference,
            )
            for a in page.accounts
        ],
        next_page_token=page.next_page_token,
        projected_until=projected_until,
        projected_until_rfc3339=format_time(projected_until),
    )
