"""Clean statuses for whatever a caller sends: the innermost server interceptor.

grpc.aio decodes a request with the handler's deserializer before any servicer code runs; when that
raises (bytes that are not the message, invalid UTF-8 in a string field) grpc answers UNKNOWN with the
Python exception's text. So the deserializer is wrapped: a request that does not decode becomes a
`Malformed` marker, and the handler answers INVALID_ARGUMENT with reason MALFORMED_REQUEST (a stream
stops reading at the first one, answers what it read, then fails the same way). A LedgerError a
servicer raises becomes its status here (facade.api.errors: code, ErrorInfo, RetryInfo), the one place
that does so; any other exception becomes INTERNAL (UNAVAILABLE for an engine that cannot serve) with an error id,
through facade.api.errors.unexpected_error, never its text.

Innermost (last in the server's interceptor list), so authentication still runs first: an
unauthenticated caller learns nothing about how its bytes decode.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from facade.api.errors import REASON_MALFORMED_REQUEST, abort, unexpected_error
from facade.domain.errors import ErrorKind, LedgerError

__all__ = ["Malformed", "RequestGuardInterceptor", "guarded_deserializer", "malformed_error", "method_what"]

Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True, slots=True)
class Malformed:
    """A request body that did not decode as the method's message (`what` names the message type)."""

    what: str


def guarded_deserializer(deserializer: Callable[[bytes], Any] | None, what: str) -> Callable[[bytes], Any]:
    """`deserializer` that returns a Malformed marker instead of raising."""
    assert what

    def deserialize(raw: bytes) -> Any:
        if deserializer is None:
            return raw
        try:
            return deserializer(raw)
        except Exception:  # DecodeError, or any failure inside a generated parser: the bytes are bad.
            return Malformed(what)

    return deserialize


def malformed_error(malformed: Malformed) -> LedgerError:
    """The answer to a request that does not decode (here, and in the engine's process behind fronts)."""
    message = f"the request is not a valid {malformed.what} (undecodable protobuf or invalid UTF-8 in a string field)"
    return LedgerError(ErrorKind.INVALID, REASON_MALFORMED_REQUEST, message, {"message_type": malformed.what})


def method_what(method: str) -> str:
    """What a malformed request of `method` is said not to be."""
    return method.strip("/").replace("/", ".") + " request"


async def _abort_malformed(context: Context, malformed: Malformed) -> None:
    await abort(context, malformed_error(malformed))


async def _abort_unexpected(context: Context, error: Exception, method: str) -> None:
    """`error` as the caller's status: a LedgerError as itself, anything else as unexpected_error."""
    if isinstance(error, LedgerError):
        await abort(context, error)
    await abort(context, unexpected_error(error, edge="grpc", operation=method.rsplit("/", 1)[-1]))


def _guard_unary(inner: Any, method: str) -> Callable[[Any, Context], Awaitable[Any]]:
    async def unary(request: Any, context: Context) -> Any:
        if isinstance(request, Malformed):
            await _abort_malformed(context, request)
        try:
            return await inner(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort_unexpected(context, error, method)

    return unary


def _guard_stream(inner: Any, method: str, *, streaming_request: bool) -> Callable[[Any, Context], AsyncIterator[Any]]:
    async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
        malformed: list[Malformed] = []

        async def well_formed(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for item in requests:
                if isinstance(item, Malformed):
                    malformed.append(item)
                    return
                yield item

        if not streaming_request and isinstance(request, Malformed):
            await _abort_malformed(context, request)
        try:
            answers = inner(well_formed(request) if streaming_request else request, context)
            if inspect.isawaitable(answers):  # A handler that answers with context.write() (health's Watch).
                await answers
            else:
                async for response in answers:
                    yield response
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort_unexpected(context, error, method)
        if malformed:
            await _abort_malformed(context, malformed[0])

    return stream


GUARDED_HANDLERS_MAX = 256
"""Guarded handlers kept (one per served method; the services have a few dozen methods)."""


class RequestGuardInterceptor(grpc.aio.ServerInterceptor):
    """Guards each method's handler once: the wrapper holds nothing of a call, and building it (two
    closures, a handler) on every call cost as much as the check itself."""

    def __init__(self) -> None:
        self._guarded: dict[str, tuple[Any, Any]] = {}  # Method → (the handler found, its guarded wrapper).

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._guarded.get(method)
        if cached is not None and cached[0] is handler:  # The same handler object: the same wrapper fits.
            return cached[1]
        guarded = _guarded_handler(handler, method)
        if len(self._guarded) >= GUARDED_HANDLERS_MAX:
            self._guarded.clear()  # Never reached by the services' own methods; a bound all the same.
        self._guarded[method] = (handler, guarded)
        assert len(self._guarded) <= GUARDED_HANDLERS_MAX
        return guarded


def _guarded_handler(handler: Any, method: str) -> Any:
    """`handler` with its deserializer and body guarded (see the module docstring)."""
    assert handler is not None
    assert method
    what = method_what(method)
    # No deserializer (a front's forwarding handlers take the raw bytes): nothing to decode, nothing to guard.
    deserializer = None
    if handler.request_deserializer is not None:
        deserializer = guarded_deserializer(handler.request_deserializer, what)
    serializer = handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_guard_unary(handler.unary_unary, method), deserializer, serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            _guard_stream(handler.unary_stream, method, streaming_request=False), deserializer, serializer
        )
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(
            _guard_stream(handler.stream_stream, method, streaming_request=True), deserializer, serializer
        )
    inner: Any = handler.stream_unary

    async def stream_unary(requests: AsyncIterator[Any], context: Context) -> Any:
        malformed: list[Malformed] = []

        async def well_formed() -> AsyncIterator[Any]:
            async for item in requests:
                if isinstance(item, Malformed):
                    malformed.append(item)
                    return
                yield item

        try:
            response = await inner(well_formed(), context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort_unexpected(context, error, method)
        if malformed:
            await _abort_malformed(context, malformed[0])
        return response

    return grpc.stream_unary_rpc_method_handler(stream_unary, deserializer, serializer)
