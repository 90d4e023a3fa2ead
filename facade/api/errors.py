"""The gRPC edge's errors: a LedgerError as a gRPC status with machine-readable details.

One table (GRPC_CODE) gives each ErrorKind its gRPC code. Every status carries a google.rpc.Status in
`grpc-status-details-bin` (built with grpcio-status, `rpc_status.to_status`) holding a
google.rpc.ErrorInfo: `reason` (e.g. INSUFFICIENT_FUNDS), `domain` "ledger.v1" and string metadata (e.g.
which leg). RESOURCE_EXHAUSTED also carries a google.rpc.RetryInfo, so clients and proxies know when to
retry. The one place that turns a LedgerError into a status is the request guard interceptor
(facade.api.guard); servicers just raise.

No response carries a Python exception's or a database's text: facade.operations.unexpected turns any
error the service did not translate into INTERNAL (or UNAVAILABLE for an engine that cannot serve) with a
generic message and an error id (re-exported here for the gRPC edge's callers).
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from facade.domain.errors import ERROR_DOMAIN, ErrorKind, LedgerError
from facade.operations.unexpected import (
    REASON_INTERNAL,
    REASON_MALFORMED_REQUEST,
    REASON_METADATA_UNAVAILABLE,
    unexpected_error,
)

__all__ = [
    "GRPC_CODE",
    "REASON_INTERNAL",
    "REASON_MALFORMED_REQUEST",
    "REASON_METADATA_UNAVAILABLE",
    "STATUS_DETAILS_KEY",
    "abort",
    "error_info",
    "grpc_status",
    "item_code",
    "status_details",
    "unexpected_error",
]

STATUS_DETAILS_KEY = "grpc-status-details-bin"
_NANOS_PER_MILLISECOND = 1_000_000

GRPC_CODE: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.CONFLICT: grpc.StatusCode.ALREADY_EXISTS,
    ErrorKind.PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.DEADLINE: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
}
assert set(GRPC_CODE) == set(ErrorKind)
assert all(code.name == kind.value for kind, code in GRPC_CODE.items())  # The names records and bodies carry.


def status_details(error: LedgerError) -> status_pb2.Status:
    """The google.rpc.Status of `error`: its code, message, ErrorInfo and (when overloaded) RetryInfo."""
    code = GRPC_CODE[error.kind]
    status = status_pb2.Status(code=code.value[0], message=error.message)
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata))
    status.details.append(info)
    retry_after_ms = error.metadata.get("retry_after_ms", "")
    if error.kind == ErrorKind.EXHAUSTED and retry_after_ms.isdigit():
        milliseconds = int(retry_after_ms)
        delay = duration_pb2.Duration(seconds=milliseconds // 1000, nanos=milliseconds % 1000 * _NANOS_PER_MILLISECOND)
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status.details.append(retry)
    assert status.code != grpc.StatusCode.OK.value[0]
    return status


def grpc_status(error: LedgerError) -> grpc.Status:
    return rpc_status.to_status(status_details(error))


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: LedgerError) -> NoReturn:
    """Ends the call with `error`'s status (raises grpc.aio.AbortError)."""
    await context.abort_with_status(grpc_status(error))
    raise AssertionError("unreachable: abort raises")


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo of a failed call (client side), or None."""
    metadata: Any = error.trailing_metadata()
    for key, value in metadata or ():
        if key == STATUS_DETAILS_KEY:
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info
    return None


def item_code(error: LedgerError) -> int:
    """The numeric gRPC code of a batch item's error (ledger.v1.ItemError.code)."""
    return GRPC_CODE[error.kind].value[0]
