"""The gRPC edge's authentication: every call's credentials checked (facade.auth.Authenticator) before
its handler runs, the caller handed to the servicer in `current_principal`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from facade.api.errors import abort
from facade.auth import (
    METHOD_SCOPES,
    OPEN_METHOD_PREFIXES,
    REFLECTION_PREFIX,
    SCOPE_ADMIN,
    SCOPE_READ,
    Authenticator,
    AuthError,
    Principal,
    current_principal,
)

__all__ = ["AuthInterceptor"]


def _metadata_value(metadata: Any, key: str) -> str | None:
    for item_key, value in metadata or ():
        if item_key == key:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call; the servicer reads the caller from `current_principal`."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        scope = METHOD_SCOPES.get(method, SCOPE_READ if method.startswith(REFLECTION_PREFIX) else SCOPE_ADMIN)
        try:
            principal = await self._authenticator.authenticate_async(
                _metadata_value(handler_call_details.invocation_metadata, "authorization")
            )
            self._authenticator.authorize(principal, scope)
        except AuthError as error:
            return _rejecting_handler(handler, error)
        return _with_principal(handler, principal)


# grpcio's stubs model method handlers as synchronous callables; under grpc.aio they are coroutines
# and async generators, so the wrappers below handle them as Any.


def _rejecting_handler(handler: Any, error: AuthError) -> Any:
    async def reject_unary(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort(context, error)

    async def reject_stream(_requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort(context, error)
        yield  # pragma: no cover - makes this an async generator

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            reject_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(
            reject_stream, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            reject_stream, handler.request_deserializer, handler.response_serializer
        )
    return grpc.stream_unary_rpc_method_handler(reject_unary, handler.request_deserializer, handler.response_serializer)


def _with_principal(handler: Any, principal: Principal) -> Any:
    if handler.unary_unary:
        inner_unary: Any = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            current_principal.set(principal)
            return await inner_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
    if handler.stream_stream:
        inner_stream: Any = handler.stream_stream

        async def stream(request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            current_principal.set(principal)
            async for response in inner_stream(request_iterator, context):
                yield response

        return grpc.stream_stream_rpc_method_handler(stream, handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream:
        inner_unary_stream: Any = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            current_principal.set(principal)
            async for response in inner_unary_stream(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    return handler
