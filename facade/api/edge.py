"""Observability, authentication and the request guard as one server interceptor (after admission).

The three stay separate interceptors (facade.api.observe, facade.api.auth_interceptor, facade.api.guard)
and keep their meaning; this one runs them with one interceptor level instead of three on the common
call, a unary-unary RPC whose caller asks for no trace while tracing is off (measured: each interceptor
level is a coroutine, a continuation and, for observability and auth, a new handler with closures built
per call, ~20 µs of a single-transaction RPC's ~450). For that call it reads the metadata once,
authenticates, binds the caller (`current_principal`) and the request's log fields in the call's own
context (grpc.aio runs the interceptors and the handler in the call's one task), and returns a handler
built once per method that times, guards and counts the call. Every other call (streams, traced calls,
refused credentials) goes through the three interceptors' own code, layered as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from facade.api.auth_interceptor import AuthInterceptor, _rejecting_handler
from facade.api.guard import Malformed, RequestGuardInterceptor, _abort_malformed, _abort_unexpected, _guarded_handler
from facade.api.observe import (
    _REQUEST_ID_PREFIX,
    _TRACE_KEYS,
    ObservabilityInterceptor,
    RpcLogSampling,
    _finished,
    _request_numbers,
    _status_name,
    _tracing_configured,
)
from facade.auth import (
    METHOD_SCOPES,
    OPEN_METHOD_PREFIXES,
    REFLECTION_PREFIX,
    SCOPE_ADMIN,
    SCOPE_READ,
    Authenticator,
    AuthError,
    current_principal,
)
from facade.observability import metrics
from facade.observability.logs import bind_request

__all__ = ["ROUTES_MAX", "EdgeInterceptor"]

Context = grpc.aio.ServicerContext[Any, Any]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Any]]
ROUTES_MAX = 256
"""Per-method handlers kept (one per served method; the services have a few dozen methods)."""


@dataclass(frozen=True, slots=True)
class _Route:
    """What one method's untraced unary calls share: built once, holds nothing of a call."""

    found: Any
    """The handler grpc found for the method (the wrappers below fit only that one)."""
    guarded: Any
    """`found` behind the request guard (facade.api.guard), as the layered interceptors would build it."""
    observed: Any
    """`guarded` timed and counted: the handler an authenticated, untraced call gets."""
    scope: str | None
    """The scope the method needs; None for open methods (health)."""


def _value(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _found(handler: Any) -> Continuation:
    async def continuation(_details: grpc.HandlerCallDetails) -> Any:
        return handler

    return continuation


class EdgeInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator, sampling: RpcLogSampling | None = None) -> None:
        self._authenticator = authenticator
        self._sampling = sampling or RpcLogSampling()
        self._observe = ObservabilityInterceptor(self._sampling)
        self._auth = AuthInterceptor(authenticator)
        self._guard = RequestGuardInterceptor()
        self._routes: dict[str, _Route] = {}

    async def intercept_service(self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            # grpc answers UNIMPLEMENTED itself; count it under one label (method names are the caller's).
            metrics.request_duration_seconds.labels("grpc", "unmatched", "UNIMPLEMENTED").observe(0.0)
            return handler
        if not handler.unary_unary:
            return await self._layered(handler, handler_call_details)
        # The first value of each key counts, as in the layered interceptors.
        authorization: str | None = None
        request_id: str | None = None
        correlation_id: str | None = None
        for key, raw in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                authorization = _value(raw) if authorization is None else authorization
            elif key == "x-request-id":
                request_id = _value(raw) if request_id is None else request_id
            elif key == "x-correlation-id":
                correlation_id = _value(raw) if correlation_id is None else correlation_id
            elif key in _TRACE_KEYS:
                return await self._layered(handler, handler_call_details)  # A trace to continue.
        if _tracing_configured():
            return await self._layered(handler, handler_call_details)
        method = handler_call_details.method
        route = self._routes.get(method)
        if route is None or route.found is not handler:
            route = self._route(method, handler)
        if route.scope is not None:
            try:
                # The common call: a token verified before (facade.auth's cache), no coroutine to run.
                principal = self._authenticator.cached(authorization)
                if principal is None:
                    principal = await self._authenticator.authenticate_async(authorization)
                self._authenticator.authorize(principal, route.scope)
            except AuthError as error:  # Answered and counted as the layered interceptors do.
                return await self._observe.intercept_service(
                    _found(_rejecting_handler(route.guarded, error)), handler_call_details
                )
            current_principal.set(principal)
        bind_request(
            request_id or f"{_REQUEST_ID_PREFIX}{next(_request_numbers):016x}",
            correlation_id or "",
            method.rsplit("/", 1)[-1],
        )
        return route.observed

    async def _layered(self, handler: Any, details: grpc.HandlerCallDetails) -> Any:
        """`handler` through observability, auth and the guard, outermost first, as three interceptors."""
        guarded = await self._guard.intercept_service(_found(handler), details)
        authenticated = await self._auth.intercept_service(_found(guarded), details)
        return await self._observe.intercept_service(_found(authenticated), details)

    def _route(self, method: str, handler: Any) -> _Route:
        assert handler.unary_unary
        assert method
        scope: str | None = None
        if not method.startswith(OPEN_METHOD_PREFIXES):
            scope = METHOD_SCOPES.get(method, SCOPE_READ if method.startswith(REFLECTION_PREFIX) else SCOPE_ADMIN)
        guarded = _guarded_handler(handler, method)
        observed = grpc.unary_unary_rpc_method_handler(
            _observed_unary(handler.unary_unary, method, self._sampling),
            guarded.request_deserializer,
            guarded.response_serializer,
        )
        route = _Route(handler, guarded, observed, scope)
        if len(self._routes) >= ROUTES_MAX:
            self._routes.clear()  # Never reached by the services' own methods; a bound all the same.
        self._routes[method] = route
        assert len(self._routes) <= ROUTES_MAX
        return route


def _observed_unary(inner: Any, method: str, sampling: RpcLogSampling) -> Callable[[Any, Context], Awaitable[Any]]:
    """The request guard (facade.api.guard) inside the untraced observation (facade.api.observe), in one
    coroutine: the same statuses, latency sample and log line as the two wrappers."""
    short = method.rsplit("/", 1)[-1]

    async def unary(request: Any, context: Context) -> Any:
        started = time.perf_counter()
        code = "OK"
        try:
            if isinstance(request, Malformed):
                await _abort_malformed(context, request)
            try:
                return await inner(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await _abort_unexpected(context, error, method)
        except asyncio.CancelledError:
            code = "CANCELLED"  # The caller went away (or its deadline passed): no status was sent.
            raise
        except BaseException:
            code = _status_name(context)
            raise
        finally:
            # No unbinding: the fields were bound in this call's task (intercept_service), which ends with it.
            _finished(sampling, short, code, time.perf_counter() - started, unbind=False)

    return unary
