"""The structured log as operators get it: run the real `ledger serve`, call it over loopback with a
request id, a correlation id and a trace context, and find one JSON line that carries all three."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import time
from pathlib import Path
from typing import IO, Any

import grpc
import pytest

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.auth import SCOPES_ALL, issue_token
from facade.settings import AuthSettings
from ledger_testkit.service import ledger_executable

WAIT_SECONDS = 60.0
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def json_lines(stream: IO[str], until: Any) -> list[dict[str, Any]]:
    """Reads JSON lines from the server's stdout until one satisfies `until` (or the wait ends)."""
    lines: list[dict[str, Any]] = []
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if not selector.select(timeout=0.5):
            continue
        text = stream.readline()
        assert text, "the server exited"
        line = json.loads(text)  # Every line is one JSON object.
        lines.append(line)
        if until(line):
            return lines
    raise AssertionError(f"no matching log line in {lines}")


def test_a_request_log_line_carries_request_correlation_and_trace_ids(tmp_path: Path) -> None:
    env = os.environ | {
        "LEDGER_API__PORT": "0",
        "LEDGER_ENGINE__DATA_DIR": str(tmp_path / "engine"),
        "LEDGER_API__METADATA_DB": str(tmp_path / "metadata.sqlite3"),
        "LEDGER_OBSERVABILITY__METRICS_PORT": "-1",
        "LEDGER_API__HTTP_PORT": "-1",
        "LEDGER_CLICKHOUSE__SERVE_HISTORY": "false",
        "LEDGER_OBSERVABILITY__LOG_JSON": "true",
        "LEDGER_OBSERVABILITY__RPC_LOG_SAMPLE_EVERY": "1",  # Every call: this test is about one line's content.
    }
    ledger = ledger_executable()
    server = subprocess.Popen([ledger, "serve"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        [*_, serving] = json_lines(server.stdout, lambda line: line.get("event") == "serving")
        assert serving["level"] == "info" and serving["service"] == "ledger-service" and "timestamp" in serving
        token = issue_token(AuthSettings(), "client-a", SCOPES_ALL)
        metadata = (
            ("authorization", f"Bearer {token}"),
            ("x-request-id", "req-42"),
            ("x-correlation-id", "order-42"),
            ("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01"),
        )
        with grpc.insecure_channel(f"127.0.0.1:{serving['port']}") as channel:
            stub: Any = rpc.LedgerStub(channel)
            account = stub.CreateAccount(
                pb.CreateAccountRequest(currency="USD", external_reference="a", type=pb.ACCOUNT_TYPE_NO_OVERDRAFT),
                metadata=metadata,
            )
            assert account.account_id
        [*_, line] = json_lines(server.stdout, lambda line: line.get("request_id") == "req-42")
        assert line["event"] == "rpc" and line["method"] == "CreateAccount" and line["code"] == "OK"
        assert line["correlation_id"] == "order-42"
        assert line["trace_id"] == TRACE_ID
        assert isinstance(line["duration_ms"], float | int)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.returncode == 0  # SIGTERM drains and exits cleanly.


def test_request_log_lines_are_sampled_but_failed_calls_always_logged(tmp_path: Path) -> None:
    """Default sampling keeps the hot path free of a log line per call: quick successes are logged 1 in
    N (the first call included), a failed call always is."""
    env = os.environ | {
        "LEDGER_API__PORT": "0",
        "LEDGER_ENGINE__DATA_DIR": str(tmp_path / "engine"),
        "LEDGER_API__METADATA_DB": str(tmp_path / "metadata.sqlite3"),
        "LEDGER_OBSERVABILITY__METRICS_PORT": "-1",
        "LEDGER_API__HTTP_PORT": "-1",
        "LEDGER_CLICKHOUSE__SERVE_HISTORY": "false",
        "LEDGER_OBSERVABILITY__LOG_JSON": "true",
        "LEDGER_OBSERVABILITY__RPC_LOG_SLOW_MS": "60000",  # No call here is slow enough to be logged for it.
    }
    ledger = ledger_executable()
    server = subprocess.Popen([ledger, "serve"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        [*_, serving] = json_lines(server.stdout, lambda line: line.get("event") == "serving")
        metadata = (("authorization", f"Bearer {issue_token(AuthSettings(), 'client-a', SCOPES_ALL)}"),)
        with grpc.insecure_channel(f"127.0.0.1:{serving['port']}") as channel:
            stub: Any = rpc.LedgerStub(channel)
            account = stub.CreateAccount(
                pb.CreateAccountRequest(currency="USD", external_reference="a", type=pb.ACCOUNT_TYPE_NO_OVERDRAFT),
                metadata=(*metadata, ("x-request-id", "first")),
            )
            for n in range(5):
                found = stub.GetAccount(
                    pb.GetAccountRequest(account_id=account.account_id),
                    metadata=(*metadata, ("x-request-id", f"quiet-{n}")),
                )
                assert found.account_id == account.account_id
            with pytest.raises(grpc.RpcError) as failed:
                stub.GetAccount(
                    pb.GetAccountRequest(account_id="0" * 31 + "1"), metadata=(*metadata, ("x-request-id", "failing"))
                )
            assert failed.value.code() != grpc.StatusCode.OK
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.returncode == 0
    # Everything it wrote, read after it stopped (readline buffering would hide lines from a selector).
    lines = [json.loads(text) for text in server.stdout.read().splitlines()]
    logged = [(line["request_id"], line["code"]) for line in lines if line.get("event") == "rpc"]
    assert logged == [("first", "OK"), ("failing", failed.value.code().name)]
