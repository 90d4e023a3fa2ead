"""The ops endpoints over loopback HTTP: liveness, readiness per dependency (and while draining), and
Prometheus metrics that move exactly as known traffic says they must."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from facade.api.errors import error_info
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.ops import Readiness, kafka_check
from facade.kafka.topics import TopicHealth
from facade.settings import KafkaSettings
from tests.api.conftest import Api, credit, debit, open_api


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    instance = await open_api(tmp_path, history=True)
    try:
        yield instance
    finally:
        await instance.channel.close()
        await instance.server.stop()


def ops_url(api: Api, path: str) -> str:
    assert api.server.ops is not None
    return f"http://127.0.0.1:{api.server.ops.port}{path}"


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(api: Api) -> Samples:
    async with httpx.AsyncClient() as client:
        response = await client.get(ops_url(api, "/metrics"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_health_and_readiness(api: Api) -> None:
    async with httpx.AsyncClient() as client:
        live = await client.get(ops_url(api, "/healthz"))
        assert (live.status_code, live.json()) == (200, {"status": "ok"})
        ready = await client.get(ops_url(api, "/readyz"))
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "ready" and set(body["checks"]) == {"engine", "metadata", "consistency"}
        assert all(check["ok"] for check in body["checks"].values())
        assert set(body["dependencies"]) == {"clickhouse", "audit"} and body["dependencies"]["clickhouse"]["ok"] is True
        assert body["dependencies"]["audit"]["ok"] is True  # The self-audit found nothing wrong.

        assert api.server.readiness is not None
        api.server.readiness.draining = True  # What stop() does first.
        draining = await client.get(ops_url(api, "/readyz"))
        assert draining.status_code == 503 and draining.json()["draining"] is True
        assert (await client.get(ops_url(api, "/healthz"))).status_code == 200  # Alive while draining.


async def test_readiness_names_an_unreachable_kafka() -> None:
    with socket.socket() as unused:  # A loopback port with nothing listening.
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]

    async def engine_ok() -> None:
        return None

    readiness = Readiness(
        {"engine": engine_ok, "kafka": kafka_check(TopicHealth(KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")))}
    )
    ready, body = await readiness.report()
    assert not ready and body["status"] == "not_ready"
    checks = body["checks"]
    assert isinstance(checks, dict)
    assert checks["engine"]["ok"] is True
    assert checks["kafka"]["ok"] is False and checks["kafka"]["error"]


async def test_metrics_move_with_known_traffic(api: Api) -> None:
    alice = await api.account("alice")
    before = await scrape(api)
    for key in ("m1", "m2", "m3"):
        await api.post(key, credit(alice, 100))
    await api.post("m1", credit(alice, 100))  # An idempotent replay.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await api.post("m4", debit(alice, 1_000_000))
    assert (info := error_info(refused.value)) and info.reason == "INSUFFICIENT_FUNDS"
    await api.stub.GetBalance(pb.GetBalanceRequest(account_id=alice), metadata=api.auth())
    after = await scrape(api)

    assert delta(before, after, "ledger_transactions_total", outcome="created", reason="") == 3
    assert delta(before, after, "ledger_transactions_total", outcome="deduplicated", reason="") == 1
    assert delta(before, after, "ledger_transactions_total", outcome="rejected", reason="INSUFFICIENT_FUNDS") == 1
    assert delta(before, after, "ledger_deduplicated_requests_total") == 1
    ok = {"edge": "grpc", "method": "PostTransaction", "code": "OK"}
    assert delta(before, after, "ledger_request_duration_seconds_count", **ok) == 4
    failed = {"edge": "grpc", "method": "PostTransaction", "code": "FAILED_PRECONDITION"}
    assert delta(before, after, "ledger_request_duration_seconds_count", **failed) == 1
    read = {"edge": "grpc", "method": "GetBalance", "code": "OK"}
    assert delta(before, after, "ledger_request_duration_seconds_count", **read) == 1
    # Every request landed in a bucket at or below +Inf, and p99-relevant buckets exist below 100 ms.
    assert delta(before, after, "ledger_request_duration_seconds_bucket", **ok, le="+Inf") == 4
    assert ("ledger_request_duration_seconds_bucket", frozenset((ok | {"le": "0.025"}).items())) in after
    # Durable engine batches: at least one per distinct write round (the replay needs no engine write).
    assert delta(before, after, "ledger_engine_batch_size_count", operation="create_transfers") >= 3
    assert delta(before, after, "ledger_journal_fsync_seconds_count") >= 3
    assert delta(before, after, "ledger_engine_results_total", operation="create_transfers", status="CREATED") >= 3
