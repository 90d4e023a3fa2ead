"""JSON routes for statement reconciliation, under /v1/statements (scope ledger.audit: reconciliation
staff): upload a bank or PSP statement (CSV or camt.053) for one account and get the run back; read a
stored run and its results as JSON or CSV. The work is projections.statements; the read model is the
service's own (its one ClickHouse thread), so this works while the service runs."""

# No `from __future__ import annotations`: FastAPI must see the Annotated dependencies as objects.

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Security
from fastapi.responses import Response
from fastapi.security import APIKeyHeader

from facade.auth import SCOPE_AUDIT, Authenticator, Principal
from facade.domain.errors import ErrorKind, LedgerError
from facade.http._json import StrictJsonRoute
from facade.settings import CurrencySettings
from projections.read_model import ReadModel
from projections.schema import create_tables
from projections.statements import (
    CsvMapping,
    MatchOptions,
    RunSummary,
    StatementError,
    StatementFormat,
    StoredResult,
    load_results,
    load_run,
    reconcile_statement,
    results_csv,
)
from projections.statements._match import DATE_WINDOW_DAYS_MAX, TOLERANCE_MAX

__all__ = ["statement_router"]

U128_MAX = 2**128 - 1
RunId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="a run id")]
_SAFE_INTEGER_MAX = (1 << 53) - 1


def _invalid(error: StatementError) -> LedgerError:
    return LedgerError(ErrorKind.INVALID, "INVALID_STATEMENT", str(error))


def _json(value: object) -> object:
    """Amounts and ids as decimal strings (the gateway's rule for money), enums by value."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value) if abs(value) > _SAFE_INTEGER_MAX else value
    if isinstance(value, tuple | list):
        return [_json(v) for v in value]
    return getattr(value, "value", None) or str(value)


def _summary(summary: RunSummary) -> dict[str, Any]:
    fields = {name: getattr(summary, name) for name in summary.__dataclass_fields__}
    fields["account_id"] = str(summary.account_id)
    fields["tolerance"] = str(summary.tolerance)
    return {name: _json(value) for name, value in fields.items()}


def _result(result: StoredResult) -> dict[str, Any]:
    fields = {name: getattr(result, name) for name in result.__dataclass_fields__}
    body = {name: _json(value) for name, value in fields.items()}
    for name in ("statement_amount", "ledger_amount", "amount_difference"):
        body[name] = str(getattr(result, name))
    body["transfer_ids"] = [str(t) for t in result.transfer_ids]
    return body


def statement_router(
    read_model: ReadModel,
    authenticator: Authenticator,
    currencies: dict[str, CurrencySettings],
    *,
    credentials: APIKeyHeader,
    responses: dict[int | str, Any],
) -> APIRouter:
    router = APIRouter(prefix="/v1/statements", responses=responses, route_class=StrictJsonRoute, tags=["statements"])
    scales = {code: (c.ledger, c.scale) for code, c in currencies.items()}

    async def principal(authorization: Annotated[str | None, Security(credentials)]) -> Principal:
        found = await authenticator.authenticate_async(authorization)
        authenticator.authorize(found, SCOPE_AUDIT)
        return found

    audit_caller = Depends(principal)
    extra: dict[str, Any] = {"openapi_extra": {"x-required-scope": SCOPE_AUDIT}}

    @router.post(
        "/{account_id}/reconcile",
        operation_id="ReconcileStatement",
        summary="Reconcile a statement (the request body: CSV or camt.053 XML) against an account",
        description="Rules and result kinds: docs/statement-reconciliation.md. The same statement, options "
        f"and ledger give the same run id (nothing written twice). Scope: `{SCOPE_AUDIT}`.",
        openapi_extra={
            "x-required-scope": SCOPE_AUDIT,
            "requestBody": {
                "required": True,
                "description": "The statement file, as the bank or PSP sent it",
                "content": {
                    "text/csv": {"schema": {"type": "string"}},
                    "application/xml": {"schema": {"type": "string"}},
                },
            },
        },
    )
    async def reconcile(
        caller: Annotated[Principal, audit_caller],
        request: Request,
        account_id: Annotated[str, Path(pattern=r"^[1-9][0-9]{0,38}$", description="u128, decimal")],
        statement_format: Annotated[StatementFormat, Query(alias="format")] = StatementFormat.CSV,
        mapping: Annotated[list[str] | None, Query(max_length=12, description="CSV: KEY=VALUE, repeatable")] = None,
        date_window_days: Annotated[int, Query(ge=0, le=DATE_WINDOW_DAYS_MAX)] = 3,
        tolerance: Annotated[int, Query(ge=0, le=TOLERANCE_MAX, description="minor units")] = 0,
        inverted: bool = False,
        currency: Annotated[str | None, Query(pattern=r"^[A-Z]{3}$")] = None,
    ) -> dict[str, Any]:
        del caller
        if int(account_id) > U128_MAX:
            raise _invalid(StatementError(f"account {account_id} is not a u128"))
        data = await request.body()  # Bounded by the gateway's http_body_bytes_max before it is read.
        options = MatchOptions(date_window_days=date_window_days, tolerance=tolerance, inverted=inverted)
        try:
            if mapping and statement_format is not StatementFormat.CSV:
                raise StatementError("mapping applies to format=csv only")
            csv_mapping = CsvMapping.parse(mapping or [])

            def run(client: Any) -> Any:
                create_tables(client)
                return reconcile_statement(
                    client, account_id=int(account_id), data=data, statement_format=statement_format,
                    currencies=scales, currency=currency, mapping=csv_mapping, options=options,
                )  # fmt: skip

            reconciliation = await read_model.query(run)
        except StatementError as error:
            raise _invalid(error) from None
        return {
            "summary": _summary(reconciliation.summary),
            "created": reconciliation.created,
            "results": [_result(r) for r in reconciliation.results],
        }

    async def stored(run_id: str) -> tuple[RunSummary, list[StoredResult]]:
        def load(client: Any) -> tuple[RunSummary | None, list[StoredResult]]:
            create_tables(client)
            return load_run(client, run_id), load_results(client, run_id)

        summary, results = await read_model.query(load)
        if summary is None:
            raise LedgerError(ErrorKind.NOT_FOUND, "RUN_NOT_FOUND", f"no reconciliation run {run_id}")
        return summary, results

    @router.get(
        "/runs/{run_id}",
        operation_id="GetReconciliationRun",
        summary="A stored reconciliation run and its results",
        **extra,
    )
    async def get_run(caller: Annotated[Principal, audit_caller], run_id: RunId) -> dict[str, Any]:
        del caller
        summary, results = await stored(run_id)
        return {"summary": _summary(summary), "results": [_result(r) for r in results]}

    @router.get(
        "/runs/{run_id}/results.csv",
        operation_id="GetReconciliationResultsCsv",
        summary="A run's results as CSV",
        response_class=Response,
        responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "CSV, header row"}},
        **extra,
    )
    async def get_run_csv(caller: Annotated[Principal, audit_caller], run_id: RunId) -> Response:
        del caller
        summary, results = await stored(run_id)
        text = results_csv(summary, results, scales[summary.currency][1] if summary.currency in scales else 0)
        return Response(text, media_type="text/csv; charset=utf-8")

    return router
