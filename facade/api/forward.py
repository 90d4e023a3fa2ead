"""A front process's side of the relay (facade.fronts): the link to the engine's process and the gRPC
handlers that forward each call over it instead of running an operation.

The handlers sit behind the same edge as the single-process service's servicers (facade.api.edge:
observability, authentication, the request guard), so a front decides the principal and refuses an
unauthenticated caller before anything is forwarded; each call then becomes one CALL frame (method,
principal, the caller's deadline, request and correlation ids, the RPC span's trace context when tracing
is configured, the request's raw bytes). The engine's
process answers with the response's bytes or the LedgerError, which the guard turns into the same rich
status the single-process service gives (facade.api.errors).

A single write (PostTransaction) the engine's door refused a moment ago is refused here: facade.api.relay
sends its admission state (a STATE frame) with each such refusal; bulk submissions are left to the door.
Until the state expires (the engine's retry hint, at most facade.api._frames.REFUSING_SECONDS_MAX) the
front answers that method with the engine's own refusal (RESOURCE_EXHAUSTED, its reason and retry hint)
before forwarding it or decoding its request, after authentication (the edge runs first), counted in the
front's request metrics like any answer. While it refuses a method it keeps one PROBE for it in flight,
so it hears that the engine has room (ROOM) about one relay round trip after the engine does, without
making a caller wait for the answer. Stale state can only refuse, never admit: every forwarded write is
still checked in the engine's process.

Frames are buffered and written once per event-loop turn; answers are read in bulk. A front bounds its
forwarded calls (FORWARDED_IN_FLIGHT_MAX): beyond it a call is refused with RESOURCE_EXHAUSTED and a
retry hint. With no connection to the engine's process a call is answered UNAVAILABLE ENGINE_UNREACHABLE
at once; a connection lost mid-call answers its calls the same way (their outcome is unknown: a retry
with the same idempotency key returns it).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc

from facade.api import _frames
from facade.api._frames import AdmissionState, FrameError, FrameKind, FrameReader, Reply, TurnWriter
from facade.api.gen.ledger.v1 import history_pb2, ledger_pb2
from facade.api.servicer import STREAM_IN_FLIGHT_MAX
from facade.auth import Principal, current_principal
from facade.domain.errors import ErrorKind, LedgerError
from facade.observability.logs import get_logger, request_ids
from facade.observability.tracing import span_traceparent, tracing_configured
from facade.operations import convert

__all__ = ["FORWARDED_IN_FLIGHT_MAX", "REASON_ENGINE_UNREACHABLE", "EngineLink", "forwarding_handlers"]

FORWARDED_IN_FLIGHT_MAX = 4096
"""Calls one front has forwarded and not yet had answered. The engine's write limit and queue bound the
writes long before this (hundreds in progress); this bounds what a front holds for reads and streams."""
BUSY_RETRY_AFTER_MS = 50
"""The retry hint of a call refused at a front's own bound (as api.retry_after_ms's default)."""
REASON_ENGINE_UNREACHABLE = "ENGINE_UNREACHABLE"

log = get_logger("ledger.front")
Context = grpc.aio.ServicerContext[Any, Any]


class _Refusing:
    """A method the engine's door refused: its refusal until when, and whether a PROBE is in flight."""

    __slots__ = ("error", "probing", "refusing_until")

    def __init__(self, state: AdmissionState) -> None:
        # Capped on this side too: a front never refuses for longer than the named bound from now.
        self.refusing_until = min(state.refusing_until, time.monotonic() + _frames.REFUSING_SECONDS_MAX)
        self.error = state.error
        self.probing = False


def _unreachable(why: str) -> LedgerError:
    return LedgerError(ErrorKind.UNAVAILABLE, REASON_ENGINE_UNREACHABLE, f"the engine's process is unreachable: {why}")


class EngineLink(asyncio.Protocol):
    """The front's one connection to the engine's process (a Unix socket)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop the connection runs on (held: on Python 3.11 asyncio.get_running_loop() is a getpid() syscall)."""
        self._reader = FrameReader()
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._ids = itertools.count(1)
        self._writer = TurnWriter()
        self._refusing: dict[int, _Refusing] = {}
        """Method index → the engine door's latest refusal of it (at most len(METHODS) entries)."""
        self.lost = asyncio.Event()
        """Set when the connection closes (the front then reconnects or exits: facade.fronts)."""

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def connect(self, path: str) -> None:
        await asyncio.get_running_loop().create_unix_connection(lambda: self, path)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # An asyncio.Transport, or uvloop's (facade.front_process runs on uvloop), which is not its subclass.
        assert callable(getattr(transport, "write", None))
        self._transport = self._writer.transport = cast(asyncio.Transport, transport)
        self._loop = self._writer.loop = asyncio.get_running_loop()
        self.lost.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.warning("relay connection failed", front=self.index, error=repr(exc))
        self._transport = self._writer.transport = None
        self._refusing.clear()  # Whatever engine's process answers next says for itself.
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(_unreachable("the connection closed before the answer (outcome unknown)"))
        self.lost.set()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._reader.feed(data)
        except FrameError as error:
            log.error("engine's process sent a broken frame; closing the connection", error=str(error))
            assert self._transport is not None
            self._transport.abort()
            return
        for frame in frames:
            if type(frame) is Reply:  # The common frame first.
                future = self._pending.pop(frame.call_id, None)
                if future is None or future.done():
                    continue  # Its caller went away (cancelled): nobody waits.
                if frame.error is not None:
                    future.set_exception(frame.error)
                else:
                    future.set_result(frame.body)
                continue
            if isinstance(frame, AdmissionState):  # The door refuses (a call's or a PROBE's answer).
                self._refusing[frame.method] = _Refusing(frame)
                assert len(self._refusing) <= len(_frames.METHODS)
                continue
            if isinstance(frame, tuple) and frame[0] == FrameKind.ROOM:  # A PROBE's answer: forward again.
                self._refusing.pop(frame[1], None)

    def refusal(self, method: int) -> LedgerError | None:
        """The engine door's refusal of `method` while it holds (a fresh copy: a raised exception
        collects a traceback), else None: the call is forwarded. A refusal here sends a PROBE unless one
        is in flight (at most one per method: its answer replaces or ends this state)."""
        refusing = self._refusing.get(method)
        if refusing is None:
            return None
        if time.monotonic() >= refusing.refusing_until:
            del self._refusing[method]
            return None
        if not refusing.probing and self.connected:
            refusing.probing = True
            self.send(_frames.encode_index(FrameKind.PROBE, method))
        error = refusing.error
        assert error.kind == ErrorKind.EXHAUSTED
        return LedgerError(error.kind, error.reason, error.message, error.metadata)

    def send(self, frame: bytes) -> None:
        """`frame` goes out with every other frame of this event-loop turn, in one write."""
        self._writer.send(frame)

    async def call(self, method: int, principal: Principal, remaining_seconds: float | None, body: bytes) -> bytes:
        """The response's bytes; raises the engine's LedgerError, or UNAVAILABLE / RESOURCE_EXHAUSTED here."""
        loop = self._loop
        if not self.connected or loop is None:
            raise _unreachable("not connected")
        if len(self._pending) >= FORWARDED_IN_FLIGHT_MAX:
            raise LedgerError(
                ErrorKind.EXHAUSTED,
                "TOO_MANY_REQUESTS",
                f"service busy: {len(self._pending)} calls in progress at this front",
                {"retry_after_ms": str(BUSY_RETRY_AFTER_MS)},
            )
        call_id = next(self._ids) & 0xFFFFFFFF
        # An absolute time.monotonic() deadline: the frame's transit counts against it (facade.api._frames.Call).
        deadline = None if remaining_seconds is None else time.monotonic() + remaining_seconds
        request_id, correlation_id = request_ids()
        # The RPC span's context crosses the relay only while tracing is on (the edge made a span):
        # off, the frame carries two empty strings and this call costs one flag check more.
        traceparent, tracestate = span_traceparent() if tracing_configured() else ("", "")
        frame = _frames.encode_call(
            call_id,
            method,
            deadline=deadline,
            principal=principal,
            request_id=request_id,
            correlation_id=correlation_id,
            body=body,
            traceparent=traceparent,
            tracestate=tracestate,
        )
        future: asyncio.Future[bytes] = loop.create_future()
        self._pending[call_id] = future
        self.send(frame)
        try:
            return await future
        except asyncio.CancelledError:
            if self._pending.pop(call_id, None) is not None and self.connected:
                self.send(_frames.encode_index(FrameKind.CANCEL, call_id))  # Its queued work is dropped.
            raise
        finally:
            assert len(self._pending) <= FORWARDED_IN_FLIGHT_MAX


def _unary(link: EngineLink, method: str) -> grpc.RpcMethodHandler[Any, Any]:
    index = _frames.method_index(method)

    async def forward(raw: bytes, context: Context) -> bytes:
        refusal = link.refusal(index)  # After authentication (the edge), before forwarding or decoding.
        if refusal is not None:
            raise refusal
        return await link.call(index, current_principal.get(), context.time_remaining(), raw)

    # No (de)serializers: the request's bytes go as they came, the answer's bytes come back as they are.
    handler: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(forward)
    return handler


def _checked(raw: bytes) -> bytes:
    """A stream's request decoded only to be checked (the request guard stops the stream at a malformed
    one, before anything after it is forwarded, as the single-process servicer stops reading), then
    forwarded as it came."""
    ledger_pb2.PostTransactionRequest.FromString(raw)
    return raw


def _stream(link: EngineLink) -> grpc.RpcMethodHandler[Any, Any]:
    index = _frames.method_index(_frames.STREAM_ITEM)

    async def stream(requests: AsyncIterator[bytes], _context: Context) -> AsyncIterator[bytes]:
        """Reads ahead (bounded, as facade.api.servicer) and answers in order."""
        principal = current_principal.get()
        pending: asyncio.Queue[asyncio.Task[bytes] | None] = asyncio.Queue(STREAM_IN_FLIGHT_MAX)

        async def read() -> None:
            try:
                async for raw in requests:
                    await pending.put(asyncio.create_task(link.call(index, principal, None, raw)))
            finally:
                await pending.put(None)

        reader = asyncio.create_task(read())
        try:
            while (task := await pending.get()) is not None:
                try:
                    yield await task
                except LedgerError as error:
                    # A refusal here (the relay connection lost: UNAVAILABLE ENGINE_UNREACHABLE, the item's
                    # outcome unknown; this front's bound: RESOURCE_EXHAUSTED) answers that item, as the
                    # single process answers an item the engine refused, and the stream goes on: the items
                    # after it are forwarded once the front has reconnected (a retry of this one with its
                    # idempotency key returns its outcome).
                    yield convert.item_result(error).SerializeToString()
        finally:
            reader.cancel()

    handler: grpc.RpcMethodHandler[Any, Any] = grpc.stream_stream_rpc_method_handler(stream, _checked)
    return handler


def forwarding_handlers(link: EngineLink, *, history: bool) -> list[grpc.GenericRpcHandler]:
    """ledger.v1.Ledger (and ledger.v1.History when the engine's process serves it) as forwarders."""
    services = [ledger_pb2.DESCRIPTOR.services_by_name["Ledger"]]
    if history:
        services.append(history_pb2.DESCRIPTOR.services_by_name["History"])
    handlers: list[grpc.GenericRpcHandler] = []
    for descriptor in services:
        methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for method in descriptor.methods:
            full = f"/{descriptor.full_name}/{method.name}"
            if method.client_streaming and method.server_streaming and full == "/ledger.v1.Ledger/StreamTransactions":
                methods[method.name] = _stream(link)
            elif not method.client_streaming and not method.server_streaming:
                methods[method.name] = _unary(link, full)
        assert methods
        handlers.append(grpc.method_handlers_generic_handler(descriptor.full_name, methods))
    return handlers
