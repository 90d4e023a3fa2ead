"""Admission control and probes over loopback, on the real service (gRPC, the JSON gateway, the ops port).

The engine's single writer thread is held busy by a gate (as a stalled disk would hold it), so the write
queue's state is known exactly: two batches in flight, then the queue. Nothing here asserts a duration:
what is checked is what was committed (the engine's balances afterwards), what was refused, and in what
order answers arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import REGISTRY

from facade.api.errors import STATUS_DETAILS_KEY, error_info
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.app import start
from facade.batcher import BatchCost
from facade.engine.embedded import EmbeddedEngine
from facade.service import LedgerService
from facade.settings import KafkaSettings
from tests.api.conftest import Api, credit, make_settings, open_api
from tests.http.test_gateway import Http, close_http, open_http
from tests.http.test_gateway import credit as json_credit

LOOP_TURNS_BODY = 50
STATE_POLLS_MAX = 2000
"""Bound on polling the committer's state (10 ms apart) while waiting for a known state."""


class EngineGate:
    """Holds the embedded engine's one writer thread busy until opened: every engine call waits behind it."""

    def __init__(self, engine: object) -> None:
        assert isinstance(engine, EmbeddedEngine)
        self._event = threading.Event()
        # A call on the engine's thread like any other (numbered, under the ledger lock): no batch runs inline past it.
        self._done = asyncio.ensure_future(engine._run(self._event.wait))

    async def open(self) -> None:
        self._event.set()
        await self._done


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(STATE_POLLS_MAX):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the service never reached the expected state")


async def fill_in_flight(api: Api, account: str) -> list[asyncio.Task[Any]]:
    """Two writes, each in its own batch, both waiting for the gated engine: the next write queues."""
    committer = api.server.service.committer
    first = asyncio.create_task(api.post("in-flight-0", credit(account, 1)))
    await until(lambda: committer.in_flight_transfers == 1)
    second = asyncio.create_task(api.post("in-flight-1", credit(account, 1)))
    await until(lambda: committer.in_flight_transfers == 2)
    return [first, second]


def dropped() -> float:
    return sum(
        REGISTRY.get_sample_value("ledger_dropped_transactions_total", {"cause": c}) or 0.0
        for c in ("deadline", "cancelled")
    )


async def committer_idle(service: LedgerService) -> None:
    await until(lambda: service.committer.queued_transfers == 0 and service.committer.in_flight_transfers == 0)


def retry_delay_seconds(error: grpc.aio.AioRpcError) -> float | None:
    metadata: Any = error.trailing_metadata()
    for key, value in metadata or ():
        if key == STATUS_DETAILS_KEY:
            for detail in status_pb2.Status.FromString(value).details:
                retry = error_details_pb2.RetryInfo()
                if detail.Unpack(retry):
                    seconds: float = retry.retry_delay.ToTimedelta().total_seconds()
                    return seconds
    return None


@contextlib.asynccontextmanager
async def serving(directory: Path, **api: Any) -> AsyncIterator[Http]:
    instance = await open_http(directory, **api)
    try:
        yield instance
    finally:
        await close_http(instance)


async def post_within(api: Api, key: str, leg: pb.Leg, timeout_seconds: float) -> pb.Transaction:
    response: pb.Transaction = await api.stub.PostTransaction(
        pb.PostTransactionRequest(idempotency_key=key, legs=[leg]), metadata=api.auth(), timeout=timeout_seconds
    )
    return response


async def test_a_deadline_that_passes_in_the_queue_commits_nothing(tmp_path: Path) -> None:
    async with serving(tmp_path) as http:
        api = http.api
        alice = await api.account("alice")
        gate = EngineGate(api.server.engine)
        in_flight = await fill_in_flight(api, alice)
        dropped_before = dropped()
        committer = api.server.service.committer

        # HTTP, with the client's announced deadline (the client itself waits for its answer).
        late_http = asyncio.create_task(
            http.client.post(
                "/v1/transactions",
                json={"idempotency_key": "late-http", "legs": [json_credit(alice, 500)]},
                headers={**http.auth(), "X-Request-Timeout-Ms": "500"},
            )
        )
        await until(lambda: committer.queued_transfers == 1)
        # gRPC: queued behind it; its deadline expires later than the HTTP one.
        late = asyncio.create_task(post_within(api, "late", credit(alice, 1000), 2.0))
        await until(lambda: committer.queued_transfers == 2)
        with pytest.raises(grpc.aio.AioRpcError) as expired:
            await late
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # A deadline that has passed by the time the service looks at it: refused or dropped, never posted.
        expired_http = asyncio.create_task(
            http.client.post(
                "/v1/transactions",
                json={"idempotency_key": "expired-http", "legs": [json_credit(alice, 300)]},
                headers={**http.auth(), "X-Request-Timeout-Ms": "1"},
            )
        )
        await asyncio.sleep(0.01)  # Let its millisecond pass before the engine can move.
        await gate.open()
        answer = await late_http
        assert answer.status_code == 504 and answer.json()["reason"] == "DEADLINE_EXCEEDED", answer.text
        # Refused for lack of time (429) or found expired (504): either way not posted.
        answer = await expired_http
        assert (answer.status_code, answer.json()["reason"]) in ((429, "WRITE_QUEUE_FULL"), (504, "DEADLINE_EXCEEDED"))
        await asyncio.gather(*in_flight)
        await committer_idle(api.server.service)

        assert dropped() - dropped_before in (2, 3)  # The expired one was refused at the door, or dropped.
        assert await api.available(alice) == 2, "only the two in-flight credits reached the engine"
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await api.stub.GetTransaction(pb.GetTransactionRequest(idempotency_key="late"), metadata=api.auth())
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        # Nothing was half-written: a retry with the same key commits, once.
        assert not (await api.post("late", credit(alice, 1000))).deduplicated
        assert await api.available(alice) == 1002


async def test_a_full_queue_refuses_at_once_with_a_retry_hint(tmp_path: Path) -> None:
    async with serving(tmp_path, write_queue_transfers_max=1) as http:
        await full_queue_refuses(http)


async def full_queue_refuses(http: Http) -> None:
    api = http.api
    alice = await api.account("alice")
    gate = EngineGate(api.server.engine)
    in_flight = await fill_in_flight(api, alice)
    queued = asyncio.create_task(api.post("queued", credit(alice, 1)))
    await until(lambda: api.server.service.committer.queued_transfers == 1)

    # Every refusal below is answered while the engine is still stalled: none waited for the queue.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await api.post("refused", credit(alice, 1))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (info := error_info(refused.value)) and info.reason == "WRITE_QUEUE_FULL"
    assert (delay := retry_delay_seconds(refused.value)) is not None and delay > 0
    batch = pb.PostTransactionsRequest(
        transactions=[pb.PostTransactionRequest(idempotency_key=f"b{i}", legs=[credit(alice, 1)]) for i in range(1000)]
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused_batch:
        await api.stub.PostTransactions(batch, metadata=api.auth())
    assert refused_batch.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_delay_seconds(refused_batch.value) is not None

    response = await http.client.post(
        "/v1/transactions",
        json={"idempotency_key": "refused-http", "legs": [json_credit(alice, 1)]},
        headers=http.auth(),
    )
    assert response.status_code == 429 and int(response.headers["Retry-After"]) >= 1
    assert response.json()["reason"] == "WRITE_QUEUE_FULL" and int(response.json()["metadata"]["retry_after_ms"]) > 0
    # Refused before the body is parsed: a body that is not even JSON gets the same answer.
    garbage = await http.client.post(
        "/v1/transactions:batch", content=b"{not json", headers={**http.auth(), "Content-Type": "application/json"}
    )
    assert garbage.status_code == 429 and garbage.json()["reason"] == "WRITE_QUEUE_FULL"

    await gate.open()
    await asyncio.gather(*in_flight, queued)
    await committer_idle(api.server.service)
    assert await api.available(alice) == 3, "the refused writes wrote nothing"


async def test_work_that_cannot_finish_before_its_deadline_is_refused(tmp_path: Path) -> None:
    async with serving(tmp_path, write_queue_wait_ms_max=60_000) as http:
        await deadline_refuses(http)


async def deadline_refuses(http: Http) -> None:
    api = http.api
    alice = await api.account("alice")
    gate = EngineGate(api.server.engine)
    in_flight = await fill_in_flight(api, alice)
    committer = api.server.service.committer
    await until(lambda: committer.queued_transfers == 0)
    queued = asyncio.create_task(api.post("queued", credit(alice, 1)))
    await until(lambda: committer.queued_transfers == 1)
    # The committer has measured slow batches (as after a disk that takes 2 s per fsync): four batches
    # are ahead of a new write (two in flight, the queued one, its own).
    for _ in range(50):
        committer.cost.observe(1, 2.0)
    assert committer.expected_wait_seconds(1) >= 6.0

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await post_within(api, "short-deadline", credit(alice, 1), 5.0)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (info := error_info(refused.value)) and info.reason == "WRITE_QUEUE_FULL"
    assert (delay := retry_delay_seconds(refused.value)) is not None and delay >= 5.9
    response = await http.client.post(
        "/v1/transactions",
        json={"idempotency_key": "short-http", "legs": [json_credit(alice, 1)]},
        headers={**http.auth(), "X-Request-Timeout-Ms": "5000"},
    )
    assert response.status_code == 429 and int(response.headers["Retry-After"]) >= 6
    # A caller with time to wait is admitted.
    patient = asyncio.create_task(post_within(api, "long-deadline", credit(alice, 1), 60.0))
    await until(lambda: committer.queued_transfers == 2)

    await gate.open()
    await asyncio.gather(*in_flight, queued, patient)
    await committer_idle(api.server.service)
    assert await api.available(alice) == 4


async def test_an_oversized_body_is_413_before_it_is_parsed(tmp_path: Path) -> None:
    async with serving(tmp_path, http_body_bytes_max=64 * 1024) as http:
        await oversized_refused(http)


async def oversized_refused(http: Http) -> None:
    limit = http.api.settings.api.http_body_bytes_max
    body = b"{" * (limit + 1)  # Not JSON: a parse would answer 400.
    for path in ("/v1/transactions", "/v1/transactions:batch", "/v1/accounts"):
        response = await http.client.post(
            path, content=body, headers={**http.auth(), "Content-Type": "application/json"}
        )
        assert response.status_code == 413, response.text
        assert response.json()["reason"] == "REQUEST_TOO_LARGE"
        assert response.json()["metadata"]["body_bytes_max"] == str(limit)

    async def chunks() -> AsyncIterator[bytes]:  # No Content-Length: counted as it arrives.
        for _ in range(4):
            yield b"[" * (limit // 2)

    chunked = await http.client.post("/v1/transactions", content=chunks(), headers=http.auth())
    assert chunked.status_code == 413 and chunked.json()["reason"] == "REQUEST_TOO_LARGE"
    # Within the limit, the same path parses as usual.
    small = await http.client.post(
        "/v1/transactions", content=b"{", headers={**http.auth(), "Content-Type": "application/json"}
    )
    assert small.status_code == 400


async def test_a_huge_http_batch_does_not_stall_grpc(tmp_path: Path) -> None:
    http = await open_http(tmp_path, http_body_bytes_max=64 * 1024 * 1024)
    try:
        api = http.api
        alice, bob = await api.account("alice"), await api.account("bob")
        legs = [
            {
                "type": "LEG_TYPE_TRANSFER",
                "from_account_id": alice,
                "to_account_id": bob,
                "amount": "1",
                "currency": "USD",
            }
        ] * 16
        items: list[dict[str, Any]] = [{"idempotency_key": f"h{i}", "legs": legs} for i in range(1000)]
        items[-1] = {**items[-1], "unknown_field": True}  # Refused (400) only once every item was read.
        body = json.dumps({"transactions": items}).encode()
        sent = asyncio.Event()
        order: list[str] = []

        async def upload() -> AsyncIterator[bytes]:
            for offset in range(0, len(body), 256 * 1024):
                yield body[offset : offset + 256 * 1024]
            sent.set()

        async def batch() -> None:
            response = await http.client.post(
                "/v1/transactions:batch", content=upload(), headers={**http.auth(), "Content-Type": "application/json"}
            )
            assert response.status_code == 400, response.text
            assert response.json()["metadata"]["field"].startswith("transactions[999]"), response.text
            order.append("batch")

        async def read() -> None:
            await sent.wait()
            # Give the server turns to take the rest of the body (it reads one socket buffer per turn), so
            # the read arrives while the batch is being parsed: parsed on the loop, it would wait for it.
            for _ in range(LOOP_TURNS_BODY):
                await asyncio.sleep(0)
            await api.stub.GetBalance(pb.GetBalanceRequest(account_id=alice), metadata=api.auth())
            order.append("read")

        await asyncio.gather(batch(), read())
        assert order == ["read", "batch"], "the gRPC read waited for the batch's parsing"
        assert await api.available(bob) == 0
    finally:
        await close_http(http)


async def ops_get(api: Api, path: str) -> httpx.Response:
    assert api.server.ops is not None
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{api.server.ops.port}{path}")


async def test_readiness_stays_up_without_kafka_and_reports_it(tmp_path: Path) -> None:
    with socket.socket() as unused:  # A loopback port with nothing listening.
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    settings = make_settings(tmp_path)
    settings.kafka = KafkaSettings(
        bootstrap_servers=f"127.0.0.1:{port}", change_capture_enabled=False, ingest_enabled=False
    )
    server = await start(settings)
    api = Api(settings, server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}"), None)
    try:
        ready = await ops_get(api, "/readyz")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert set(body["checks"]) == {"engine", "metadata", "consistency"}
        assert all(c["ok"] for c in body["checks"].values())
        assert body["dependencies"]["kafka"]["ok"] is False and body["dependencies"]["kafka"]["error"]
        metrics = (await ops_get(api, "/metrics")).text
        assert 'ledger_dependency_up{dependency="kafka"} 0.0' in metrics
        assert 'ledger_dependency_up{dependency="engine"} 1.0' in metrics
        assert (await ops_get(api, "/healthz")).status_code == 200
    finally:
        await api.channel.close()
        await server.stop()


async def test_liveness_fails_when_the_engine_can_never_write_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = await open_api(tmp_path)
    try:
        alice = await api.account("alice")
        await api.post("before", credit(alice, 5))
        assert (await ops_get(api, "/healthz")).status_code == 200
        engine = api.server.engine
        assert isinstance(engine, EmbeddedEngine)

        # The disk fails an fdatasync (EIO): after that the page cache cannot be trusted, so the engine is
        # dead for writes until restarted (a device cannot be made to fail on demand: the call is patched).
        def failing_fdatasync(_fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await api.post("after", credit(alice, 5))
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE

        live = await ops_get(api, "/healthz")
        assert live.status_code == 503 and live.json()["status"] == "failed", live.text
        assert "fdatasync" in live.json()["failures"]["engine"]
        ready = await ops_get(api, "/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["engine"]["ok"] is False
    finally:
        await api.channel.close()
        await api.server.stop()


def test_batch_cost_prices_a_queue_as_batches_not_as_small_fsyncs() -> None:
    cost = BatchCost()
    assert cost.seconds(10_000, 2) == 0.0, "nothing measured: nothing refused for its wait"
    for _ in range(20):  # A quiet service: one transfer per batch, 4 ms each (the fsyncs).
        cost.observe(1, 0.004)
    assert cost.transfer_seconds == 0.0 and cost.fixed_seconds == pytest.approx(0.004)
    assert cost.seconds(1000, 1) == pytest.approx(0.004), "a thousand queued transfers are one batch"
    for transfers in (1, 8189, 1, 8189, 4000, 1, 8189):  # Load: 4 ms + 10 us per transfer.
        cost.observe(transfers, 0.004 + transfers * 0.00001)
    assert cost.fixed_seconds == pytest.approx(0.004, rel=0.05)
    assert cost.transfer_seconds == pytest.approx(0.00001, rel=0.05)
    assert cost.seconds(16_378, 2) == pytest.approx(2 * 0.004 + 16_378 * 0.00001, rel=0.05)


def test_batch_cost_fits_no_per_transfer_cost_over_batches_of_alike_sizes() -> None:
    """A quiet service's batches of 1-4 transfers differ in time by fsync jitter, not by their transfers: a
    slope fitted over them (ms per transfer) priced the first 2,000-transfer batch of a burst at seconds, and
    the batcher dropped queued writes with most of their deadline left as if it had passed."""
    cost = BatchCost()
    for transfers, seconds in ((1, 0.001), (2, 0.004), (3, 0.003), (4, 0.009)) * 10:
        cost.observe(transfers, seconds)
    assert cost.transfer_seconds == 0.0, "jitter over a spread of 1-4 transfers is no per-transfer cost"
    assert cost.seconds(2000, 1) == pytest.approx(cost.fixed_seconds) and cost.fixed_seconds < 0.01
    cost.observe(2000, 0.004 + 2000 * 0.00003)  # A real spread of sizes: the slope is fitted.
    assert cost.transfer_seconds > 0.0
    assert cost.seconds(2000, 1) < 1.0, "2,000 transfers at tens of microseconds each, not milliseconds"


async def test_grpc_calls_beyond_the_concurrent_rpc_bound_are_refused_by_grpc_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    """`api.grpc_concurrent_rpcs_max` is grpc.aio's own limiter: beyond it grpc answers RESOURCE_EXHAUSTED
    before any handler (ours included) runs, so the refused write never reaches the service."""
    async with serving(tmp_path, grpc_concurrent_rpcs_max=1) as http:
        api = http.api
        alice = await api.account("alice")
        committer = api.server.service.committer
        gate = EngineGate(api.server.engine)
        try:
            held = asyncio.create_task(api.post("held", credit(alice, 1)))
            await until(lambda: committer.in_flight_transfers == 1)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await api.post("refused", credit(alice, 2))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert committer.queued_transfers == 0 and committer.in_flight_transfers == 1
        finally:
            await gate.open()
        await held
        assert await api.available(alice) == 1
        # Once the held call has finished, the same key is served: the refusal wrote nothing.
        await api.post("refused", credit(alice, 2))
        assert await api.available(alice) == 3
