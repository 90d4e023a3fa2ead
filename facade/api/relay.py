"""The engine's process side of the front processes (facade.fronts): a Unix socket server that runs each
forwarded call through the same servicer (facade.api.servicer, facade.api.history) and so the same
operation (facade.operations) a gRPC call of the single-process service runs. Nothing about an RPC is
written here a second time: the servicer method is looked up by name and given the caller (decided and
authenticated in the front) and a context whose only use, time_remaining(), is the caller's deadline.

Admission stays before decoding, as facade.api.admission does at the gRPC door: a write method is
checked against the write queue and the write limit on the raw frame, and a refusal (RESOURCE_EXHAUSTED
with its retry hint) costs no decoding and no task. An admitted write holds its write-limit count while
it runs, measured from the frame's arrival.

With api.front_refusals (off by default: see its description), a refusal of a single write (the
interactive lane: PostTransaction) at this door also goes to the front as a STATE frame (in the same
write as the ERROR): for a while (the retry hint, at most facade.api._frames.REFUSING_SECONDS_MAX) the
front answers that method with the same refusal itself, before forwarding (facade.api.forward), so
refused callers neither cross the relay nor wait for this process's event loop. Meanwhile the front
keeps one PROBE in flight for the method, which this door answers at once (STATE: still refusing, with a
fresh hint; ROOM: it would take the write now, and the front forwards again), so a front stops refusing
about one relay round trip after this process has room, not a fixed time later. A PROBE runs the same
door check as a call (a refusal of it is counted as one; the refused callers behind it are not counted
here). The front's view can only add refusals while this
door was refusing; every write that is forwarded is still checked here.

Bulk submissions (PostTransactions) are refused by this door only: they arrive a few a second, so a held
refusal turned away the next one although the lane had freed meanwhile (bench_overload: ~20 % fewer
batches admitted, ~15 % fewer transactions/s), and a PROBE refused on the bulk lane counts as a bulk
refusal (facade.write_limit), which keeps the lane's cut-back on.

Replies are buffered and written once per event-loop turn (one write for every answer ready in that
turn); calls are read in bulk (facade.api._frames.FrameReader). A CANCEL (the caller went away in the
front) cancels the call's task, so queued work whose caller gave up is dropped as before.

Traces: a CALL frame carries the front's RPC span's W3C trace context when the front traces (tracing
configured from the same settings as this process); the call runs with that span as its current one, so
the group commit's engine.batch span is a child of the caller's trace and links it, as in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from google.protobuf import symbol_database
from opentelemetry import context as otel_context

from facade.api import _frames
from facade.api._frames import Call, FrameError, FrameKind, FrameReader, TurnWriter
from facade.api.admission import ADMITTED_METHODS
from facade.api.gen.ledger.v1 import history_pb2 as hpb
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.guard import Malformed, malformed_error, method_what
from facade.api.history import HistoryServicer
from facade.api.servicer import LedgerServicer
from facade.auth import current_principal
from facade.batcher import INTERACTIVE_TRANSFERS_MAX
from facade.domain.errors import ErrorKind, LedgerError
from facade.observability import metrics
from facade.observability.forwarded import DeltaError, decode_delta
from facade.observability.logs import bind_request, get_logger
from facade.observability.tracing import traceparent_context
from facade.operations import ledger as ops
from facade.operations.unexpected import unexpected_error
from facade.service import LedgerService
from facade.write_limit import Lane, too_busy

__all__ = ["CALLS_IN_FLIGHT_MAX", "RelayServer"]

CALLS_IN_FLIGHT_MAX = 65_536
"""Calls one front connection may have running here; the fronts bound themselves far lower
(facade.fronts.FORWARDED_IN_FLIGHT_MAX), so more is a broken front: its connection is closed."""

log = get_logger("ledger.relay")

Handler = Callable[[Any, Any], Awaitable[Any]]


class _Remaining:
    """The part of grpc's ServicerContext the servicers use: the time left before the caller's deadline."""

    __slots__ = ("_deadline",)

    def __init__(self, deadline: float | None) -> None:
        self._deadline = deadline

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()


@dataclass(frozen=True, slots=True)
class _Route:
    """What the relay needs of a forwarded method, worked out once (not per call)."""

    message: Any
    """The request's message class."""
    handler: Handler | None
    """The servicer's method; None for a StreamTransactions item (facade.operations.ledger.stream_item)."""
    method: str
    index: int
    """The method's index in facade.api._frames.METHODS (a STATE frame names it)."""
    short: str
    """The method's name in logs (as facade.api.observe's)."""
    lane: Lane | None
    """The write limit's lane of an admitted write (facade.api.admission); None when not admitted."""
    transfers: int


def _route(method: str, message: Any, handler: Handler | None) -> _Route:
    transfers = ADMITTED_METHODS.get(method, 0)
    lane = None if not transfers else Lane.INTERACTIVE if transfers <= INTERACTIVE_TRANSFERS_MAX else Lane.BULK
    short = method.rsplit("/", 1)[-1].split("#", 1)[0]
    return _Route(message, handler, method, _frames.method_index(method), short, lane, transfers)


def _routes(ledger: LedgerServicer, history: HistoryServicer | None) -> dict[str, _Route]:
    """Forwarded method → its route, from the descriptors."""
    services: list[tuple[Any, Any]] = [(ledger, pb.DESCRIPTOR.services_by_name["Ledger"])]
    if history is not None:
        services.append((history, hpb.DESCRIPTOR.services_by_name["History"]))
    routes = {_frames.STREAM_ITEM: _route(_frames.STREAM_ITEM, pb.PostTransactionRequest, None)}
    for servicer, descriptor in services:
        for method in descriptor.methods:
            if method.client_streaming or method.server_streaming:
                continue  # StreamTransactions is forwarded item by item (_frames.STREAM_ITEM).
            message = symbol_database.Default().GetSymbol(method.input_type.full_name)
            full = f"/{descriptor.full_name}/{method.name}"
            routes[full] = _route(full, message, getattr(servicer, method.name))
    assert len(routes) > 1
    assert routes[_frames.STREAM_ITEM].lane is None  # Its items are not admitted (as the single process's).
    return routes


class RelayServer:
    """Serves the fronts' connections on a Unix socket (the caller makes its directory private)."""

    def __init__(self, service: LedgerService, ledger: LedgerServicer, history: HistoryServicer | None) -> None:
        self._service = service
        self._routes = _routes(ledger, history)
        self._server: asyncio.AbstractServer | None = None
        self.serving: set[int] = set()
        """The fronts (by index) whose gRPC servers serve and whose connection is open."""
        self.hellos: dict[int, int] = {}
        """How many times each front said it serves (its supervisor tells a start that served from one that did not)."""
        self._connections: set[_Connection] = set()
        self.calls_total = 0
        """Calls received from the fronts (refused ones included)."""
        self.front_settings = b""
        """The fronts' settings (JSON, secrets included), sent to a front that asks (facade.fronts): never
        written to disk. Empty: none to give (the asking connection is closed)."""
        self.front_refusals = service.settings.front_refusals
        """Whether a refusal of a single write goes to its front as a STATE frame (api.front_refusals)."""
        self.probes_total = 0
        """PROBEs received from the fronts (each for a write method a front refuses on this door's behalf)."""
        self.stopping = False
        """Set by the fronts' supervisor before it stops them: their disconnects are then expected (logged at
        INFO, not as a warning an operator should look into)."""

    async def start(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Connection(self), path)

    async def close(self) -> None:
        """No new connections, and the open ones closed (their calls in progress are cancelled: the fronts
        answer them UNAVAILABLE ENGINE_UNREACHABLE, outcome unknown, and reconnect)."""
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def route(self, method: str) -> _Route | None:
        return self._routes.get(method)

    def refusal(self, route: _Route) -> LedgerError | None:
        """Admission on the raw frame, as facade.api.admission at the gRPC door (before decoding)."""
        if route.lane is None:
            return None
        limit = self._service.write_limit
        try:
            self._service.admit(route.transfers)
        except LedgerError as error:
            return error
        if not limit.has_room(route.lane):
            return too_busy(route.lane, limit.in_flight[route.lane], self._service.committer.retry_after_seconds())
        return None

    async def run(self, call: Call, route: _Route, arrived: float) -> bytes:
        """The call's response bytes, or raises its LedgerError (anything else becomes unexpected_error).
        One coroutine for the whole call (its task's only frame but the servicer's): admitted writes hold
        their write-limit count while they run, measured from the frame's arrival."""
        current_principal.set(call.principal)
        bind_request(call.request_id, call.correlation_id, route.short)
        if call.traceparent:
            # The front's RPC span is the current span here (the call's own task: its context ends with
            # it), so the engine's spans join the caller's trace: engine.batch is its child and links it
            # (facade.batcher takes trace.get_current_span() at submission). Tracing off: nothing to do.
            otel_context.attach(traceparent_context(call.traceparent, call.tracestate))
        lane = route.lane
        limit = self._service.write_limit
        if lane is not None and not limit.acquire(lane):
            raise too_busy(lane, limit.in_flight[lane], self._service.committer.retry_after_seconds())
        try:
            request = _decoded(route, call.body)
            if route.handler is None:
                response = await ops.stream_item(self._service, call.principal, request)
            else:
                response = await route.handler(request, _Remaining(call.deadline))
            return bytes(response.SerializeToString())
        except LedgerError:
            raise
        except Exception as error:
            raise unexpected_error(error, edge="grpc", operation=route.short) from error
        finally:
            if lane is not None:
                limit.release(lane, time.monotonic() - arrived)


def _refusing_until(refusal: LedgerError) -> float:
    """Until when a front may give `refusal` itself: the retry hint (this door would refuse a caller that
    honours it sooner anyway), at most REFUSING_SECONDS_MAX, so a front soon forwards again."""
    assert refusal.kind == ErrorKind.EXHAUSTED
    hint = refusal.metadata.get("retry_after_ms", "")
    seconds = _frames.REFUSING_SECONDS_MAX
    if hint.isdigit():
        seconds = min(seconds, int(hint) / 1000)
    until = time.monotonic() + seconds
    assert math.isfinite(until)
    return until


def _decoded(route: _Route, body: bytes) -> Any:
    try:
        return route.message.FromString(body)
    except Exception as error:  # DecodeError, or any failure inside a generated parser: the bytes are bad.
        method = "/ledger.v1.Ledger/StreamTransactions" if route.handler is None else route.method
        raise malformed_error(Malformed(method_what(method))) from error


class _Connection(asyncio.Protocol):
    """One front's connection: calls in, answers out (buffered per event-loop turn)."""

    def __init__(self, relay: RelayServer) -> None:
        self._relay = relay
        self._reader = FrameReader()
        self._transport: asyncio.Transport | None = None
        self._writer = TurnWriter()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._front: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # An asyncio.Transport, or uvloop's (api.event_loop), which is not its subclass.
        assert callable(getattr(transport, "write", None))
        self._transport = self._writer.transport = cast(asyncio.Transport, transport)
        self._relay._connections.add(self)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._relay._connections.discard(self)
        for task in self._tasks.values():
            task.cancel()  # The front is gone and so are its callers: their queued work is dropped.
        self._tasks.clear()
        if self._front is not None:
            self._relay.serving.discard(self._front)
            report = log.info if self._relay.stopping else log.warning
            report("front disconnected", front=self._front, error=repr(exc) if exc else None)
        self._transport = self._writer.transport = None

    def data_received(self, data: bytes) -> None:
        arrived = time.monotonic()
        try:
            frames = self._reader.feed(data)
        except FrameError as error:
            log.error("front sent a broken frame; closing its connection", error=str(error))
            assert self._transport is not None
            self._transport.abort()
            return
        for frame in frames:
            if isinstance(frame, Call):
                self._call(frame, arrived)
            elif isinstance(frame, tuple):
                kind, index, body = frame
                if kind == FrameKind.CANCEL:
                    task = self._tasks.get(index)
                    if task is not None:
                        task.cancel()
                elif kind == FrameKind.HELLO:
                    self._front = index
                    self._relay.serving.add(index)
                    self._relay.hellos[index] = self._relay.hellos.get(index, 0) + 1
                    log.info("front serving", front=index)
                elif kind == FrameKind.METRICS:
                    self._metrics(index, body)
                elif kind == FrameKind.PROBE:
                    self._probe(index)
                elif kind == FrameKind.SETTINGS:
                    self._settings(index)

    def _metrics(self, front: int, body: bytes) -> None:
        """A front's request histogram gain, added to this process's /metrics (facade.observability.forwarded)."""
        exported = metrics.request_durations_exported
        try:
            gained = decode_delta(body, labels_count=exported.labels_count, buckets_count=exported.buckets_count)
        except DeltaError as error:
            log.error("front sent a broken metrics report; dropped", front=front, error=str(error))
            return
        if not exported.add(gained):
            log.error("front metrics beyond their series bound; report dropped", front=front)

    def _settings(self, front: int) -> None:
        """A starting front's settings. Anyone who can connect could ask: the socket is this user's only
        (a private directory, mode 0600), as the settings file it replaces was."""
        settings = self._relay.front_settings
        if not settings:
            log.error("a front asked for settings there are none of; closing its connection", front=front)
            assert self._transport is not None
            self._transport.abort()
            return
        assert len(settings) < _frames.FRAME_BYTES_MAX
        self._send(_frames.encode_index(FrameKind.SETTINGS, front, settings))

    def _probe(self, method: int) -> None:
        """The door's answer for `method` now: STATE (refused) or ROOM."""
        self._relay.probes_total += 1
        route = self._relay.route(_frames.METHODS[method]) if method < len(_frames.METHODS) else None
        refusal = None if route is None else self._relay.refusal(route)
        if refusal is None:
            self._send(_frames.encode_index(FrameKind.ROOM, method))
        else:
            self._send(_frames.encode_state(method, refusing_until=_refusing_until(refusal), error=refusal))

    def _call(self, call: Call, arrived: float) -> None:
        self._relay.calls_total += 1
        route = self._relay.route(call.method)
        if route is None:
            error = LedgerError(ErrorKind.INVALID, "UNIMPLEMENTED", f"{call.method} is not served here")
            self._send(_frames.encode_error(call.call_id, error))
            return
        refusal = self._relay.refusal(route)
        if refusal is not None:  # Before decoding and without a task: a refusal stays cheap.
            if route.lane is Lane.INTERACTIVE and self._relay.front_refusals:  # Not bulk: see the docstring.
                self._send(_frames.encode_state(route.index, refusing_until=_refusing_until(refusal), error=refusal))
            self._send(_frames.encode_error(call.call_id, refusal))
            return
        if len(self._tasks) >= CALLS_IN_FLIGHT_MAX or call.call_id in self._tasks:
            log.error("front broke the relay's call bounds; closing its connection", front=self._front)
            assert self._transport is not None
            self._transport.abort()
            return
        task = asyncio.get_running_loop().create_task(self._answer(call, route, arrived))
        self._tasks[call.call_id] = task

    async def _answer(self, call: Call, route: _Route, arrived: float) -> None:
        try:
            body = await self._relay.run(call, route, arrived)
        except LedgerError as error:
            self._send(_frames.encode_error(call.call_id, error))
        except asyncio.CancelledError:
            pass  # Cancelled by the front (CANCEL) or its disconnection: no one waits for an answer.
        else:
            self._send(_frames.encode_reply(call.call_id, body))
        finally:
            self._tasks.pop(call.call_id, None)

    def _send(self, frame: bytes) -> None:
        """Every answer of this event-loop turn goes out in one write."""
        self._writer.send(frame)
