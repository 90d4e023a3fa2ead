"""Front processes (api.front_processes, facade.fronts) over real gRPC on loopback: the fronts are real
child processes serving the port, the engine's process runs the operations. Every answer (successes,
idempotent replays, LedgerErrors with their rich status, malformed requests, missing credentials) is the
single-process service's; /readyz is false until the fronts serve; a front killed with SIGKILL loses no
acknowledged transaction and is restarted (facade.fronts' supervision rule)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from facade.api import _frames
from facade.api.errors import error_info
from facade.api.forward import REASON_ENGINE_UNREACHABLE
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.app import RunningServer, start
from facade.auth import SCOPES_ALL, Principal
from facade.domain.errors import ErrorKind
from facade.observability import metrics
from facade.observability.forwarded import DeltaError, decode_delta
from facade.settings import Settings
from tests.api.conftest import Api, credit, debit, make_settings
from tests.api.test_ops import scrape

READY_WAIT_ROUNDS_MAX = 600
"""Bound on waiting for the fronts to serve (50 ms apart: a front starts in ~1 s)."""


async def relay_answer(path: str, frame: bytes) -> _frames.Decoded:
    """The engine's process's one answer to `frame`, sent on a connection of its own to the real relay socket."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(frame)
        await writer.drain()
        frames = _frames.FrameReader()
        for _ in range(READY_WAIT_ROUNDS_MAX):
            data = await reader.read(65_536)
            assert data, "the relay closed the connection"
            if decoded := frames.feed(data):
                [answer] = decoded
                return answer
    finally:
        writer.close()
    raise AssertionError("no answer from the relay")


async def _ready(server: RunningServer) -> bool:
    assert server.ops is not None
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{server.ops.port}/readyz")
    return response.status_code == 200


async def _wait_ready(server: RunningServer, ready: bool = True) -> None:
    for _ in range(READY_WAIT_ROUNDS_MAX):
        if await _ready(server) == ready:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"/readyz never became {'ready' if ready else 'unready'}")


@contextlib.asynccontextmanager
async def serving_api(settings: Settings) -> AsyncIterator[Api]:
    """`settings` served (front processes and all) until the block ends, with a client on its gRPC port,
    once /readyz says every front serves."""
    server = await start(settings)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        await _wait_ready(server)
        yield Api(settings, server, channel, rpc.LedgerStub(channel))
    finally:
        await channel.close()
        await server.stop()


async def _open(directory: Path, fronts: int) -> Api:
    settings = make_settings(directory, front_processes=fronts, http_port=0)
    server = await start(settings)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    return Api(settings, server, channel, rpc.LedgerStub(channel))


@pytest.fixture
async def fronted(tmp_path: Path) -> AsyncIterator[Api]:
    instance = await _open(tmp_path, fronts=1)
    try:
        yield instance
    finally:
        await instance.channel.close()
        await instance.server.stop()


def _identity(data: bytes) -> bytes:
    return data


async def _outcomes(api: Api) -> list[Any]:
    """What a caller sees for a fixed scenario, with the ids that differ between instances left out."""
    seen: list[Any] = []
    account = await api.account("alice")
    posted = await api.post("pay-1", credit(account, 1000))
    replayed = await api.post("pay-1", credit(account, 1000))
    seen.append((posted.status, replayed.transaction_id == posted.transaction_id, await api.available(account)))
    for call in (
        api.post("pay-2", debit(account, 5000)),  # INSUFFICIENT_FUNDS
        api.post("pay-1", credit(account, 7)),  # The key reused for another body.
        api.stub.GetAccount(pb.GetAccountRequest(account_id="1" * 32), metadata=api.auth()),
        api.stub.GetBalance(pb.GetBalanceRequest(account_id=account)),  # No token.
        api.stub.GetBalance(pb.GetBalanceRequest(account_id=account), metadata=(("authorization", "Bearer x"),)),
        api.channel.unary_unary(
            "/ledger.v1.Ledger/PostTransaction", request_serializer=_identity, response_deserializer=_identity
        )(b"\xff\xff\xff\xff", metadata=api.auth()),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        info = error_info(raised.value)
        assert info is not None
        seen.append((raised.value.code(), raised.value.details(), info.reason, sorted(info.metadata)))
    stream = api.stub.StreamTransactions(metadata=api.auth())
    for key, leg in (("s-1", credit(account, 5)), ("s-2", debit(account, 10**9)), ("s-3", credit(account, 6))):
        await stream.write(pb.PostTransactionRequest(idempotency_key=key, legs=[leg]))
    await stream.done_writing()
    results = [result async for result in stream]
    seen.append([(r.WhichOneof("result"), r.error.reason if r.HasField("error") else "") for r in results])
    seen.append(await api.available(account))
    assert api.server.http is not None
    async with httpx.AsyncClient() as client:
        response = await client.get(
            f"http://127.0.0.1:{api.server.http_port}/v1/accounts/{account}/balance", headers=dict(api.auth())
        )
    seen.append((response.status_code, response.json()["available"]))
    return seen


async def test_fronts_answer_as_the_single_process_service(tmp_path: Path) -> None:
    single = await _open(tmp_path / "single", fronts=0)
    try:
        expected = await _outcomes(single)
    finally:
        await single.channel.close()
        await single.server.stop()
    fronted = await _open(tmp_path / "fronted", fronts=1)
    try:
        assert fronted.server.fronts is not None
        await _wait_ready(fronted.server)
        [front] = fronted.server.fronts.pids
        children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
        assert front in {int(pid) for pid in children}  # So bench_api's CPU of the process tree counts it.
        assert await _outcomes(fronted) == expected
    finally:
        await fronted.channel.close()
        await fronted.server.stop()
    errors = [(code, reason) for code, _, reason, _ in expected[1:7]]
    assert errors == [
        (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS"),
        (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED"),
        (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND"),
        (grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIALS"),
        (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN"),
        (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST"),
    ]
    assert expected[7] == [("transaction", ""), ("error", "INSUFFICIENT_FUNDS"), ("transaction", "")]
    assert expected[8] == 1011 and expected[9] == (200, "1011")


async def test_unauthenticated_calls_are_refused_before_forwarding(fronted: Api) -> None:
    assert fronted.server.fronts is not None
    await _wait_ready(fronted.server)
    relay = fronted.server.fronts.relay
    account = await fronted.account("carol")
    forwarded = relay.calls_total
    for metadata in ((), (("authorization", "Bearer not-a-token"),)):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await fronted.stub.PostTransaction(
                pb.PostTransactionRequest(idempotency_key="u-1", legs=[credit(account, 1)]), metadata=metadata
            )
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert relay.calls_total == forwarded  # The engine's process never saw them.
    await fronted.post("u-2", credit(account, 1))
    assert relay.calls_total == forwarded + 1


async def test_a_killed_front_loses_nothing_and_is_restarted(fronted: Api) -> None:
    server = fronted.server
    assert server.fronts is not None
    await _wait_ready(server)
    account = await fronted.account("bob")
    for number in range(20):
        await fronted.post(f"k-{number}", credit(account, 10))
    [front] = server.fronts.pids
    os.kill(front, signal.SIGKILL)
    await _wait_ready(server, ready=False)  # The engine's process saw the front go.
    await _wait_ready(server)  # And restarted it.
    assert server.fronts.pids and server.fronts.pids != [front]
    await fronted.channel.close()
    fronted.channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    fronted.stub = rpc.LedgerStub(fronted.channel)
    assert await fronted.available(account) == 200  # Every acknowledged transaction is there.
    replay = await fronted.post("k-3", credit(account, 10))  # An idempotent retry through the new front.
    assert replay.idempotency_key == "k-3" and await fronted.available(account) == 200


async def _request_counts(api: Api) -> dict[tuple[str, str], float]:
    """(method, code) → ledger_request_duration_seconds_count of the gRPC edge on the engine's /metrics."""
    samples = await scrape(api)
    return {
        (dict(labels)["method"], dict(labels)["code"]): value
        for (name, labels), value in samples.items()
        if name == "ledger_request_duration_seconds_count" and ("edge", "grpc") in labels
    }


async def test_the_fronts_request_metrics_reach_the_engines_metrics(fronted: Api) -> None:
    assert fronted.server.fronts is not None
    await _wait_ready(fronted.server)
    account = await fronted.account("dave")
    before = await _request_counts(fronted)
    for number in range(5):
        await fronted.post(f"m-{number}", credit(account, 10))
    with pytest.raises(grpc.aio.AioRpcError):
        await fronted.post("m-9", debit(account, 10**6))
    with pytest.raises(grpc.aio.AioRpcError):
        await fronted.stub.GetBalance(pb.GetBalanceRequest(account_id=account))  # No token: the front refuses.
    expected = {
        ("PostTransaction", "OK"): 5,
        ("PostTransaction", "FAILED_PRECONDITION"): 1,
        ("GetBalance", "UNAUTHENTICATED"): 1,
    }
    # The fronts report every FRONT_METRICS_INTERVAL_SECONDS: wait (bounded) for the report.
    for _ in range(READY_WAIT_ROUNDS_MAX):
        after = await _request_counts(fronted)
        gained = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in expected}
        if gained == expected:
            break
        await asyncio.sleep(0.05)
    assert gained == expected
    samples = await scrape(fronted)  # Buckets and sum came along with the count.
    ok = frozenset({"edge": "grpc", "method": "PostTransaction", "code": "OK", "le": "+Inf"}.items())
    assert samples[("ledger_request_duration_seconds_bucket", ok)] == after[("PostTransaction", "OK")]
    assert samples[("ledger_request_duration_seconds_sum", ok - {("le", "+Inf")})] > 0


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"a": 1}',
        b'[[["grpc", "M"], [1], 0.1]]',  # Too few labels.
        b'[[["grpc", "M", "OK"], [1, 2], 0.1]]',  # Too few buckets.
        b'[[["grpc", "M", "OK"], ' + str([2, 1] + [1] * 19).encode() + b", 0.1]]",  # Not cumulative.
        b'[[["grpc", "M", "OK"], ' + str([-1] * 21).encode() + b", 0.1]]",  # Negative.
        b'[[["grpc", "M", "OK"], ' + str([1] * 21).encode() + b", NaN]]",
    ],
)
def test_a_broken_metrics_report_is_refused_whole(body: bytes) -> None:
    exported = metrics.request_durations_exported
    assert exported.buckets_count == len(metrics.LATENCY_BUCKETS_SECONDS) + 1 == 21
    with pytest.raises(DeltaError):
        decode_delta(body, labels_count=exported.labels_count, buckets_count=exported.buckets_count)
    good = b'[[["grpc", "M", "OK"], ' + str([1] * 21).encode() + b", 0.1]]"
    [series] = decode_delta(good, labels_count=exported.labels_count, buckets_count=exported.buckets_count)
    assert series.labels == ("grpc", "M", "OK") and series.buckets == (1,) * 21


TRACEPARENT = "00-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174-01"


@pytest.mark.parametrize(
    ("traceparent", "tracestate"),
    [("", ""), (TRACEPARENT, ""), (TRACEPARENT, "vendor=a,other=b")],
)
def test_a_call_frame_round_trips_with_and_without_a_trace_context(traceparent: str, tracestate: str) -> None:
    """A CALL frame carries the front's trace context only when it has one (tracing on), byte for byte,
    and every other field as before; cut anywhere, it decodes to nothing until the rest arrives."""
    method = _frames.method_index("/ledger.v1.Ledger/PostTransaction")
    principal = Principal("client-a", SCOPES_ALL)
    body = pb.PostTransactionRequest(idempotency_key="frame-1").SerializeToString()
    frame = _frames.encode_call(
        7,
        method,
        deadline=12.5,
        principal=principal,
        request_id="req-1",
        correlation_id="cor-1",
        body=body,
        traceparent=traceparent,
        tracestate=tracestate,
    )
    untraced = _frames.encode_call(
        7, method, deadline=12.5, principal=principal, request_id="req-1", correlation_id="cor-1", body=body
    )
    assert len(frame) == len(untraced) + len(traceparent) + len(tracestate)  # Off: not a byte more.
    expected = _frames.Call(
        7, _frames.METHODS[method], 12.5, principal, "req-1", "cor-1", body, traceparent, tracestate
    )
    for cut in (1, 6, len(frame) - 1):
        reader = _frames.FrameReader()
        assert reader.feed(frame[:cut]) == []
        assert reader.feed(frame[cut:]) == [expected]
    [no_deadline] = _frames.FrameReader().feed(
        _frames.encode_call(
            8,
            method,
            deadline=None,
            principal=principal,
            request_id="",
            correlation_id="",
            body=b"",
            traceparent=TRACEPARENT,
        )
    )
    assert isinstance(no_deadline, _frames.Call) and no_deadline.deadline is None
    assert (no_deadline.traceparent, no_deadline.tracestate, no_deadline.body) == (TRACEPARENT, "", b"")
    # Strings longer than the frame holds: a broken peer, its connection closed.
    header_end = 5 + _frames._CALL.size
    with pytest.raises(_frames.FrameError):
        _frames.FrameReader().feed(frame[: header_end - 2] + b"\xff\xff" + frame[header_end:])


async def test_a_front_that_cannot_reach_the_engine_answers_unavailable(fronted: Api) -> None:
    """The engine's side of the relay socket dies under a serving front (a real child process): a unary
    call gets UNAVAILABLE ENGINE_UNREACHABLE well within its deadline, a StreamTransactions item gets that
    error as its result and the stream goes on (as the single process answers an item the engine refused);
    once the socket is back the front reconnects by itself and the same stream posts again."""
    server = fronted.server
    assert server.fronts is not None
    await _wait_ready(server)
    relay = server.fronts.relay
    account = await fronted.account("erin")
    stream = fronted.stub.StreamTransactions(metadata=fronted.auth())
    await stream.write(pb.PostTransactionRequest(idempotency_key="d-1", legs=[credit(account, 5)]))
    first = await stream.read()
    assert isinstance(first, pb.TransactionResult) and first.HasField("transaction")

    await relay.close()  # The socket's listener and every connection on it: the engine is unreachable.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await fronted.stub.PostTransaction(
            pb.PostTransactionRequest(idempotency_key="d-2", legs=[credit(account, 7)]),
            metadata=fronted.auth(),
            timeout=30,
        )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE  # Not DEADLINE_EXCEEDED: answered at once.
    info = error_info(raised.value)
    assert info is not None and info.reason == REASON_ENGINE_UNREACHABLE
    await stream.write(pb.PostTransactionRequest(idempotency_key="d-3", legs=[credit(account, 9)]))
    refused = await stream.read()
    assert isinstance(refused, pb.TransactionResult) and refused.HasField("error")
    assert refused.error.reason == REASON_ENGINE_UNREACHABLE
    await _wait_ready(server, ready=False)

    await relay.start(server.fronts.socket_path)  # The engine's socket is back: the front reconnects.
    await _wait_ready(server)
    await stream.write(pb.PostTransactionRequest(idempotency_key="d-4", legs=[credit(account, 11)]))
    await stream.done_writing()
    last = await stream.read()
    assert isinstance(last, pb.TransactionResult) and last.HasField("transaction")
    assert await stream.read() == grpc.aio.EOF
    assert await fronted.available(account) == 5 + 11  # Nothing reached the engine while it was cut off.


async def test_a_call_whose_deadline_passed_in_transit_is_not_committed(fronted: Api) -> None:
    """The engine's process holds a forwarded call to the caller's own deadline (CLOCK_MONOTONIC, shared
    by the host's processes), not to "the time remaining" counted again from the frame's arrival: a frame
    that reaches it after its caller's deadline commits nothing. Frames sent on the real relay socket."""
    server = fronted.server
    assert server.fronts is not None
    await _wait_ready(server)
    account = await fronted.account("frank")
    method = _frames.method_index("/ledger.v1.Ledger/PostTransaction")
    principal = Principal("client-a", SCOPES_ALL)

    def call(call_id: int, key: str, amount: int, deadline: float) -> bytes:
        body = pb.PostTransactionRequest(idempotency_key=key, legs=[credit(account, amount)]).SerializeToString()
        return _frames.encode_call(
            call_id, method, deadline=deadline, principal=principal, request_id="", correlation_id="", body=body
        )

    reader, writer = await asyncio.open_unix_connection(server.fronts.socket_path)
    try:
        now = time.monotonic()
        writer.write(call(1, "late-1", 5, now - 0.001) + call(2, "late-2", 7, now + 30))
        await writer.drain()
        frames = _frames.FrameReader()
        replies: dict[int, _frames.Reply] = {}
        for _ in range(READY_WAIT_ROUNDS_MAX):
            data = await reader.read(65_536)
            assert data, "the relay closed the connection"
            replies.update((reply.call_id, reply) for reply in frames.feed(data) if isinstance(reply, _frames.Reply))
            if len(replies) == 2:
                break
    finally:
        writer.close()
    late, in_time = replies[1], replies[2]
    assert late.error is not None and late.error.kind == ErrorKind.DEADLINE
    assert in_time.error is None and pb.Transaction.FromString(in_time.body).idempotency_key == "late-2"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await fronted.stub.GetTransaction(pb.GetTransactionRequest(idempotency_key="late-1"), metadata=fronted.auth())
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert await fronted.available(account) == 7
