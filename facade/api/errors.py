"""Errors as gRPC statuses with machine-readable details (google.rpc.Status in grpc-status-details-bin).

Every error carries a google.rpc.ErrorInfo: `reason` (e.g. INSUFFICIENT_FUNDS), `domain` "ledger.v1" and
string metadata (e.g. which leg). RESOURCE_EXHAUSTED also carries a google.rpc.RetryInfo, so clients and
proxies know when to retry.

No response carries a Python exception's or a database's text: `unexpected_error` turns any error the
service did not translate into INTERNAL (or UNAVAILABLE for an engine that cannot serve) with a generic
message and an error id, and logs the detail under that id. Both edges (gRPC, the JSON gateway) use it.
"""

from __future__ import annotations

import os
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from facade.domain.mapping import ERROR_DOMAIN, DomainError
from facade.engine.protocol import EngineUnavailableError
from facade.observability.logs import get_logger

STATUS_DETAILS_KEY = "grpc-status-details-bin"
REASON_INTERNAL = "INTERNAL"
REASON_MALFORMED_REQUEST = "MALFORMED_REQUEST"
ERROR_ID_BYTES = 8

log = get_logger("ledger.errors")


def unexpected_error(error: Exception, *, edge: str, operation: str) -> DomainError:
    """The error a caller sees for an exception nothing translated: a reason and an error id, never the
    exception's text (it may quote SQL, file paths or a database's message). The detail is logged with
    the id, so an operator can find it from the caller's report."""
    error_id = os.urandom(ERROR_ID_BYTES).hex()
    log.error("unexpected error", error_id=error_id, edge=edge, operation=operation, exc_info=error)
    metadata = {"error_id": error_id}
    if isinstance(error, EngineUnavailableError):  # Reads of a stopped engine, say: its fault, not its text.
        message = f"engine unavailable (error id {error_id})"
        return DomainError(grpc.StatusCode.UNAVAILABLE, error.fault.value, message, metadata)
    return DomainError(grpc.StatusCode.INTERNAL, REASON_INTERNAL, f"internal error (error id {error_id})", metadata)


def status_details(
    code: grpc.StatusCode, reason: str, message: str, metadata: dict[str, str] | None = None
) -> status_pb2.Status:
    status = status_pb2.Status(code=code.value[0], message=message)
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata or {}))
    status.details.append(info)
    retry_after_ms = (metadata or {}).get("retry_after_ms")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after_ms:
        retry = any_pb2.Any()
        milliseconds = int(retry_after_ms)
        retry.Pack(
            error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(seconds=milliseconds // 1000, nanos=milliseconds % 1000 * 1_000_000)
            )
        )
        status.details.append(retry)
    return status


async def abort_details(
    context: grpc.aio.ServicerContext[Any, Any],
    code: grpc.StatusCode,
    reason: str,
    message: str,
    metadata: dict[str, str] | None = None,
) -> NoReturn:
    status = status_details(code, reason, message, metadata)
    await context.abort(code, message, trailing_metadata=((STATUS_DETAILS_KEY, status.SerializeToString()),))
    raise AssertionError("unreachable: abort raises")


async def abort_domain(context: grpc.aio.ServicerContext[Any, Any], error: DomainError) -> NoReturn:
    await abort_details(context, error.code, error.reason, error.message, error.metadata)


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
