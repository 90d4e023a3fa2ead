"""The JSON gateway's route table: every unary ledger.v1.Ledger and ledger.v1.History RPC and its HTTP
form, declared once (method, path, RPC, request message, scope), and the plumbing every route shares.

Each route module (ledger_routes, history_routes, audit_routes) declares its endpoints on a module-level
router with `@route(router, "<operation id>")`: the decorator takes the method, path, status and
response model from ROUTES, requires the RPC's scope with `Security(..., scopes=[scope])` (so OpenAPI
lists it on the operation) and marks the operation with `x-grpc-method` (the full gRPC method path) and
`x-required-scope`, so tests pair routes with the proto descriptors. StreamTransactions stays gRPC-only
(its HTTP form is the batch).

Creating a resource answers 201: CreateAccount, PostTransaction (a transaction or an authorization),
CaptureTransaction, VoidTransaction. A replay of a transaction (same idempotency key, same request:
`deduplicated` true) answers 200: nothing was created by that call. CreateAccount answers 201 on every
success, replays included: the account's id is derived from the caller and the external reference, so
the call is a create-if-absent whose answer is the same resource either way, and the service does not
tell a replay from a first call. PostTransactions answers 200: one result per item, created or refused.
"""

# No `from __future__ import annotations`: FastAPI must see the Annotated dependencies as objects.

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Security
from fastapi.security import APIKeyHeader, SecurityScopes
from google.protobuf.message import Message
from pydantic import BaseModel

from facade.api.gen.ledger.v1 import history_pb2 as hpb
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.auth import METHOD_SCOPES, Authenticator, Principal
from facade.http import models as m
from facade.http import responses as r
from facade.operations.history import HistoryBackend
from facade.service import LedgerService

__all__ = [
    "API_PREFIX",
    "ROUTES",
    "CurrentPrincipal",
    "History",
    "RouteSpec",
    "Service",
    "credentials",
    "route",
]

API_PREFIX = "/v1"
LEDGER = "/ledger.v1.Ledger/"
HISTORY = "/ledger.v1.History/"

credentials = APIKeyHeader(
    name="Authorization",
    scheme_name="LedgerCredentials",
    description="`Bearer <jwt>` (HS256 with the shared secret, or RS/PS/ES/EdDSA with the JWKS key named by `kid`; "
    "`exp` required, `sub` = client id, `scope` = space-separated scopes) or "
    "`ApiKey <key_id>.<secret>`. Scopes: ledger.read, ledger.write, ledger.admin, ledger.audit; each operation "
    "lists the one it needs.",
    auto_error=False,
)


@dataclass(frozen=True, slots=True)
class RouteSpec:
    method: Literal["GET", "POST"]
    path: str
    """Under API_PREFIX; custom methods in the `:verb` style of Google's API design guide."""
    rpc: str
    """The full gRPC method path, e.g. /ledger.v1.Ledger/PostTransaction."""
    request: type[Message]
    """The RPC's request message: the route's body, or its path and query parameters, become one."""
    response_model: type[BaseModel]
    summary: str
    status_code: int = 200
    tag: str = "ledger"
    replays: bool = False
    """A create whose replay (same idempotency key and request) answers 200 instead of status_code."""
    exclude_none: bool = False
    """Optional message fields (proto3 `optional`, sub-messages) left out when absent, as in proto3 JSON."""

    @property
    def scope(self) -> str:
        return METHOD_SCOPES[self.rpc]


def _spec(
    method: Literal["GET", "POST"], path: str, rpc: str, request: type[Message], *args: Any, **kwargs: Any
) -> RouteSpec:
    return RouteSpec(method, path, rpc, request, *args, **kwargs)


# Keyed by OpenAPI operation id (the RPC name; GetTransaction has two forms).
ROUTES: dict[str, RouteSpec] = {
    "CreateAccount": _spec(
        "POST", "/accounts", LEDGER + "CreateAccount", pb.CreateAccountRequest, m.Account,
        "Open an account (idempotent per reference)", 201, "accounts",
    ),
    "ListAccounts": _spec(
        "GET", "/accounts", LEDGER + "ListAccounts", pb.ListAccountsRequest, m.ListAccountsResponse,
        "List the caller's accounts", tag="accounts",
    ),
    "GetAccount": _spec(
        "GET", "/accounts/{account_id}", LEDGER + "GetAccount", pb.GetAccountRequest, m.Account,
        "An account and its balance", tag="accounts",
    ),
    "GetBalance": _spec(
        "GET", "/accounts/{account_id}/balance", LEDGER + "GetBalance", pb.GetBalanceRequest, m.Balance,
        "Posted, pending, available", tag="accounts",
    ),
    "ListAccountEntries": _spec(
        "GET", "/accounts/{account_id}/entries", LEDGER + "ListAccountEntries", pb.ListAccountEntriesRequest,
        m.ListAccountEntriesResponse, "An account's entries, cursor-paginated", tag="accounts",
    ),
    "PostTransaction": _spec(
        "POST", "/transactions", LEDGER + "PostTransaction", pb.PostTransactionRequest, m.Transaction,
        "Post one atomic transaction", 201, "transactions", replays=True,
    ),
    "PostTransactions": _spec(
        "POST", "/transactions:batch", LEDGER + "PostTransactions", pb.PostTransactionsRequest,
        m.PostTransactionsResponse, "Post independent transactions; a result per item", tag="transactions",
    ),
    "GetTransactionByIdempotencyKey": _spec(
        "GET", "/transactions", LEDGER + "GetTransaction", pb.GetTransactionRequest, m.Transaction,
        "A transaction by the idempotency key it was posted with", tag="transactions",
    ),
    "GetTransaction": _spec(
        "GET", "/transactions/{transaction_id}", LEDGER + "GetTransaction", pb.GetTransactionRequest, m.Transaction,
        "A transaction", tag="transactions",
    ),
    "CaptureTransaction": _spec(
        "POST", "/transactions/{authorization_id}:capture", LEDGER + "CaptureTransaction",
        pb.CaptureTransactionRequest, m.Transaction, "Capture an authorization, fully or partly", 201, "transactions",
        replays=True,
    ),
    "VoidTransaction": _spec(
        "POST", "/transactions/{authorization_id}:void", LEDGER + "VoidTransaction", pb.VoidTransactionRequest,
        m.Transaction, "Release an authorization's hold", 201, "transactions", replays=True,
    ),
    "GetStatement": _spec(
        "GET", "/accounts/{account_id}/statement", HISTORY + "GetStatement", hpb.GetStatementRequest, r.Statement,
        "An account's entries in a period, with balances", tag="history", exclude_none=True,
    ),
    "GetBalanceAsOf": _spec(
        "GET", "/accounts/{account_id}/balance-as-of", HISTORY + "GetBalanceAsOf", hpb.GetBalanceAsOfRequest,
        r.HistoricalBalance, "An account's balances as of a moment", tag="history",
    ),
    "GetDailyTotals": _spec(
        "GET", "/history/daily-totals", HISTORY + "GetDailyTotals", hpb.GetDailyTotalsRequest, r.DailyTotals,
        "Totals per day, currency, type, source and change", tag="history",
    ),
    "ListTransactionsByCorrelation": _spec(
        "GET", "/history/transactions", HISTORY + "ListTransactionsByCorrelation",
        hpb.ListTransactionsByCorrelationRequest, r.CorrelatedTransfers,
        "Every transfer of the transactions carrying a correlation id", tag="history",
    ),
    "ListTransactions": _spec(
        "GET", "/history/transactions:search", HISTORY + "ListTransactions", hpb.ListTransactionsRequest,
        r.TransactionsPage, "Transactions whose metadata matches a filter, cursor-paged", tag="history",
    ),
    # ledger.v1.Ledger/ListAccounts has the operation id ListAccounts already (OpenAPI ids are unique).
    "ListHistoryAccounts": _spec(
        "GET", "/history/accounts:search", HISTORY + "ListAccounts", hpb.ListHistoryAccountsRequest,
        r.AccountsPage, "Accounts with entries whose metadata matches a filter, cursor-paged", tag="history",
    ),
    "Reconcile": _spec(
        "GET", "/history/reconciliation", HISTORY + "Reconcile", hpb.ReconcileRequest, r.ReconciliationReport,
        "The read model's balances compared with the engine's", tag="history",
    ),
    "GetCheckpoint": _spec(
        "GET", "/audit/checkpoint", HISTORY + "GetCheckpoint", hpb.GetCheckpointRequest, r.SignedCheckpoint,
        "A signed checkpoint", tag="audit",
    ),
    "GetInclusionProof": _spec(
        "GET", "/audit/inclusion-proof", HISTORY + "GetInclusionProof", hpb.GetInclusionProofRequest,
        r.InclusionProof, "Inclusion proofs of a change or a transaction's changes", tag="audit",
    ),
    "GetConsistencyProof": _spec(
        "GET", "/audit/consistency-proof", HISTORY + "GetConsistencyProof", hpb.GetConsistencyProofRequest,
        r.ConsistencyProof, "Proof that a checkpoint extends an older one", tag="audit",
    ),
}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Dependencies: what build_app put in app.state, and the caller.


# The dependencies are coroutines, though they only read attributes: FastAPI runs a plain `def`
# dependency in its thread pool, a hand-off to a worker thread and back per dependency and request
# (~8% of the event loop's time under bench_overload.py's HTTP clients, py-spy).


async def _service(request: Request) -> LedgerService:
    service: LedgerService = request.app.state.service
    return service


async def _history(request: Request) -> HistoryBackend:
    history: HistoryBackend = request.app.state.history
    return history


async def _authorized(
    request: Request, required: SecurityScopes, authorization: Annotated[str | None, Security(credentials)]
) -> None:
    """Authenticates the caller and checks the route's scopes; the principal waits in request.state."""
    authenticator: Authenticator = request.app.state.authenticator
    principal = await authenticator.authenticate_async(authorization)
    for scope in required.scopes:
        authenticator.authorize(principal, scope)
    request.state.principal = principal


async def _principal(request: Request) -> Principal:
    principal: Principal = request.state.principal  # Set by _authorized, a dependency of every route.
    return principal


Service = Annotated[LedgerService, Depends(_service)]
History = Annotated[HistoryBackend, Depends(_history)]
CurrentPrincipal = Annotated[Principal, Depends(_principal)]

Endpoint = Callable[..., Coroutine[Any, Any, Any]]


def route(
    router: APIRouter, operation_id: str, *, openapi_extra: dict[str, Any] | None = None
) -> Callable[[Endpoint], Endpoint]:
    """Registers the decorated endpoint on `router` as ROUTES[operation_id] declares it."""
    spec = ROUTES[operation_id]
    service_name, rpc_name = spec.rpc.strip("/").split("/")
    assert router.prefix == API_PREFIX and spec.path.startswith("/")
    description = f"gRPC: `{service_name}/{rpc_name}`. Scope: `{spec.scope}`."
    if spec.rpc.startswith(HISTORY) and spec.tag == "history":
        description += (
            " Served by the read model: eventually consistent, `projected_until` says how far it has caught up."
        )
    responses: dict[int | str, dict[str, Any]] = {}
    if spec.replays:
        responses[200] = {"model": spec.response_model, "description": "A replay (`deduplicated`): nothing created."}
    return router.api_route(
        spec.path,
        methods=[spec.method],
        response_model=spec.response_model,
        response_model_exclude_none=spec.exclude_none,
        status_code=spec.status_code,
        tags=[spec.tag],
        summary=spec.summary,
        operation_id=operation_id,
        description=description,
        responses=responses,
        dependencies=[Security(_authorized, scopes=[spec.scope])],
        openapi_extra={"x-grpc-method": spec.rpc, "x-required-scope": spec.scope, **(openapi_extra or {})},
    )
