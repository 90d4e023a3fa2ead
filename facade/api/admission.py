"""Admission at the gRPC door: refuse a write the service cannot take before its request is decoded or
its caller authenticated.

The first server interceptor. Without it a refused write still ran every interceptor (a span, the JWT
check) and had its request decoded before the servicer could refuse it: for a 1,000-transaction
PostTransactions the decoding alone costs milliseconds of the one event loop, and refused callers come
back. Here a write method is checked against the write queue (LedgerService.admit for the least such a
call costs: one transfer for PostTransaction, the smallest bulk submission for PostTransactions, whose
transactions go to the bulk lane; the caller's deadline is not known here, grpc.aio gives it to the
handler only, which checks again with it). A refused call gets a handler that never decodes its request
(raw bytes) and answers RESOURCE_EXHAUSTED WRITE_QUEUE_FULL with a RetryInfo, the write queue's retry hint.

A write the queue could take is then counted against the service's write limit (facade.write_limit,
shared with the JSON gateway): beyond it the call is refused the same way with TOO_MANY_REQUESTS (checked
here, and again when its handler starts, where the count is taken and given back in the one coroutine),
and an admitted call's request is decoded only once it holds its count.

Authentication runs after: a refusal tells a caller only that the service is busy, as the JSON gateway's
429 at its door does. Refusals here are counted in ledger_request_duration_seconds like any answer
(without the per-call span and log line the observability interceptor would add: under overload those
would cost as much as the refusal).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from facade.api.errors import GRPC_CODE, abort
from facade.batcher import INTERACTIVE_TRANSFERS_MAX
from facade.domain.errors import ErrorKind, LedgerError
from facade.observability import metrics
from facade.service import LedgerService
from facade.write_limit import Lane, too_busy

__all__ = ["ADMITTED_METHODS", "AdmissionInterceptor"]

ADMITTED_METHODS: dict[str, int] = {
    "/ledger.v1.Ledger/PostTransaction": 1,
    "/ledger.v1.Ledger/PostTransactions": INTERACTIVE_TRANSFERS_MAX + 1,
}
"""Write methods checked at the door → the transfers a call of it costs at least (its lane's smallest)."""


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, service: LedgerService) -> None:
        self._service = service

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        transfers = ADMITTED_METHODS.get(handler_call_details.method, 0)
        if not transfers:
            return await continuation(handler_call_details)
        started = time.perf_counter()
        method = handler_call_details.method.rsplit("/", 1)[-1]
        lane = Lane.INTERACTIVE if transfers <= INTERACTIVE_TRANSFERS_MAX else Lane.BULK
        limit = self._service.write_limit
        try:
            self._service.admit(transfers)
            if not limit.has_room(lane):
                raise too_busy(lane, limit.in_flight[lane], self._service.committer.retry_after_seconds())
        except LedgerError as error:
            return _refusing(error, method, started)
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        return self._limited(handler, lane, method, started)

    def _limited(
        self, handler: grpc.RpcMethodHandler[Any, Any], lane: Lane, method: str, started: float
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """`handler` counted in the write limit while it runs (acquired and released in the one coroutine,
        so a call cancelled before its handler runs cannot leak a count); its request decoded only once
        it is admitted. The latency counted runs from the interceptor, so it includes the event loop's
        turns before the handler."""
        assert handler.unary_unary is not None
        limit = self._service.write_limit
        committer = self._service.committer
        inner: Any = handler.unary_unary  # An async behaviour (grpc.aio), which the stubs do not type.
        deserializer = handler.request_deserializer

        async def limited(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if not limit.acquire(lane):  # Filled up between the interceptor and now.
                error = too_busy(lane, limit.in_flight[lane], committer.retry_after_seconds())
                try:
                    await abort(context, error)
                finally:
                    code = GRPC_CODE[error.kind]
                    seconds = time.perf_counter() - started
                    metrics.request_duration_seconds.labels("grpc", method, code.name).observe(seconds)
            try:
                return await inner(deserializer(raw) if deserializer is not None else raw, context)
            finally:
                limit.release(lane, time.perf_counter() - started)

        wrapped: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(
            limited, response_serializer=handler.response_serializer
        )
        return wrapped


def _refusing(error: LedgerError, method: str, started: float) -> grpc.RpcMethodHandler[Any, Any]:
    """A unary handler that answers `error` without decoding the request (no deserializer: raw bytes)."""
    assert error.kind in (ErrorKind.EXHAUSTED, ErrorKind.DEADLINE), error.kind
    assert method
    code = GRPC_CODE[error.kind]

    async def refuse(_raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            await abort(context, error)
        finally:
            metrics.request_duration_seconds.labels("grpc", method, code.name).observe(time.perf_counter() - started)

    handler: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(refuse)
    return handler
