"""The write limit at the doors (facade.write_limit): writes beyond it are refused at once, on gRPC and HTTP.

Over loopback on the real service with the engine's writer held by a gate (tests.api.test_admission), so
the writes in progress are known exactly; what is checked is what was refused, with which reason and hint,
what committed afterwards and that every count is given back. The adaptive limit itself is checked on a
simulated clock. Nothing here asserts a duration.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import grpc
import pytest

from facade.api.errors import error_info
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.write_limit import (
    BULK_IN_FLIGHT_MAX,
    BULK_RECENT_SECONDS,
    INTERACTIVE_CONTENDED_MIN,
    LATENCY_TOLERANCE,
    LIMIT_INITIAL,
    LIMIT_MIN,
    LIMIT_MIN_BESIDE_BULK,
    WINDOW_SAMPLES_MIN,
    WINDOW_SECONDS,
    Lane,
    WriteLimit,
)
from tests.api.conftest import credit
from tests.api.test_admission import EngineGate, committer_idle, retry_delay_seconds, serving, until
from tests.http.test_gateway import Http
from tests.http.test_gateway import credit as json_credit

BULK_TRANSACTIONS = 5
WINDOWS = 40
WINDOW_STEP_SECONDS = WINDOW_SECONDS * 1.5
"""A simulated window's length: past WINDOW_SECONDS whatever the float sums round to."""


async def test_interactive_writes_beyond_the_limit_are_refused_on_grpc_and_http_then_served(tmp_path: Path) -> None:
    async with serving(tmp_path) as http:
        api = http.api
        alice = await api.account("alice")
        gate = EngineGate(api.server.engine)
        try:
            await interactive_limit(http, alice, gate)
        finally:
            await gate.open()


async def interactive_limit(http: Http, alice: str, gate: EngineGate) -> None:
    api = http.api
    limit = api.server.service.write_limit
    assert limit.limit == LIMIT_INITIAL
    limit.limit = float(LIMIT_MIN_BESIDE_BULK)  # As an overload with bulk requests leaves it.
    held = LIMIT_MIN_BESIDE_BULK
    waiting = [asyncio.create_task(api.post(f"held-{n}", credit(alice, 1))) for n in range(held)]
    await until(lambda: limit.in_flight[Lane.INTERACTIVE] == held)

    # Bytes that are no protobuf, without a token: refused before either is looked at.
    call: Any = api.channel.unary_unary("/ledger.v1.Ledger/PostTransaction")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(b"\xff\x00 not a protobuf message")
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (info := error_info(refused.value)) and info.reason == "TOO_MANY_REQUESTS"
    assert (delay := retry_delay_seconds(refused.value)) is not None and delay > 0
    # The gateway shares the limit: 429 before the body is read, with Retry-After.
    response = await http.client.post(
        "/v1/transactions",
        json={"idempotency_key": "http-refused", "legs": [json_credit(alice, 1)]},
        headers=http.auth(),
    )
    assert response.status_code == 429
    assert response.json()["reason"] == "TOO_MANY_REQUESTS"
    assert int(response.headers["Retry-After"]) >= 1
    assert limit.in_flight[Lane.INTERACTIVE] == held, "a refusal takes no count"

    await gate.open()
    await asyncio.gather(*waiting)
    await committer_idle(api.server.service)
    assert limit.in_flight[Lane.INTERACTIVE] == 0, "every admitted write gave its count back"
    assert await api.available(alice) == held, "the held writes committed, the refused ones wrote nothing"
    await api.post("after", credit(alice, 1))
    assert await api.available(alice) == held + 1


@pytest.mark.parametrize("lane_size", [None, BULK_IN_FLIGHT_MAX + 2], ids=["default", "api.bulk_in_flight_max"])
async def test_bulk_requests_beyond_their_lane_are_refused_while_single_writes_pass(
    tmp_path: Path, lane_size: int | None
) -> None:
    settings = {} if lane_size is None else {"bulk_in_flight_max": lane_size}
    async with serving(tmp_path, **settings) as http:
        api = http.api
        alice = await api.account("alice")
        gate = EngineGate(api.server.engine)
        try:
            await bulk_limit(http, alice, gate, lane_size or BULK_IN_FLIGHT_MAX)
        finally:
            await gate.open()


def bulk(key: str, alice: str) -> pb.PostTransactionsRequest:
    return pb.PostTransactionsRequest(
        transactions=[
            pb.PostTransactionRequest(idempotency_key=f"{key}-{i}", legs=[credit(alice, 1)])
            for i in range(BULK_TRANSACTIONS)
        ]
    )


async def bulk_limit(http: Http, alice: str, gate: EngineGate, lane_size: int) -> None:
    api = http.api
    limit = api.server.service.write_limit
    assert limit.bulk_limit == lane_size
    held = [
        asyncio.ensure_future(api.stub.PostTransactions(bulk(f"bulk-{n}", alice), metadata=api.auth()))
        for n in range(lane_size)
    ]
    await until(lambda: limit.in_flight[Lane.BULK] == lane_size)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await api.stub.PostTransactions(bulk("refused", alice), metadata=api.auth())
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (info := error_info(refused.value)) and info.reason == "TOO_MANY_REQUESTS"
    response = await http.client.post(
        "/v1/transactions:batch",
        json={"transactions": [{"idempotency_key": "http-bulk", "legs": [json_credit(alice, 1)]}]},
        headers=http.auth(),
    )
    assert response.status_code == 429 and response.json()["reason"] == "TOO_MANY_REQUESTS"
    single = asyncio.create_task(api.post("single", credit(alice, 1)))  # Its own lane: admitted.
    await until(lambda: limit.in_flight[Lane.INTERACTIVE] == 1)

    await gate.open()
    await asyncio.gather(*held, single)
    await committer_idle(api.server.service)
    assert limit.in_flight == {Lane.INTERACTIVE: 0, Lane.BULK: 0}
    assert await api.available(alice) == lane_size * BULK_TRANSACTIONS + 1


async def test_a_write_whose_caller_gives_up_gives_its_count_back(tmp_path: Path) -> None:
    async with serving(tmp_path) as http:
        api = http.api
        alice = await api.account("alice")
        limit = api.server.service.write_limit
        gate = EngineGate(api.server.engine)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await api.stub.PostTransaction(
                    pb.PostTransactionRequest(idempotency_key="gives-up", legs=[credit(alice, 1)]),
                    metadata=api.auth(),
                    timeout=0.5,
                )
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            await gate.open()
        await committer_idle(api.server.service)
        await until(lambda: limit.in_flight[Lane.INTERACTIVE] == 0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def window(limit: WriteLimit, clock: Clock, seconds: float, in_flight: int) -> None:
    """One window of answers each `seconds` long, `in_flight` interactive writes in progress meanwhile."""
    for _ in range(in_flight):
        assert limit.acquire(Lane.INTERACTIVE)
    clock.now += WINDOW_STEP_SECONDS
    for _ in range(max(in_flight, WINDOW_SAMPLES_MIN)):
        if limit.in_flight[Lane.INTERACTIVE] == 0:
            assert limit.acquire(Lane.INTERACTIVE)
        limit.release(Lane.INTERACTIVE, seconds)


def test_the_limit_shrinks_while_writes_are_slow_and_grows_back_only_while_in_use() -> None:
    clock = Clock()
    limit = WriteLimit(clock=clock)
    for _ in range(WINDOWS):
        window(limit, clock, 0.002, in_flight=4)
    assert limit.baseline_seconds == 0.002
    assert limit.limit == LIMIT_INITIAL, "fast but a fraction in use: no growth"
    assert limit.bulk_limit == BULK_IN_FLIGHT_MAX

    slow = 0.002 * LATENCY_TOLERANCE * 4
    limits = []
    for _ in range(WINDOWS):
        window(limit, clock, slow, in_flight=int(limit.limit))
        limits.append(limit.limit)
    assert all(later <= earlier for earlier, later in itertools.pairwise(limits))
    assert limits[-1] == LIMIT_MIN, "bounded below"
    assert limit.bulk_limit == 1, "bulk cut back while single writes are slow"

    assert limit.acquire(Lane.BULK)  # A bulk request runs: single writes may be cut back further.
    limits = []
    for _ in range(WINDOWS):
        window(limit, clock, slow, in_flight=int(limit.limit))
        limits.append(limit.limit)
    assert all(later <= earlier for earlier, later in itertools.pairwise(limits))
    assert limits[-1] == LIMIT_MIN_BESIDE_BULK
    assert limit.baseline_seconds < 0.002 * 1.1, "an overload of seconds does not move the baseline much"
    limit.release(Lane.BULK, slow)

    limits = []
    for _ in range(2 * WINDOWS):
        window(limit, clock, 0.002, in_flight=int(limit.limit))
        limits.append(limit.limit)
    assert limits[0] == LIMIT_MIN, "without bulk requests the floor is back at once"
    assert all(later >= earlier for earlier, later in itertools.pairwise(limits))
    assert limits[-1] > LIMIT_INITIAL, "fast and in use: room for more"
    assert limit.bulk_limit == BULK_IN_FLIGHT_MAX


def test_an_empty_lane_admits_one_whatever_the_limit() -> None:
    limit = WriteLimit(bulk_max=1)
    assert limit.acquire(Lane.BULK)
    assert not limit.acquire(Lane.BULK)
    limit.release(Lane.BULK, 1.0)
    assert limit.acquire(Lane.BULK)
    assert limit.in_flight == {Lane.INTERACTIVE: 0, Lane.BULK: 1}


def test_the_bulk_cut_back_holds_only_while_single_writes_are_contended() -> None:
    clock = Clock()
    limit = WriteLimit(clock=clock)
    window(limit, clock, 0.002, in_flight=INTERACTIVE_CONTENDED_MIN)
    window(limit, clock, 0.002 * LATENCY_TOLERANCE * 4, in_flight=1)
    assert limit.bulk_limit == BULK_IN_FLIGHT_MAX, "one slow single write is no contention"
    window(limit, clock, 0.002 * LATENCY_TOLERANCE * 4, in_flight=INTERACTIVE_CONTENDED_MIN)
    assert limit.bulk_limit == 1

    assert limit.acquire(Lane.BULK)
    assert limit.in_flight[Lane.INTERACTIVE] == 0
    assert limit.acquire(Lane.BULK), "no single writes in progress: nothing to protect"
    for _ in range(INTERACTIVE_CONTENDED_MIN):
        assert limit.acquire(Lane.INTERACTIVE)
    assert not limit.acquire(Lane.BULK), "single writes contended: cut back"
    limit.release(Lane.INTERACTIVE, 0.002)
    assert all(limit.acquire(Lane.BULK) for _ in range(BULK_IN_FLIGHT_MAX - 2))
    assert not limit.acquire(Lane.BULK)
    assert limit.in_flight[Lane.BULK] == BULK_IN_FLIGHT_MAX


def test_more_bulk_callers_than_the_lane_takes_cut_bulk_back_while_single_writes_are_slow() -> None:
    clock = Clock()
    limit = WriteLimit(clock=clock)
    window(limit, clock, 0.002, in_flight=1)
    for _ in range(BULK_IN_FLIGHT_MAX):
        assert limit.acquire(Lane.BULK)
    assert not limit.has_room(Lane.BULK), "one more bulk caller than the lane takes"
    window(limit, clock, 0.002 * LATENCY_TOLERANCE * 4, in_flight=1)  # Few single writes, slow.
    assert limit.bulk_limit == 1
    for _ in range(BULK_IN_FLIGHT_MAX - 1):
        limit.release(Lane.BULK, 0.5)
    assert not limit.has_room(Lane.BULK), "oversubscribed: cut back though few single writes are counted"
    window(limit, clock, 0.002 * LATENCY_TOLERANCE * 4, in_flight=1)  # The window of that refusal ends.
    window(limit, clock, 0.002 * LATENCY_TOLERANCE * 4, in_flight=1)  # A window without bulk refusals.
    assert limit.has_room(Lane.BULK)


def test_the_floor_beside_bulk_holds_between_bulk_requests() -> None:
    clock = Clock()
    limit = WriteLimit(clock=clock)
    window(limit, clock, 0.002, in_flight=1)
    assert limit.acquire(Lane.BULK)
    limit.release(Lane.BULK, 0.5)
    slow = 0.002 * LATENCY_TOLERANCE * 4
    windows = int(BULK_RECENT_SECONDS / WINDOW_STEP_SECONDS) - 1
    for _ in range(windows):  # No bulk request in progress, the last admitted less than a second ago.
        window(limit, clock, slow, in_flight=int(limit.limit))
    assert LIMIT_MIN_BESIDE_BULK <= limit.limit < LIMIT_MIN
    for _ in range(windows):
        window(limit, clock, slow, in_flight=int(limit.limit))
    assert limit.limit == LIMIT_MIN, "a second after the last bulk request the floor is back"
