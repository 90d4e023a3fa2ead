"""Traces through the front processes: the real CLI (`ledger serve`) exports over OTLP/gRPC to a real
collector in this process (opentelemetry.proto's TraceService), a client's call carries a known W3C
`traceparent`, and the spans of both processes belong to the client's trace: the front's RPC span is
the client span's child, and the engine's process's engine.batch span (the group commit) is the RPC
span's child and links it. Each process's spans are flushed when SIGTERM stops it. With one process
(front_processes=0) the same holds: nothing was lost on the way to the fronts' default."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.auth import SCOPES_ALL, issue_token
from facade.settings import AuthSettings
from ledger_testkit.service import ledger_executable
from tests.api._serve import credit_new_account, fronts_of, serve_env
from tests.api.test_logs import json_lines

STOP_WAIT_SECONDS = 60.0
COLLECTOR_THREADS = 4
CLIENT_TRACE_ID = 0x5B8EFFF798038103D269B633813FC60C
CLIENT_SPAN_ID = 0xEEE19B7EC3C1B174
TRACEPARENT = f"00-{CLIENT_TRACE_ID:032x}-{CLIENT_SPAN_ID:016x}-01"
RPC_SPAN = "rpc /ledger.v1.Ledger/PostTransaction"


@dataclass(frozen=True, slots=True)
class Exported:
    """One span as the collector received it, with the exporting process's pid (resource process.pid)."""

    pid: int
    span: trace_pb2.Span


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace collector: keeps every span it is sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[Exported] = []

    def Export(  # noqa: N802  The generated service's method name.
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: Any,  # noqa: ARG002  The generated service's signature.
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received: list[Exported] = []
        for resource_spans in request.resource_spans:
            attributes = {item.key: item.value for item in resource_spans.resource.attributes}
            pid = attributes["process.pid"].int_value
            for scope_spans in resource_spans.scope_spans:
                received.extend(Exported(pid, span) for span in scope_spans.spans)
        with self._lock:
            self._spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self, name: str) -> list[Exported]:
        with self._lock:
            return [exported for exported in self._spans if exported.span.name == name]


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=COLLECTOR_THREADS))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield collector, port
    finally:
        server.stop(None)


@pytest.mark.parametrize("front_processes", [2, 0])
def test_a_call_through_the_fronts_is_one_trace_from_the_client_to_the_engine_batch(
    tmp_path: Path, collector: tuple[Collector, int], front_processes: int
) -> None:
    spans, port = collector
    env = serve_env(
        tmp_path,
        LEDGER_API__FRONT_PROCESSES=str(front_processes),
        LEDGER_OBSERVABILITY__OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_EXPORTER_OTLP_TRACES_INSECURE="true",
        # Each process's pid on its spans' resource (OpenTelemetry's process detector): tells the fronts'
        # spans from the engine's process's.
        OTEL_EXPERIMENTAL_RESOURCE_DETECTORS="process",
    )
    server = subprocess.Popen([ledger_executable(), "serve"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        [*_, serving] = json_lines(server.stdout, lambda line: line.get("event") == "serving")
        assert serving["front_processes"] == front_processes
        fronts = fronts_of(server.pid)
        assert len(fronts) == front_processes
        bearer = f"Bearer {issue_token(AuthSettings(), 'client-a', SCOPES_ALL)}"
        with grpc.insecure_channel(f"127.0.0.1:{serving['port']}") as channel:
            stub: Any = rpc.LedgerStub(channel)
            metadata = (("authorization", bearer), ("traceparent", TRACEPARENT))
            _, posted = credit_new_account(stub, metadata, idempotency_key="traced-1")
            assert posted.transaction_id
    finally:
        server.terminate()
        server.wait(timeout=STOP_WAIT_SECONDS)
    assert server.returncode == 0  # SIGTERM drains and exits cleanly; each process flushed its spans on the way.

    [call] = [exported for exported in spans.spans(RPC_SPAN) if exported.span.trace_id == CLIENT_TRACE_ID.to_bytes(16)]
    assert call.span.parent_span_id == CLIENT_SPAN_ID.to_bytes(8)  # The client's span is the RPC span's parent.
    assert call.pid in (fronts or [server.pid])  # Served by a front, when there are fronts.
    # The group commit's batch ran in the engine's process, as the RPC span's child, linking it.
    [batch] = [exported for exported in spans.spans("engine.batch") if exported.span.trace_id == call.span.trace_id]
    assert batch.pid == server.pid
    assert batch.span.parent_span_id == call.span.span_id
    assert [(link.trace_id, link.span_id) for link in batch.span.links] == [(call.span.trace_id, call.span.span_id)]
