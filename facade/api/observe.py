"""Per-RPC observability: a span (continuing the caller's trace), a JSON log line, a latency sample.

Cheap on purpose (it runs on every RPC): request ids are a per-process random prefix plus a counter
(unique without a syscall per call), and the caller's trace context is only parsed when the call
carries one. The log line is sampled (`RpcLogSampling`): rendering and writing one JSON line costs
about as much as a third of a small write's whole server time, so a failed or slow call always gets
its INFO line, and of the rest one in N does (the others log at DEBUG, a no-op at INFO). The latency
histogram still counts every call.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry import context as otel_context

from facade.observability import metrics, tracing
from facade.observability.logs import bind_request, clear_request, get_logger
from facade.observability.tracing import extract_metadata, tracer

log = get_logger("ledger.rpc")
_REQUEST_ID_PREFIX = os.urandom(8).hex()
_request_numbers = itertools.count(1)
_TRACE_KEYS = frozenset({"traceparent", "tracestate", "baggage"})


@dataclass(slots=True)
class RpcLogSampling:
    """Which calls get their INFO log line: every failed or slow one, and one in `every` of the rest."""

    every: int = 1
    slow_seconds: float = 0.0
    _calls: Iterator[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        assert self.every >= 1
        assert self.slow_seconds >= 0

    def at_info(self, code: str, elapsed_seconds: float) -> bool:
        # The counter advances on every call, so 1 in `every` of the quick successes is logged
        # (the first one included: a fresh service shows its first call).
        sampled = next(self._calls) % self.every == 0
        return sampled or code != "OK" or elapsed_seconds >= self.slow_seconds


def _metadata(details: grpc.HandlerCallDetails) -> list[tuple[str, Any]]:
    return list(details.invocation_metadata or ())


def _value(pairs: list[tuple[str, Any]], key: str) -> str:
    for item_key, value in pairs:
        if item_key == key:
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


@contextlib.contextmanager
def _observed(  # noqa: PLR0913  Private; keyword-only: the call's identity, read once per call by the interceptor.
    context: Any, sampling: RpcLogSampling, *, parent: Any, request_id: str, correlation_id: str, method: str
) -> Iterator[None]:
    short = method.rsplit("/", 1)[-1]
    token = otel_context.attach(parent)
    bind_request(request_id, correlation_id, short)
    started = time.perf_counter()
    code = "OK"
    try:
        with tracer().start_as_current_span(f"rpc {method}") as span:
            span.set_attribute("rpc.method", short)
            try:
                yield
            except asyncio.CancelledError:
                code = "CANCELLED"  # The caller went away (or its deadline passed): no status was sent.
                raise
            except BaseException:
                code = _status_name(context)
                raise
            finally:
                span.set_attribute("rpc.grpc.status_code", code)
    finally:
        _finished(sampling, short, code, time.perf_counter() - started)
        otel_context.detach(token)


def _status_name(context: Any) -> str:
    """The status a call ended with, as the metrics and the log line name it."""
    status = context.code()
    return status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"


_DURATIONS_CACHED_MAX = 1024
"""Histogram children kept by (method, code): a few dozen methods times the status codes they end with."""
_durations: dict[tuple[str, str], Any] = {}


def _duration(short: str, code: str) -> Any:
    """The request histogram's child for a gRPC method and code, looked up once (labels() takes a lock and
    builds its key on every call). A child stays its parent's while the parent lives: no one removes them."""
    child = _durations.get((short, code))
    if child is None:
        if len(_durations) >= _DURATIONS_CACHED_MAX:
            _durations.clear()
        child = _durations[(short, code)] = metrics.request_duration_seconds.labels("grpc", short, code)
    assert len(_durations) <= _DURATIONS_CACHED_MAX
    return child


def _finished(sampling: RpcLogSampling, short: str, code: str, elapsed: float, *, unbind: bool = True) -> None:
    """A call's latency sample and (sampled) log line; its request fields unbound unless `unbind` is False
    (the caller bound them in the call's own task, whose context ends with it: facade.api.edge)."""
    _duration(short, code).observe(elapsed)
    if sampling.at_info(code, elapsed):
        log.info("rpc", code=code, duration_ms=round(elapsed * 1000, 3))
    else:
        log.debug("rpc", code=code, duration_ms=round(elapsed * 1000, 3))
    if unbind:
        clear_request()


def _tracing_configured() -> bool:
    """Whether a tracer provider was set (facade.observability.tracing.configure_tracing): until then
    OpenTelemetry hands out its proxy, whose spans record nothing. Asked per call: tests set one late."""
    return tracing.tracing_configured()


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, sampling: RpcLogSampling | None = None) -> None:
        self._sampling = sampling or RpcLogSampling()
        """Every call logged at INFO unless told otherwise (ledger serve samples: facade.app)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            # grpc answers UNIMPLEMENTED itself; count it under one label (method names are the caller's).
            metrics.request_duration_seconds.labels("grpc", "unmatched", "UNIMPLEMENTED").observe(0.0)
            return handler
        method = handler_call_details.method
        pairs = _metadata(handler_call_details)
        request_id = _value(pairs, "x-request-id") or f"{_REQUEST_ID_PREFIX}{next(_request_numbers):016x}"
        correlation_id = _value(pairs, "x-correlation-id")
        parent = extract_metadata(pairs) if any(key in _TRACE_KEYS for key, _ in pairs) else None
        sampling = self._sampling

        if handler.unary_unary:
            inner: Any = handler.unary_unary
            if parent is None and not _tracing_configured():
                # No trace to continue and none to record: the span and the context switch would be no-ops
                # that cost a tenth of a small write's loop time. The latency sample and log line stay.
                short = method.rsplit("/", 1)[-1]

                async def unary_untraced(request: Any, context: Any) -> Any:
                    bind_request(request_id, correlation_id, short)
                    started = time.perf_counter()
                    code = "OK"
                    try:
                        return await inner(request, context)
                    except asyncio.CancelledError:
                        code = "CANCELLED"
                        raise
                    except BaseException:
                        status = context.code()
                        code = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
                        raise
                    finally:
                        _finished(sampling, short, code, time.perf_counter() - started)

                return grpc.unary_unary_rpc_method_handler(
                    unary_untraced, handler.request_deserializer, handler.response_serializer
                )

            async def unary(request: Any, context: Any) -> Any:
                with _observed(
                    context,
                    sampling,
                    parent=parent or otel_context.Context(),
                    request_id=request_id,
                    correlation_id=correlation_id,
                    method=method,
                ):
                    return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
        if handler.stream_stream:
            inner_stream: Any = handler.stream_stream

            async def stream(requests: Any, context: Any) -> Any:
                with _observed(
                    context,
                    sampling,
                    parent=parent or otel_context.Context(),
                    request_id=request_id,
                    correlation_id=correlation_id,
                    method=method,
                ):
                    async for response in inner_stream(requests, context):
                        yield response

            return grpc.stream_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:  # Health's Watch: counted like the rest.
            inner_answers: Any = handler.unary_stream

            async def answers(request: Any, context: Any) -> Any:
                with _observed(
                    context,
                    sampling,
                    parent=parent or otel_context.Context(),
                    request_id=request_id,
                    correlation_id=correlation_id,
                    method=method,
                ):
                    found = inner_answers(request, context)
                    if inspect.isawaitable(found):  # It answers with context.write().
                        await found
                    else:
                        async for response in found:
                            yield response

            return grpc.unary_stream_rpc_method_handler(
                answers, handler.request_deserializer, handler.response_serializer
            )
        return handler
