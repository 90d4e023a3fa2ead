"""JSON routes for the read-model queries of ledger.v1.History (statement, as-of balance, daily totals,
transactions by correlation id, reconciliation, the metadata searches): the same facade.operations.history
functions the gRPC servicer delegates to, the same scopes and errors (facade.http._routes declares them),
in the proto3 JSON form of the History messages (u64 as decimal strings).

Times in the query string are engine nanoseconds since the Unix epoch (a decimal u64) or RFC 3339 strings
(`2026-11-25T17:00:00Z`, `2026-11-25T18:00:00.123456789+01:00`; up to nine fraction digits, exact to the
nanosecond; facade.domain.times). Empty or 0 means what 0 means over gRPC (`from`: the beginning, `to` and
`as_of`: now).

The searches (ListTransactions at /v1/history/transactions:search, ListAccounts at
/v1/history/accounts:search) flatten the request's TransactionFilter into the query string: `label=key=value`
(repeated: every pair must match), `source`, `correlation_id`, `from`/`to` (+ `from_rfc3339`/`to_rfc3339`),
`amount_min`/`amount_max` (u128, inclusive), then `page_size` and `page_token`; ListAccounts also takes the
accounts' own labels as `account_label=key=value` (repeated, every pair must match).
"""

# No `from __future__ import annotations`: FastAPI must see the Annotated dependencies as objects.

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query

from facade.api.gen.ledger.v1 import history_pb2 as hpb
from facade.domain.errors import ErrorKind, LedgerError
from facade.domain.times import REASON_INVALID_TIMESTAMP, TIME_PATTERN, TIME_TEXT_LENGTH_MAX, parse_time
from facade.http import models as m
from facade.http._json import StrictJsonRoute
from facade.http._routes import API_PREFIX, CurrentPrincipal, History, route
from facade.http.admission import request_deadline
from facade.operations import history as ops

__all__ = ["REASON_INVALID_TIMESTAMP", "parse_time", "router"]

router = APIRouter(prefix=API_PREFIX, route_class=StrictJsonRoute)


def _time_query(alias: str | None = None) -> Any:
    """A time in the query string, parsed by parse_time (not by the schema: a bad one is INVALID_TIMESTAMP
    with metadata.field, as the gRPC edge names fields); the schema documents its form."""
    return Query(
        alias=alias,
        description="Engine nanoseconds since the Unix epoch (decimal u64) or an RFC 3339 time; empty or 0 = "
        "unbounded (from) / now (to, as_of).",
        examples=["2026-11-25T17:00:00.000000001Z"],
        json_schema_extra={"pattern": TIME_PATTERN, "maxLength": TIME_TEXT_LENGTH_MAX},
    )


def _rfc3339_query() -> Any:
    """The `<time>_rfc3339` field of the request message: the time as RFC 3339 only (the plain parameter takes
    either form); when both are given they must name the same nanosecond."""
    return Query(
        description="The time as RFC 3339 (as the message's `*_rfc3339` field over gRPC).",
        examples=["2026-11-25T17:00:00Z"],
        json_schema_extra={"maxLength": TIME_TEXT_LENGTH_MAX},
    )


AccountPath = Annotated[str, Path(description="The account id (u128, decimal string).")]


@route(router, "GetStatement")
async def get_statement(
    history: History,
    principal: CurrentPrincipal,
    account_id: AccountPath,
    timestamp_from: Annotated[str, _time_query("from")] = "",
    to: Annotated[str, _time_query()] = "",
    limit: Annotated[int, Query(ge=0, le=m.UINT32_MAX, description="At most 10000; 0 = 1000.")] = 0,
    from_rfc3339: Annotated[str, _rfc3339_query()] = "",
    to_rfc3339: Annotated[str, _rfc3339_query()] = "",
) -> dict[str, Any]:
    request = hpb.GetStatementRequest(
        account_id=account_id,
        to=parse_time(to, field="to"),
        limit=limit,
        from_rfc3339=from_rfc3339,
        to_rfc3339=to_rfc3339,
    )
    setattr(request, "from", parse_time(timestamp_from, field="from"))  # `from` is a keyword.
    return m.from_message(await ops.get_statement(history, principal, request, request_deadline.get()))


@route(router, "GetBalanceAsOf")
async def get_balance_as_of(
    history: History,
    principal: CurrentPrincipal,
    account_id: AccountPath,
    as_of: Annotated[str, _time_query()] = "",
    as_of_rfc3339: Annotated[str, _rfc3339_query()] = "",
) -> dict[str, Any]:
    request = hpb.GetBalanceAsOfRequest(
        account_id=account_id, as_of=parse_time(as_of, field="as_of"), as_of_rfc3339=as_of_rfc3339
    )
    return m.from_message(await ops.get_balance_as_of(history, principal, request, request_deadline.get()))


@route(router, "GetDailyTotals")
async def get_daily_totals(
    history: History,
    principal: CurrentPrincipal,
    timestamp_from: Annotated[str, _time_query("from")] = "",
    to: Annotated[str, _time_query()] = "",
    from_rfc3339: Annotated[str, _rfc3339_query()] = "",
    to_rfc3339: Annotated[str, _rfc3339_query()] = "",
) -> dict[str, Any]:
    request = hpb.GetDailyTotalsRequest(to=parse_time(to, field="to"), from_rfc3339=from_rfc3339, to_rfc3339=to_rfc3339)
    setattr(request, "from", parse_time(timestamp_from, field="from"))  # `from` is a keyword.
    return m.from_message(await ops.get_daily_totals(history, principal, request, request_deadline.get()))


@route(router, "ListTransactionsByCorrelation")
async def list_transactions_by_correlation(
    history: History,
    principal: CurrentPrincipal,
    correlation_id: Annotated[str, Query(description="The correlation id the transactions were posted with.")] = "",
) -> dict[str, Any]:
    request = hpb.ListTransactionsByCorrelationRequest(correlation_id=correlation_id)
    return m.from_message(
        await ops.list_transactions_by_correlation(history, principal, request, request_deadline.get())
    )


@route(router, "Reconcile")
async def reconcile(history: History, principal: CurrentPrincipal) -> dict[str, Any]:
    return m.from_message(await ops.reconcile(history, principal, hpb.ReconcileRequest(), request_deadline.get()))


LABEL_QUERY_LENGTH_MAX = 257
"""A key and a value of at most 128 bytes each, and the `=` between them."""
Labels = Annotated[
    list[str],
    Query(
        max_length=16,
        description="A label as key=value; repeat for more: every pair must match.",
        json_schema_extra={"items": {"type": "string", "maxLength": LABEL_QUERY_LENGTH_MAX}},
    ),
]
Text = Annotated[str, Query(max_length=128)]
Amount = Annotated[str, Query(pattern=r"^$|^[0-9]{1,39}$", description="u128, decimal; empty = unbounded.")]
PageSize = Annotated[int, Query(ge=0, le=1000, description="At most 1000; 0 = 100.")]
PageToken = Annotated[str, Query(max_length=512, description="next_page_token of the previous page.")]


def _labels(pairs: list[str], *, field: str = "label") -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise LedgerError(
                ErrorKind.INVALID, "INVALID_LABEL", f"{field}: expected key=value, got {pair[:64]!r}", {"field": field}
            )
        labels[key] = value
    return labels


async def _filter(
    label: Labels = [],  # noqa: B006  # FastAPI copies defaults per request.
    source: Text = "",
    correlation_id: Text = "",
    timestamp_from: Annotated[str, _time_query("from")] = "",
    to: Annotated[str, _time_query()] = "",
    amount_min: Amount = "",
    amount_max: Amount = "",
    from_rfc3339: Annotated[str, _rfc3339_query()] = "",
    to_rfc3339: Annotated[str, _rfc3339_query()] = "",
) -> hpb.TransactionFilter:
    """The TransactionFilter in the query string, as one dependency both searches share. Async (it does
    no I/O) so FastAPI runs it on the event loop: a plain callable (the class this was) goes to the
    thread pool, a hand-off per request."""
    message = hpb.TransactionFilter(
        labels=_labels(label),
        source=source,
        correlation_id=correlation_id,
        to=parse_time(to, field="to"),
        amount_min=amount_min,
        amount_max=amount_max,
        from_rfc3339=from_rfc3339,
        to_rfc3339=to_rfc3339,
    )
    setattr(message, "from", parse_time(timestamp_from, field="from"))  # `from` is a keyword.
    return message


Filter = Annotated[hpb.TransactionFilter, Depends(_filter)]


@route(router, "ListTransactions")
async def list_transactions(
    history: History, principal: CurrentPrincipal, found: Filter, page_size: PageSize = 0, page_token: PageToken = ""
) -> dict[str, Any]:
    request = hpb.ListTransactionsRequest(filter=found, page_size=page_size, page_token=page_token)
    return m.from_message(await ops.list_transactions(history, principal, request, request_deadline.get()))


AccountLabels = Annotated[
    list[str],
    Query(
        max_length=16,
        description="One of the account's own labels as key=value; repeat for more: every pair must match.",
        json_schema_extra={"items": {"type": "string", "maxLength": LABEL_QUERY_LENGTH_MAX}},
    ),
]


@route(router, "ListHistoryAccounts")
async def list_accounts(
    history: History,
    principal: CurrentPrincipal,
    found: Filter,
    account_label: AccountLabels = [],  # noqa: B006  # FastAPI copies defaults per request.
    page_size: PageSize = 0,
    page_token: PageToken = "",
) -> dict[str, Any]:
    request = hpb.ListHistoryAccountsRequest(
        filter=found,
        page_size=page_size,
        page_token=page_token,
        account_labels=_labels(account_label, field="account_label"),
    )
    return m.from_message(await ops.list_accounts(history, principal, request, request_deadline.get()))
