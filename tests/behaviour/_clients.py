"""One small client protocol with two implementations: the behaviour suite speaks it and never knows
which edge it is on.

`LedgerClient.call(rpc, request, caller=...)` takes a ledger.v1 request message and answers the
response's proto3 JSON (proto field names, u64 as decimal strings, enums by name), or raises `Refused`
with the status class, the machine-readable reason and the metadata. The gRPC client sends the message
as is; the HTTP client turns it into the JSON gateway's request (its own route table: path parameters
from fields, the rest in the query string for GET or the JSON body for POST), so every difference
between the edges surfaces as a failed assertion in a test that runs on both.

Statuses are compared as a `Code` read independently on each edge: the gRPC status code on one, the
HTTP status on the other (the gateway's documented table), never the error body's own claim.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import quote

import grpc
import httpx
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from facade.api.gen.ledger.v1 import history_pb2, ledger_pb2

__all__ = [
    "Caller",
    "Code",
    "Edge",
    "GrpcClient",
    "HttpClient",
    "JsonObject",
    "LedgerClient",
    "Refused",
    "Rpc",
    "as_json",
]

JsonObject = dict[str, Any]
STATUS_DETAILS_KEY = "grpc-status-details-bin"
HTTP_CREATED = 201
HTTP_OK = 200
PROTO_FILES = (ledger_pb2.DESCRIPTOR, history_pb2.DESCRIPTOR)
"""The ledger.v1 services' files: importing them registers their methods in the default pool."""


class Edge(enum.Enum):
    GRPC = "grpc"
    HTTP = "http"


class Rpc(enum.Enum):
    """The unary RPCs the suite calls, by their full gRPC method path (what routes carry as x-grpc-method)."""

    CREATE_ACCOUNT = "/ledger.v1.Ledger/CreateAccount"
    GET_ACCOUNT = "/ledger.v1.Ledger/GetAccount"
    LIST_ACCOUNTS = "/ledger.v1.Ledger/ListAccounts"
    GET_BALANCE = "/ledger.v1.Ledger/GetBalance"
    POST_TRANSACTION = "/ledger.v1.Ledger/PostTransaction"
    POST_TRANSACTIONS = "/ledger.v1.Ledger/PostTransactions"
    CAPTURE_TRANSACTION = "/ledger.v1.Ledger/CaptureTransaction"
    VOID_TRANSACTION = "/ledger.v1.Ledger/VoidTransaction"
    GET_TRANSACTION = "/ledger.v1.Ledger/GetTransaction"
    LIST_ACCOUNT_ENTRIES = "/ledger.v1.Ledger/ListAccountEntries"
    GET_STATEMENT = "/ledger.v1.History/GetStatement"
    GET_BALANCE_AS_OF = "/ledger.v1.History/GetBalanceAsOf"
    GET_DAILY_TOTALS = "/ledger.v1.History/GetDailyTotals"
    LIST_TRANSACTIONS_BY_CORRELATION = "/ledger.v1.History/ListTransactionsByCorrelation"
    RECONCILE = "/ledger.v1.History/Reconcile"
    GET_CHECKPOINT = "/ledger.v1.History/GetCheckpoint"
    GET_INCLUSION_PROOF = "/ledger.v1.History/GetInclusionProof"
    GET_CONSISTENCY_PROOF = "/ledger.v1.History/GetConsistencyProof"
    LIST_TRANSACTIONS = "/ledger.v1.History/ListTransactions"
    LIST_HISTORY_ACCOUNTS = "/ledger.v1.History/ListAccounts"

    @property
    def response_class(self) -> type[Message]:
        """The method's output message, from the descriptors ledger_pb2 and history_pb2 registered."""
        assert PROTO_FILES
        method = descriptor_pool.Default().FindMethodByName(self.value.strip("/").replace("/", "."))
        return message_factory.GetMessageClass(method.output_type)


class Code(enum.Enum):
    """How a refusal is classed, whichever edge signals it."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


# The gateway's documented statuses (facade.http.gateway): 409 is ALREADY_EXISTS, 422 FAILED_PRECONDITION.
_CODE_OF_HTTP_STATUS: Mapping[int, Code] = {
    400: Code.INVALID_ARGUMENT,
    401: Code.UNAUTHENTICATED,
    403: Code.PERMISSION_DENIED,
    404: Code.NOT_FOUND,
    409: Code.ALREADY_EXISTS,
    422: Code.FAILED_PRECONDITION,
    429: Code.RESOURCE_EXHAUSTED,
    500: Code.INTERNAL,
    503: Code.UNAVAILABLE,
    504: Code.DEADLINE_EXCEEDED,
}


class Refused(Exception):  # noqa: N818 - what the suite asserts: "the call was refused".
    """A call the service refused: the same three facts on either edge."""

    def __init__(self, code: Code, reason: str, metadata: Mapping[str, str], *, message: str = "") -> None:
        super().__init__(f"{code.name} {reason} {dict(metadata)}: {message}")
        self.code = code
        self.reason = reason
        self.metadata = dict(metadata)
        self.message = message
        """For people: tests look for a detail in it (which leg), never compare it whole."""


@dataclass(frozen=True)
class Caller:
    """The credentials a call carries: the `authorization` value, or none at all."""

    authorization: str | None


def since(timestamp_from: int) -> dict[str, Any]:
    """The `from` field of a period request, as keyword arguments (`from` is a Python keyword)."""
    return {"from": timestamp_from}


def as_json(message: Message) -> JsonObject:
    """A message's proto3 JSON, every field present: what the gateway answers for the same message."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


class LedgerClient(Protocol):
    edge: Edge

    async def call(self, rpc: Rpc, request: Message, *, caller: Caller) -> JsonObject: ...

    async def batch(
        self, request: ledger_pb2.PostTransactionsRequest, *, caller: Caller
    ) -> list[JsonObject | Refused]: ...


# ------------------------------------------------------------------------------------------------
# gRPC.


def _grpc_refusal(error: grpc.aio.AioRpcError) -> Refused:
    """The status code and the google.rpc.ErrorInfo of a failed call, read from the wire trailers."""
    reason, metadata = "", {}
    for key, value in error.trailing_metadata() or ():
        if key != STATUS_DETAILS_KEY:
            continue
        assert isinstance(value, bytes)
        for detail in status_pb2.Status.FromString(value).details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                reason, metadata = info.reason, dict(info.metadata)
    return Refused(Code[error.code().name], reason, metadata, message=error.details() or "")


@dataclass
class GrpcClient:
    channel: grpc.aio.Channel
    edge: Edge = Edge.GRPC

    async def _unary(self, rpc: Rpc, request: Message, caller: Caller) -> Message:
        response_class = rpc.response_class
        method = self.channel.unary_unary(
            rpc.value,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_class.FromString,
        )
        metadata = () if caller.authorization is None else (("authorization", caller.authorization),)
        try:
            response = await method(request, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            raise _grpc_refusal(error) from None
        assert isinstance(response, response_class)
        return response

    async def call(self, rpc: Rpc, request: Message, *, caller: Caller) -> JsonObject:
        return as_json(await self._unary(rpc, request, caller))

    async def batch(self, request: ledger_pb2.PostTransactionsRequest, *, caller: Caller) -> list[JsonObject | Refused]:
        response = await self._unary(Rpc.POST_TRANSACTIONS, request, caller)
        assert isinstance(response, ledger_pb2.PostTransactionsResponse)
        results: list[JsonObject | Refused] = []
        for result in response.results:
            if result.HasField("transaction"):
                results.append(as_json(result.transaction))
            else:
                code = next(Code[c.name] for c in grpc.StatusCode if c.value[0] == result.error.code)
                results.append(Refused(code, result.error.reason, result.error.metadata, message=result.error.message))
        return results


# ------------------------------------------------------------------------------------------------
# HTTP (the JSON gateway).


@dataclass(frozen=True)
class _Route:
    method: Literal["GET", "POST"]
    path: str
    """With `{field}` placeholders filled from the request message's fields of those names."""


_ROUTES: Mapping[Rpc, _Route] = {
    Rpc.CREATE_ACCOUNT: _Route("POST", "/v1/accounts"),
    Rpc.GET_ACCOUNT: _Route("GET", "/v1/accounts/{account_id}"),
    Rpc.LIST_ACCOUNTS: _Route("GET", "/v1/accounts"),
    Rpc.GET_BALANCE: _Route("GET", "/v1/accounts/{account_id}/balance"),
    Rpc.POST_TRANSACTION: _Route("POST", "/v1/transactions"),
    Rpc.POST_TRANSACTIONS: _Route("POST", "/v1/transactions:batch"),
    Rpc.CAPTURE_TRANSACTION: _Route("POST", "/v1/transactions/{authorization_id}:capture"),
    Rpc.VOID_TRANSACTION: _Route("POST", "/v1/transactions/{authorization_id}:void"),
    Rpc.LIST_ACCOUNT_ENTRIES: _Route("GET", "/v1/accounts/{account_id}/entries"),
    Rpc.GET_STATEMENT: _Route("GET", "/v1/accounts/{account_id}/statement"),
    Rpc.GET_BALANCE_AS_OF: _Route("GET", "/v1/accounts/{account_id}/balance-as-of"),
    Rpc.GET_DAILY_TOTALS: _Route("GET", "/v1/history/daily-totals"),
    Rpc.LIST_TRANSACTIONS_BY_CORRELATION: _Route("GET", "/v1/history/transactions"),
    Rpc.RECONCILE: _Route("GET", "/v1/history/reconciliation"),
    Rpc.GET_CHECKPOINT: _Route("GET", "/v1/audit/checkpoint"),
    Rpc.GET_INCLUSION_PROOF: _Route("GET", "/v1/audit/inclusion-proof"),
    Rpc.GET_CONSISTENCY_PROOF: _Route("GET", "/v1/audit/consistency-proof"),
    Rpc.LIST_TRANSACTIONS: _Route("GET", "/v1/history/transactions:search"),
    Rpc.LIST_HISTORY_ACCOUNTS: _Route("GET", "/v1/history/accounts:search"),
}
# GetTransaction's oneof picks the route: by id in the path, by idempotency key in the query string.
_TRANSACTION_BY_ID = _Route("GET", "/v1/transactions/{transaction_id}")
_TRANSACTION_BY_KEY = _Route("GET", "/v1/transactions")


def _query_value(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


_QueryValue = str | int | float | bool | None


def _query_parameters(fields: Mapping[str, object]) -> list[tuple[str, _QueryValue]]:
    """A GET route's query string: a filter message is flattened (its fields without the prefix), a labels
    map becomes repeated `label=key=value`."""
    params: list[tuple[str, _QueryValue]] = []
    for name, value in fields.items():
        if isinstance(value, dict):
            for inner, inner_value in value.items():
                if inner == "labels":
                    assert isinstance(inner_value, dict)
                    params.extend(("label", f"{key}={label}") for key, label in inner_value.items())
                else:
                    params.append((inner, _query_value(inner_value)))
        else:
            params.append((name, _query_value(value)))
    return params


@dataclass
class HttpClient:
    client: httpx.AsyncClient
    edge: Edge = Edge.HTTP

    def _route(self, rpc: Rpc, request: Message) -> _Route:
        if rpc is Rpc.GET_TRANSACTION:
            assert isinstance(request, ledger_pb2.GetTransactionRequest)
            return _TRANSACTION_BY_ID if request.WhichOneof("key") == "transaction_id" else _TRANSACTION_BY_KEY
        return _ROUTES[rpc]

    async def _send(self, rpc: Rpc, request: Message, caller: Caller) -> JsonObject:
        route = self._route(rpc, request)
        fields = json_format.MessageToDict(request, preserving_proto_field_name=True)
        path = route.path
        for name in list(fields):
            if "{" + name + "}" in path:
                path = path.replace("{" + name + "}", quote(str(fields.pop(name)), safe=""))
        for name in ("account_id", "authorization_id", "transaction_id"):  # Empty: an empty path segment.
            path = path.replace("{" + name + "}", "")
        headers = {} if caller.authorization is None else {"Authorization": caller.authorization}
        if route.method == "GET":
            params = _query_parameters(fields)
            response = await self.client.get(path, params=params, headers=headers)
        else:
            response = await self.client.post(path, json=fields, headers=headers)
        body = response.json()
        assert isinstance(body, dict), response.text
        if response.status_code >= 300:
            assert response.status_code in _CODE_OF_HTTP_STATUS, (response.status_code, response.text)
            assert isinstance(body.get("metadata", {}), dict), response.text
            code = _CODE_OF_HTTP_STATUS[response.status_code]
            raise Refused(code, str(body.get("reason")), body.get("metadata", {}), message=str(body.get("message")))
        # A POST that creates may answer 201 (issue 11: CreateAccount, and core may count postings as creates);
        # tests/behaviour/test_http_only.py holds the gateway to it for accounts. Reads answer 200.
        created = route.method == "POST" and rpc is not Rpc.POST_TRANSACTIONS and response.status_code == HTTP_CREATED
        assert response.status_code == HTTP_OK or created, (response.status_code, response.text)
        return body

    async def call(self, rpc: Rpc, request: Message, *, caller: Caller) -> JsonObject:
        return await self._send(rpc, request, caller)

    async def batch(self, request: ledger_pb2.PostTransactionsRequest, *, caller: Caller) -> list[JsonObject | Refused]:
        body = await self._send(Rpc.POST_TRANSACTIONS, request, caller)
        results: list[JsonObject | Refused] = []
        for item in body["results"]:
            if item.get("transaction") is not None:
                assert item.get("error") is None, item
                results.append(item["transaction"])
            else:
                error = item["error"]
                results.append(
                    Refused(Code[error["code"]], error["reason"], error["metadata"], message=error["message"])
                )
        return results
