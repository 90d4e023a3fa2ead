"""The frames between the front processes and the engine's process (facade.api.relay, facade.fronts).

A frame is a little-endian u32 length (of what follows) and a u8 kind, then a fixed struct header and
the bytes it counts. Request and response bodies are the protobuf bytes the caller sent and the
operation answered: the front neither decodes nor re-encodes a unary request, the engine's process
neither re-decodes nor re-encodes a response. Only struct and UTF-8 are parsed here, never pickle: a
peer that writes garbage gets its connection closed (FrameError), it cannot make this process run code.

    CALL    front → engine   call id, method index, the caller's deadline (NaN = none), the principal
                             (client id, scopes), request id, correlation id, the W3C trace context of the
                             front's RPC span (traceparent, tracestate: empty unless tracing is configured),
                             the request bytes
    CANCEL  front → engine   call id: the caller went away, drop its work (as a cancelled handler would)
    HELLO   front → engine   the front's index: its gRPC servers are serving
    METRICS front → engine   the front's index and its request histogram's gain (facade.observability.forwarded)
    SETTINGS front → engine  a front's index: its first frame, on a connection of its own, asking for its settings
             engine → front   the answer: the front's settings as JSON (secrets included: never on disk)
    PROBE   front → engine   a method index: would the engine's door take that write now? (answered by STATE
                             or ROOM; a front refusing a method on the engine's behalf keeps one in flight)
    REPLY   engine → front   call id and the response bytes
    ERROR   engine → front   call id and the LedgerError (kind, reason, message, metadata)
    STATE   engine → front   a write method's admission state: the method index, until when (time.monotonic())
                             the front may refuse it on the engine's behalf, and the refusal it gives (as
                             ERROR's): sent with every refusal of the engine's door (facade.api.relay)
    ROOM    engine → front   a method index: the engine's door would take that write now (a PROBE's answer)
"""

from __future__ import annotations

import asyncio
import enum
import math
import struct
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2

from facade.api.gen.ledger.v1 import history_pb2, ledger_pb2
from facade.auth import Principal
from facade.domain.errors import ErrorKind, LedgerError

__all__ = [
    "FRAME_BYTES_MAX",
    "METHODS",
    "REFUSING_SECONDS_MAX",
    "STREAM_ITEM",
    "AdmissionState",
    "Call",
    "FrameError",
    "FrameKind",
    "FrameReader",
    "Reply",
    "TurnWriter",
    "encode_call",
    "encode_error",
    "encode_index",
    "encode_reply",
    "encode_state",
    "method_index",
]

MESSAGE_BYTES_MAX = 16 * 1024 * 1024
"""As the gRPC servers' message limit (facade.app.MESSAGE_SIZE_MAX): a request that gRPC took fits a frame."""
FRAME_BYTES_MAX = MESSAGE_BYTES_MAX + 256 * 1024
"""A longer frame is a broken or hostile peer: the connection is closed (headers and strings fit the rest)."""
STRING_BYTES_MAX = 0xFFFF
"""A u16 length: longer request or correlation ids are cut (gRPC's metadata limit is 8 KiB anyway)."""
STREAM_ITEM = "/ledger.v1.Ledger/StreamTransactions#item"
"""One request of a StreamTransactions call, answered as a TransactionResult (facade.operations.ledger)."""
REFUSING_SECONDS_MAX = 0.1
"""The longest a front refuses a write method on the engine's behalf after the engine refused one (less
when the engine's retry hint is shorter, and until a PROBE's answer says otherwise): stale state can only
refuse while the engine was recently full, and after this the front forwards again whatever it heard."""
PRINCIPALS_CACHED_MAX = 4096
"""Principals kept, encoded for CALL frames (a front) or decoded from them (the engine's process): a front's
callers are few, one per client and scope set; when full a cache starts over."""


def _methods() -> tuple[str, ...]:
    names = [STREAM_ITEM]
    for module, service in ((ledger_pb2, "Ledger"), (history_pb2, "History")):
        descriptor = module.DESCRIPTOR.services_by_name[service]
        names.extend(f"/{descriptor.full_name}/{method.name}" for method in descriptor.methods)
    return tuple(sorted(names))


METHODS: tuple[str, ...] = _methods()
"""Every forwarded method by index (both sides run the same build: a front is spawned from this code)."""
assert len(METHODS) <= 0xFF
_METHOD_INDEX = {name: index for index, name in enumerate(METHODS)}
_ERROR_KINDS = tuple(ErrorKind)


class FrameKind(enum.IntEnum):
    CALL = 1
    CANCEL = 2
    HELLO = 3
    METRICS = 4
    REPLY = 5
    ERROR = 6
    STATE = 7
    PROBE = 8
    ROOM = 9
    SETTINGS = 10


class FrameError(Exception):
    """A frame that is not one: the peer is broken (or not ours); its connection is closed."""


_PREFIX = struct.Struct("<IB")  # Length (of what follows the u32), kind.
_CALL = struct.Struct("<IBdHHHHHH")  # Call id, method, deadline (time.monotonic()), 6 string lengths.
_INDEX = struct.Struct("<I")  # A call id (REPLY, CANCEL), a front's (HELLO, METRICS) or method's index (PROBE, ROOM).
_INDEXED = (
    FrameKind.CANCEL,
    FrameKind.HELLO,
    FrameKind.METRICS,
    FrameKind.PROBE,
    FrameKind.ROOM,
    FrameKind.SETTINGS,
)
_ERROR = struct.Struct("<IBHI")  # Call id, kind, reason length, message length (metadata to the end).
_STATE = struct.Struct("<BdBHI")  # Method, refusing until (time.monotonic()), then as _ERROR after its call id.


def method_index(method: str) -> int:
    """The index of `method` (a full gRPC method name or STREAM_ITEM); KeyError for one not forwarded."""
    return _METHOD_INDEX[method]


@dataclass(frozen=True, slots=True)
class Call:
    call_id: int
    method: str
    deadline: float | None
    """The caller's deadline as a time.monotonic() value: CLOCK_MONOTONIC, one clock for every process of
    the host (the relay is a Unix socket), so the time a frame spends in transit (a flush, the socket, a
    busy event loop before it is read) counts against it, as it does for the caller: a deadline sent as
    the time remaining and added on arrival would let the engine's process commit after the caller gave up."""
    principal: Principal
    request_id: str
    correlation_id: str
    body: bytes
    traceparent: str = ""
    """The W3C traceparent of the front's RPC span (facade.observability.tracing.span_traceparent); empty
    when the front traces nothing (tracing off: no per-call cost). The relay makes it the current context
    while the call runs, so the engine's spans (its batch's) join the caller's trace."""
    tracestate: str = ""
    """The W3C tracestate that goes with `traceparent` (usually empty)."""


@dataclass(frozen=True, slots=True)
class AdmissionState:
    """The engine's door refuses `method` (an index of METHODS) with `error` until `refusing_until`."""

    method: int
    refusing_until: float
    """A time.monotonic() value (one clock for the host's processes, as Call.deadline)."""
    error: LedgerError


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer: `body` (the response's bytes) or `error`."""

    call_id: int
    body: bytes = b""
    error: LedgerError | None = None


def _cut(text: str) -> bytes:
    return text.encode()[:STRING_BYTES_MAX]


_principals_encoded: dict[Principal, tuple[bytes, bytes]] = {}


def _principal_bytes(principal: Principal) -> tuple[bytes, bytes]:
    """A principal's client id and scopes as a CALL frame carries them, encoded once per distinct principal
    (a front's callers are few; not a sort, a join and two encodes per call). When full the cache starts over."""
    encoded = _principals_encoded.get(principal)
    if encoded is None:
        if len(_principals_encoded) >= PRINCIPALS_CACHED_MAX:
            _principals_encoded.clear()
        # Scopes have no spaces (facade.auth: a space-separated claim).
        encoded = _principals_encoded[principal] = (
            _cut(principal.client_id),
            _cut(" ".join(sorted(principal.scopes))),
        )
    assert len(_principals_encoded) <= PRINCIPALS_CACHED_MAX
    return encoded


def encode_call(  # noqa: PLR0913  Keyword-only beyond the call: each is one field of the frame.
    call_id: int,
    method: int,
    *,
    deadline: float | None,
    principal: Principal,
    request_id: str,
    correlation_id: str,
    body: bytes,
    traceparent: str = "",
    tracestate: str = "",
) -> bytes:
    assert 0 <= method < len(METHODS)
    assert 0 <= call_id <= 0xFFFFFFFF
    client, scopes = _principal_bytes(principal)
    request, correlation = _cut(request_id), _cut(correlation_id)
    parent = state = b""  # Tracing off (the common case): two empty strings, nothing encoded.
    if traceparent:
        parent, state = _cut(traceparent), _cut(tracestate)
    header = _CALL.pack(
        call_id,
        method,
        math.nan if deadline is None else deadline,
        len(client),
        len(scopes),
        len(request),
        len(correlation),
        len(parent),
        len(state),
    )
    length = 1 + len(header) + len(client) + len(scopes) + len(request) + len(correlation)
    length += len(parent) + len(state) + len(body)
    return b"".join(
        (_PREFIX.pack(length, FrameKind.CALL), header, client, scopes, request, correlation, parent, state, body)
    )


def encode_index(kind: FrameKind, index: int, body: bytes = b"") -> bytes:
    """CANCEL (a call id), HELLO, METRICS or SETTINGS (a front's index, METRICS with its exposition, the
    engine's SETTINGS with the settings), PROBE or ROOM (a method's index)."""
    assert kind in _INDEXED
    return b"".join((_PREFIX.pack(1 + _INDEX.size + len(body), kind), _INDEX.pack(index), body))


def encode_reply(call_id: int, body: bytes) -> bytes:
    return b"".join((_PREFIX.pack(1 + _INDEX.size + len(body), FrameKind.REPLY), _INDEX.pack(call_id), body))


def _error_parts(error: LedgerError) -> tuple[int, bytes, bytes, bytes]:
    """An error's kind index, reason, message and metadata (ErrorInfo bytes), as ERROR and STATE carry them."""
    metadata = error_details_pb2.ErrorInfo(metadata=error.metadata).SerializeToString()
    return _ERROR_KINDS.index(error.kind), _cut(error.reason), error.message.encode(), metadata


def encode_error(call_id: int, error: LedgerError) -> bytes:
    kind, reason, message, metadata = _error_parts(error)
    header = _ERROR.pack(call_id, kind, len(reason), len(message))
    length = 1 + len(header) + len(reason) + len(message) + len(metadata)
    return b"".join((_PREFIX.pack(length, FrameKind.ERROR), header, reason, message, metadata))


def encode_state(method: int, *, refusing_until: float, error: LedgerError) -> bytes:
    """STATE: the front may answer `method` with `error` until `refusing_until` without forwarding it."""
    assert 0 <= method < len(METHODS)
    assert error.kind == ErrorKind.EXHAUSTED, error.kind  # Only the door's refusals (facade.api.relay).
    kind, reason, message, metadata = _error_parts(error)
    header = _STATE.pack(method, refusing_until, kind, len(reason), len(message))
    length = 1 + len(header) + len(reason) + len(message) + len(metadata)
    return b"".join((_PREFIX.pack(length, FrameKind.STATE), header, reason, message, metadata))


_principals: dict[tuple[bytes, int], Principal] = {}


def _principal(raw: bytes, client_length: int) -> Principal:
    """The principal of a CALL frame's client and scopes bytes, decoded once per distinct pair (not two
    strings, a split and a frozenset per call in the engine's process; Principal is frozen: shared)."""
    key = (raw, client_length)
    principal = _principals.get(key)
    if principal is None:
        if len(_principals) >= PRINCIPALS_CACHED_MAX:
            _principals.clear()
        client, scopes = raw[:client_length].decode(), raw[client_length:].decode()
        principal = _principals[key] = Principal(client, frozenset(scopes.split()))
    assert len(_principals) <= PRINCIPALS_CACHED_MAX
    return principal


def _decode_call(frame: memoryview) -> Call:
    call_id, method, deadline, *lengths = _CALL.unpack_from(frame)
    if method >= len(METHODS):
        raise FrameError(f"unknown method index {method}")
    client_length, scopes_length, request_length, correlation_length, parent_length, state_length = lengths
    offset = _CALL.size + client_length + scopes_length
    if offset + request_length + correlation_length + parent_length + state_length > len(frame):
        raise FrameError("call frame shorter than its strings")
    principal = _principal(bytes(frame[_CALL.size : offset]), client_length)
    request_id = bytes(frame[offset : offset + request_length]).decode()
    offset += request_length
    correlation_id = bytes(frame[offset : offset + correlation_length]).decode()
    offset += correlation_length
    traceparent = tracestate = ""
    if parent_length or state_length:  # Tracing off: nothing to decode.
        traceparent = bytes(frame[offset : offset + parent_length]).decode()
        offset += parent_length
        tracestate = bytes(frame[offset : offset + state_length]).decode()
        offset += state_length
    return Call(
        call_id,
        METHODS[method],
        None if math.isnan(deadline) else deadline,
        principal,
        request_id,
        correlation_id,
        bytes(frame[offset:]),
        traceparent,
        tracestate,
    )


def _decode_error(frame: memoryview) -> Reply:
    call_id, kind, reason_length, message_length = _ERROR.unpack_from(frame)
    return Reply(call_id, error=_error(frame, _ERROR.size, kind, reason_length, message_length))


def _decode_state(frame: memoryview) -> AdmissionState:
    method, refusing_until, kind, reason_length, message_length = _STATE.unpack_from(frame)
    if method >= len(METHODS) or not math.isfinite(refusing_until):
        raise FrameError(f"state frame for method index {method} until {refusing_until}")
    error = _error(frame, _STATE.size, kind, reason_length, message_length)
    if error.kind != ErrorKind.EXHAUSTED:
        raise FrameError(f"state frame with a {error.kind.name} refusal")
    return AdmissionState(method, refusing_until, error)


def _error(frame: memoryview, offset: int, kind: int, reason_length: int, message_length: int) -> LedgerError:
    reason = bytes(frame[offset : offset + reason_length]).decode()
    message = bytes(frame[offset + reason_length : offset + reason_length + message_length]).decode()
    info = error_details_pb2.ErrorInfo.FromString(bytes(frame[offset + reason_length + message_length :]))
    if kind >= len(_ERROR_KINDS) or not reason:
        raise FrameError("error frame without a known kind and a reason")
    return LedgerError(_ERROR_KINDS[kind], reason, message, dict(info.metadata))


Decoded = Call | Reply | AdmissionState | tuple[FrameKind, int, bytes]
"""A CALL, a REPLY/ERROR, a STATE, or (CANCEL/HELLO/METRICS/PROBE/ROOM/SETTINGS, its index, its body)."""


class FrameReader:
    """Frames out of a byte stream, in bulk: everything one read brought is split at once."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Decoded]:
        """The frames `data` completes (a partial one stays buffered). FrameError: the stream is broken."""
        buffer = self._buffer
        buffer += data
        decoded: list[Decoded] = []
        offset = 0
        view = memoryview(buffer)
        try:
            while len(buffer) - offset >= _PREFIX.size:
                length, kind = _PREFIX.unpack_from(buffer, offset)
                if not 1 <= length <= FRAME_BYTES_MAX:
                    raise FrameError(f"frame length {length} out of bounds")
                end = offset + 4 + length
                if end > len(buffer):
                    break
                decoded.append(_decode(kind, view[offset + _PREFIX.size : end]))
                offset = end
        except (struct.error, UnicodeDecodeError, ValueError, DecodeError) as error:
            raise FrameError(str(error)) from error
        finally:
            view.release()
        del buffer[:offset]
        assert len(buffer) < _PREFIX.size or len(buffer) < 4 + FRAME_BYTES_MAX
        return decoded


def _decode(kind: int, frame: memoryview) -> Decoded:
    if kind == FrameKind.CALL:
        return _decode_call(frame)
    if kind == FrameKind.REPLY:
        (call_id,) = _INDEX.unpack_from(frame)
        return Reply(call_id, body=bytes(frame[_INDEX.size :]))
    if kind == FrameKind.ERROR:
        return _decode_error(frame)
    if kind == FrameKind.STATE:
        return _decode_state(frame)
    if kind in _INDEXED:
        (index,) = _INDEX.unpack_from(frame)
        return FrameKind(kind), index, bytes(frame[_INDEX.size :])
    raise FrameError(f"unknown frame kind {kind}")


class TurnWriter:
    """A connection's outgoing frames, written once per event-loop turn: every frame sent in one turn goes
    out in one write (one syscall for many calls or answers, not one each). Frames sent while there is no
    open transport are dropped: the peer's connection is gone, and so is whoever waited for them."""

    __slots__ = ("_out", "_scheduled", "loop", "transport")

    def __init__(self) -> None:
        self._out: list[bytes] = []
        self._scheduled = False
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        """The loop to flush on, when its owner holds it (else the running one: on Python 3.11 asking for it
        is a getpid() syscall)."""

    def send(self, frame: bytes) -> None:
        assert frame
        self._out.append(frame)
        if not self._scheduled:
            self._scheduled = True
            (self.loop or asyncio.get_running_loop()).call_soon(self._flush)

    def _flush(self) -> None:
        assert self._scheduled
        self._scheduled = False
        out, self._out = self._out, []
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(b"".join(out))
