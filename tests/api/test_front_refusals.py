"""Front-local refusals (facade.api.forward, facade.api.relay's STATE frames) over real gRPC on loopback,
with a real front process: while the engine's write queue is full (its writer held by a gate, so the
queue's state is exact) a front answers a write with the engine door's own refusal without forwarding it
(the relay's call counter does not move), after authentication; once the engine has room the front
forwards again and the write is admitted. What is checked is answers and counters, never a duration."""

from __future__ import annotations

import asyncio
import math
import struct
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from facade.api import _frames
from facade.api.errors import error_info
from facade.api.relay import RelayServer
from facade.domain.errors import ErrorKind, LedgerError
from tests.api.conftest import Api, credit, make_settings
from tests.api.test_admission import EngineGate, committer_idle, fill_in_flight, retry_delay_seconds, until
from tests.api.test_fronts import READY_WAIT_ROUNDS_MAX, _request_counts, relay_answer, serving_api

ATTEMPTS_MAX = 50
"""Calls tried for a local refusal: on a slow host the front's state may expire between two calls (then the
call is forwarded and refused by the engine, which renews it), so the test does not depend on timing."""
GARBAGE = b"\xff\x00 not a protobuf message"
"""A request nobody decodes: both the engine's door and the front refuse before decoding."""


def _seen(error: grpc.aio.AioRpcError) -> tuple[Any, ...]:
    """What a refused caller sees: code, message, ErrorInfo reason and metadata, RetryInfo delay."""
    info = error_info(error)
    assert info is not None
    return error.code(), error.details(), info.reason, dict(info.metadata), retry_delay_seconds(error)


async def _refused(api: Api, method: str, metadata: Any) -> grpc.aio.AioRpcError:
    call: Any = api.channel.unary_unary(method)
    try:
        await call(GARBAGE, metadata=metadata)
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError(f"{method} was not refused")


async def _probe(relay_path: str, method: str) -> _frames.Decoded:
    """The engine door's answer to a front's PROBE for `method`, on the real relay socket."""
    return await relay_answer(relay_path, _frames.encode_index(_frames.FrameKind.PROBE, _frames.method_index(method)))


async def _posted_or_refused(api: Api, account: str) -> grpc.aio.AioRpcError | None:
    try:
        await api.post("after", credit(account, 10))
    except grpc.aio.AioRpcError as error:
        return error
    return None


async def _locally_refused(api: Api, relay: RelayServer) -> tuple[tuple[Any, ...], tuple[Any, ...], int]:
    """(the engine's latest refusal, the front's own refusal that followed it, refusals seen)."""
    method = "/ledger.v1.Ledger/PostTransaction"
    engine: tuple[Any, ...] | None = None
    for attempt in range(1, ATTEMPTS_MAX + 1):
        forwarded = relay.calls_total
        seen = _seen(await _refused(api, method, api.auth()))
        if relay.calls_total == forwarded and engine is not None:
            return engine, seen, attempt
        assert relay.calls_total == forwarded + 1  # Refused by the engine's door: the front learns it.
        engine = seen
    raise AssertionError(f"no local refusal in {ATTEMPTS_MAX} calls")


async def test_a_front_refuses_writes_itself_while_the_engine_refuses_them(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, front_processes=1, front_refusals=True, http_port=0, write_queue_transfers_max=1)
    async with serving_api(settings) as api:
        fronts = api.server.fronts
        assert fronts is not None
        alice = await api.account("alice")
        gate = EngineGate(api.server.engine)
        try:
            await _refusing_then_admitting(api, fronts.relay, alice, gate, fronts.socket_path)
        finally:
            await gate.open()  # Else a failure above would hang the teardown behind the held engine.


async def _refusing_then_admitting(api: Api, relay: RelayServer, alice: str, gate: EngineGate, relay_path: str) -> None:
    counts_before = await _request_counts(api)
    in_flight = await fill_in_flight(api, alice)
    queued = asyncio.create_task(api.post("queued", credit(alice, 1)))
    await until(lambda: api.server.service.committer.queued_transfers == 1)

    engine, local, refusals = await _locally_refused(api, relay)
    assert engine == local  # The same status, message, reason and retry hint as the engine's own refusal.
    await until(lambda: relay.probes_total >= 1)  # The refusing front asks the door whether it has room.
    code, _, reason, metadata, delay = local
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and reason == "WRITE_QUEUE_FULL"
    assert delay is not None and delay > 0 and int(metadata["retry_after_ms"]) > 0

    # A front's PROBE is answered with the door's state: still refusing, with a fresh hint and a bounded hold.
    probed = await _probe(relay_path, "/ledger.v1.Ledger/PostTransaction")
    assert isinstance(probed, _frames.AdmissionState) and probed.error.reason == "WRITE_QUEUE_FULL"
    assert probed.refusing_until <= time.monotonic() + _frames.REFUSING_SECONDS_MAX
    read = "/ledger.v1.Ledger/GetBalance"  # Reads are never refused at the door.
    assert await _probe(relay_path, read) == (_frames.FrameKind.ROOM, _frames.method_index(read), b"")

    # Authentication stays before the refusal: a caller without a token is told so, never "busy".
    forwarded = relay.calls_total
    anonymous = await _refused(api, "/ledger.v1.Ledger/PostTransaction", ())
    assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED
    # Bulk submissions are refused by the engine's door only (facade.api.relay says why): each is forwarded.
    for attempt in range(1, 3):
        bulk = await _refused(api, "/ledger.v1.Ledger/PostTransactions", api.auth())
        assert bulk.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert relay.calls_total == forwarded + attempt

    await gate.open()
    await asyncio.gather(*in_flight, queued)
    await committer_idle(api.server.service)
    write = "/ledger.v1.Ledger/PostTransaction"
    assert await _probe(relay_path, write) == (_frames.FrameKind.ROOM, _frames.method_index(write), b"")
    # The engine has room: once the front's state expires (REFUSING_SECONDS_MAX) the write is forwarded
    # and admitted; until then the front may still refuse it, with the engine's refusal.
    for _ in range(READY_WAIT_ROUNDS_MAX):
        forwarded = relay.calls_total
        refused = await _posted_or_refused(api, alice)
        if refused is None:
            assert relay.calls_total == forwarded + 1
            break
        assert _seen(refused)[:3] == local[:3] and relay.calls_total == forwarded
        refusals += 1
        await asyncio.sleep(0.01)
    assert await api.available(alice) == 3 + 10  # The refused writes wrote nothing.

    # The front's refusals are in its request metrics (reported to the engine's /metrics).
    expected = {("PostTransaction", "RESOURCE_EXHAUSTED"): refusals, ("PostTransactions", "RESOURCE_EXHAUSTED"): 2}
    for _ in range(READY_WAIT_ROUNDS_MAX):
        after = await _request_counts(api)
        gained = {key: after.get(key, 0.0) - counts_before.get(key, 0.0) for key in expected}
        if gained == expected:
            break
        await asyncio.sleep(0.05)
    assert gained == expected


def test_a_state_frame_round_trips_and_a_broken_one_closes_the_connection() -> None:
    error = LedgerError(ErrorKind.EXHAUSTED, "WRITE_QUEUE_FULL", "service busy", {"retry_after_ms": "120"})
    method = _frames.method_index("/ledger.v1.Ledger/PostTransaction")
    frame = _frames.encode_state(method, refusing_until=12.5, error=error)
    [state] = _frames.FrameReader().feed(frame[:7]) + _frames.FrameReader().feed(frame)
    assert isinstance(state, _frames.AdmissionState)
    assert (state.method, state.refusing_until) == (method, 12.5)
    assert repr(state.error) == repr(error)
    # Prefix (5 bytes), method (1), until (8), kind (1): a refusal that is no RESOURCE_EXHAUSTED, no time,
    # an unknown method.
    invalid = list(ErrorKind).index(ErrorKind.INVALID).to_bytes(1, "little")
    for broken in (
        frame[:14] + invalid + frame[15:],
        frame[:6] + struct.pack("<d", math.nan) + frame[14:],
        frame[:5] + b"\xff" + frame[6:],
    ):
        with pytest.raises(_frames.FrameError):
            _frames.FrameReader().feed(broken)


async def test_without_front_refusals_every_write_is_refused_by_the_engines_door(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, front_processes=1, http_port=0, write_queue_transfers_max=1)
    assert not settings.api.front_refusals  # The default.
    async with serving_api(settings) as api:
        assert api.server.fronts is not None
        relay = api.server.fronts.relay
        alice = await api.account("alice")
        gate = EngineGate(api.server.engine)
        try:
            in_flight = await fill_in_flight(api, alice)
            queued = asyncio.create_task(api.post("queued", credit(alice, 1)))
            await until(lambda: api.server.service.committer.queued_transfers == 1)
            for attempt in range(1, 4):
                forwarded = relay.calls_total
                refused = await _refused(api, "/ledger.v1.Ledger/PostTransaction", api.auth())
                assert _seen(refused)[2] == "WRITE_QUEUE_FULL" and relay.calls_total == forwarded + 1, attempt
            assert relay.probes_total == 0
        finally:
            await gate.open()
        await asyncio.gather(*in_flight, queued)
