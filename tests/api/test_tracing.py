"""Traces over loopback gRPC: the client's trace continues into the RPC span, and the group-commit
batch that made the write durable is a child of that RPC (and links every request it carried)."""

from __future__ import annotations

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.observability.tracing import inject_metadata, tracer
from tests.api.conftest import Api, credit


async def test_rpc_and_engine_batch_spans_continue_the_client_trace(
    api: Api, span_exporter: InMemorySpanExporter
) -> None:
    alice = await api.account("alice")
    span_exporter.clear()
    with tracer().start_as_current_span("client.pay") as client_span:
        metadata = (*api.auth(), *inject_metadata(), ("x-correlation-id", "order-1"))
        await api.stub.PostTransaction(
            pb.PostTransactionRequest(idempotency_key="t1", legs=[credit(alice, 100)]),
            metadata=metadata,
        )
    client = client_span.get_span_context()
    spans = {span.name: span for span in span_exporter.get_finished_spans()}
    rpc = spans["rpc /ledger.v1.Ledger/PostTransaction"]
    batch = spans["engine.batch"]
    assert rpc.context is not None and batch.context is not None
    assert rpc.context.trace_id == batch.context.trace_id == client.trace_id
    assert rpc.parent is not None and rpc.parent.span_id == client.span_id
    assert batch.parent is not None and batch.parent.span_id == rpc.context.span_id
    assert [link.context.span_id for link in batch.links] == [rpc.context.span_id]
    assert batch.attributes is not None and batch.attributes["ledger.batch.transfers"] == 1
    assert rpc.attributes is not None and rpc.attributes["rpc.grpc.status_code"] == "OK"
