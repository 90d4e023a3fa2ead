"""JSON routes for the read-model queries of ledger.v1.History (statement, as-of balance, daily totals,
transactions by correlation id, reconciliation): the same facade.operations.history functions the gRPC
servicer delegates to, the same scopes (facade.auth.METHOD_SCOPES) and the same errors, in the proto3 JSON
form of the History messages (u64 as decimal strings).

Times in the query string are engine nanoseconds since the Unix epoch (a decimal u64) or RFC 3339 strings
(`2026-11-25T17:00:00Z`, `2026-11-25T18:00:00.123456789+01:00`; up to nine fraction digits, exact to the
nanosecond). Empty or 0 means what 0 means over gRPC (`from`: the beginning, `to` and `as_of`: now).

Routes:
    GET /v1/accounts/{account_id}/statement       GetStatement                   ledger.read
    GET /v1/accounts/{account_id}/balance-as-of   GetBalanceAsOf                 ledger.read
    GET /v1/history/daily-totals                  GetDailyTotals                 ledger.admin
    GET /v1/history/transactions                  ListTransactionsByCorrelation  ledger.admin
    GET /v1/history/reconciliation                Reconcile                      ledger.admin
"""

# No `from __future__ import annotations`: FastAPI must see the Annotated dependencies as objects.

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Security
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field

from facade.api.gen.ledger.v1 import history_pb2 as hpb
from facade.auth import METHOD_SCOPES, Authenticator, Principal
from facade.domain.errors import ErrorKind, LedgerError
from facade.http import models as m
from facade.http._json import StrictJsonRoute
from facade.operations import history as ops
from facade.operations.history import HistoryBackend

__all__ = ["REASON_INVALID_TIMESTAMP", "history_router", "parse_time"]

_HISTORY = "/ledger.v1.History/"
REASON_INVALID_TIMESTAMP = "INVALID_TIMESTAMP"
TIME_TEXT_LENGTH_MAX = 64
"""Longer than any RFC 3339 time with nine fraction digits and an offset: refused before parsing."""
NANOS_PER_SECOND = 1_000_000_000
_FRACTION_DIGITS_MAX = 9
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"  # Date, time
    r"(?:\.([0-9]{1,9}))?([Zz]|[+-][0-9]{2}:[0-9]{2})"  # Fraction (ns at most), offset
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NANOS = re.compile(r"0|[1-9][0-9]{0,19}")
TIME_PATTERN = rf"^$|^(?:{_NANOS.pattern})$|^{_RFC3339.pattern}$"


def _invalid_time(field: str, text: str) -> LedgerError:
    return LedgerError(
        ErrorKind.INVALID,
        REASON_INVALID_TIMESTAMP,
        f"{field}: expected engine nanoseconds (a decimal u64) or an RFC 3339 time at or after 1970, got {text[:64]!r}",
        {"field": field},
    )


def parse_time(text: str, *, field: str) -> int:
    """A query-string time → engine nanoseconds since the Unix epoch (u64). Empty is 0. RFC 3339 keeps
    every fraction digit (datetime alone stops at microseconds); times before 1970 or past 2^64-1 ns are
    refused, as is anything else (INVALID_TIMESTAMP with metadata.field)."""
    assert field
    if not text:
        return 0
    if len(text) > TIME_TEXT_LENGTH_MAX:
        raise _invalid_time(field, text)
    if _NANOS.fullmatch(text):
        nanos = int(text)
    else:
        match = _RFC3339.fullmatch(text)
        if match is None:
            raise _invalid_time(field, text)
        year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
        fraction, offset = match.group(7) or "", match.group(8).upper()
        try:
            zone = UTC
            if offset != "Z":
                sign = -1 if offset[0] == "-" else 1
                zone = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
            moment = datetime(year, month, day, hour, minute, second, tzinfo=zone)
            seconds = (moment - _EPOCH) // timedelta(seconds=1)  # Integer arithmetic: no float rounding.
        except (ValueError, OverflowError) as error:  # Month 13, hour 24, a leap second, year 0...
            raise _invalid_time(field, text) from error
        nanos = seconds * NANOS_PER_SECOND + int(fraction.ljust(_FRACTION_DIGITS_MAX, "0"))
    if not 0 <= nanos <= m.UINT64_MAX:
        raise _invalid_time(field, text)
    assert 0 <= nanos <= m.UINT64_MAX
    return nanos


# ------------------------------------------------------------------------------------------------
# Response models: the History messages' proto3 JSON.


class _Response(BaseModel):
    model_config = ConfigDict(strict=True, populate_by_name=True)


class HistoricalBalance(_Response):
    account_id: m.AccountId
    debits_pending: str = Field(pattern=m.U128_PATTERN)
    debits_posted: str = Field(pattern=m.U128_PATTERN)
    credits_pending: str = Field(pattern=m.U128_PATTERN)
    credits_posted: str = Field(pattern=m.U128_PATTERN)
    timestamp: m.NanosString = Field(description="Engine timestamp of the change these balances follow (0: none).")
    projected_until: m.NanosString = Field(description="Engine timestamp of the newest change the read model holds.")


class StatementLine(_Response):
    engine_timestamp: m.NanosString
    change: str = Field(description="SINGLE_PHASE, TWO_PHASE_PENDING, TWO_PHASE_POSTED, TWO_PHASE_VOIDED, ...")
    side: str = Field(description='"DEBIT" or "CREDIT": this account\'s side.')
    amount: str = Field(pattern=m.U128_PATTERN)
    signed_amount: str = Field(pattern=m.SIGNED_PATTERN, description="Credits positive, debits negative.")
    counterparty_account_id: str = Field(pattern=m.U128_PATTERN)
    transfer_id: str = Field(pattern=m.U128_PATTERN)
    transaction_id: str
    transaction_type: str
    source: str
    correlation_id: str
    description: str
    currency: str
    balance_after: HistoricalBalance | None = Field(
        default=None, description="Balances right after this line; absent when the engine does not report them."
    )


class Statement(_Response):
    account_id: m.AccountId
    from_: m.NanosString = Field(alias="from")
    to: m.NanosString
    opening: HistoricalBalance
    closing: HistoricalBalance
    lines: list[StatementLine]
    truncated: bool = Field(description="More lines exist: ask again from the last line's engine_timestamp + 1.")
    projected_until: m.NanosString


class DailyTotal(_Response):
    day: str = Field(description="UTC day, YYYY-MM-DD.")
    currency: str
    transaction_type: str
    source: str
    change: str
    transfers: m.NanosString = Field(description="How many transfers (u64, decimal string).")
    amount: str = Field(pattern=m.U128_PATTERN)


class DailyTotals(_Response):
    totals: list[DailyTotal]
    projected_until: m.NanosString


class CorrelatedTransfer(_Response):
    engine_timestamp: m.NanosString
    change: str
    transaction_id: str
    leg_index: int = Field(ge=0, le=m.UINT32_MAX)
    transfer_id: str = Field(pattern=m.U128_PATTERN)
    debit_account_id: str = Field(pattern=m.U128_PATTERN)
    credit_account_id: str = Field(pattern=m.U128_PATTERN)
    amount: str = Field(pattern=m.U128_PATTERN)
    currency: str
    transaction_type: str
    source: str
    description: str
    labels: dict[str, str]
    chain_sequence: m.NanosString = Field(description="Position in the audit hash chain (u64, decimal string).")


class CorrelatedTransfers(_Response):
    transfers: list[CorrelatedTransfer]
    projected_until: m.NanosString


class AccountDrift(_Response):
    account_id: str = Field(pattern=m.U128_PATTERN)
    source: str = Field(description='"entries" or "balances": which read-model figure differs.')
    field: str = Field(description='Which balance differs: "debits_posted", "credits_pending", ...')
    engine: str
    read_model: str


class ReconciliationReport(_Response):
    ok: bool = Field(description="No drift and no account unknown to the engine.")
    accounts_checked: m.NanosString = Field(description="u64, decimal string.")
    as_of: m.NanosString = Field(description="Engine timestamp of the newest projected change.")
    drift: list[AccountDrift]
    accounts_not_comparable: list[str]
    unknown_accounts: list[str]


# ------------------------------------------------------------------------------------------------
# The routes.


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


AccountPath = Annotated[str, Path(description="The account id (u128, decimal string).")]


def history_router(
    history: HistoryBackend,
    authenticator: Authenticator,
    *,
    credentials: APIKeyHeader,
    responses: dict[int | str, Any],
) -> APIRouter:
    router = APIRouter(prefix="/v1", responses=responses, route_class=StrictJsonRoute, tags=["history"])

    def caller(rpc: str) -> Any:
        """The authenticated principal, holding the scope the gRPC method `rpc` needs."""
        scope = METHOD_SCOPES[_HISTORY + rpc]

        async def principal(authorization: Annotated[str | None, Security(credentials)]) -> Principal:
            found = await authenticator.authenticate_async(authorization)
            authenticator.authorize(found, scope)
            return found

        return Depends(principal)

    def extra(rpc: str) -> dict[str, Any]:
        scope = METHOD_SCOPES[_HISTORY + rpc]
        return {
            "operation_id": rpc,
            "description": f"gRPC: `ledger.v1.History/{rpc}`. Scope: `{scope}`. Served by the read model: "
            "eventually consistent, `projected_until` says how far it has caught up.",
            "openapi_extra": {"x-required-scope": scope},
        }

    @router.get(
        "/accounts/{account_id}/statement",
        response_model=Statement,
        response_model_exclude_none=True,
        summary="An account's entries in a period, with balances",
        **extra("GetStatement"),
    )
    async def get_statement(
        principal: Annotated[Principal, caller("GetStatement")],
        account_id: AccountPath,
        timestamp_from: Annotated[str, _time_query("from")] = "",
        to: Annotated[str, _time_query()] = "",
        limit: Annotated[int, Query(ge=0, le=m.UINT32_MAX, description="At most 10000; 0 = 1000.")] = 0,
    ) -> dict[str, Any]:
        request = hpb.GetStatementRequest(
            account_id=account_id,
            to=parse_time(to, field="to"),
            limit=limit,
            **{"from": parse_time(timestamp_from, field="from")},
        )
        return m.from_message(await ops.get_statement(history, principal, request, None))

    @router.get(
        "/accounts/{account_id}/balance-as-of",
        response_model=HistoricalBalance,
        summary="An account's balances as of a moment",
        **extra("GetBalanceAsOf"),
    )
    async def get_balance_as_of(
        principal: Annotated[Principal, caller("GetBalanceAsOf")],
        account_id: AccountPath,
        as_of: Annotated[str, _time_query()] = "",
    ) -> dict[str, Any]:
        request = hpb.GetBalanceAsOfRequest(account_id=account_id, as_of=parse_time(as_of, field="as_of"))
        return m.from_message(await ops.get_balance_as_of(history, principal, request, None))

    @router.get(
        "/history/daily-totals",
        response_model=DailyTotals,
        summary="Totals per day, currency, type, source and change",
        **extra("GetDailyTotals"),
    )
    async def get_daily_totals(
        principal: Annotated[Principal, caller("GetDailyTotals")],
        timestamp_from: Annotated[str, _time_query("from")] = "",
        to: Annotated[str, _time_query()] = "",
    ) -> dict[str, Any]:
        request = hpb.GetDailyTotalsRequest(
            to=parse_time(to, field="to"), **{"from": parse_time(timestamp_from, field="from")}
        )
        return m.from_message(await ops.get_daily_totals(history, principal, request, None))

    @router.get(
        "/history/transactions",
        response_model=CorrelatedTransfers,
        summary="Every transfer of the transactions carrying a correlation id",
        **extra("ListTransactionsByCorrelation"),
    )
    async def list_transactions_by_correlation(
        principal: Annotated[Principal, caller("ListTransactionsByCorrelation")],
        correlation_id: Annotated[str, Query(description="The correlation id the transactions were posted with.")] = "",
    ) -> dict[str, Any]:
        request = hpb.ListTransactionsByCorrelationRequest(correlation_id=correlation_id)
        return m.from_message(await ops.list_transactions_by_correlation(history, principal, request, None))

    @router.get(
        "/history/reconciliation",
        response_model=ReconciliationReport,
        summary="The read model's balances compared with the engine's",
        **extra("Reconcile"),
    )
    async def reconcile(principal: Annotated[Principal, caller("Reconcile")]) -> dict[str, Any]:
        return m.from_message(await ops.reconcile(history, principal, hpb.ReconcileRequest(), None))

    return router
