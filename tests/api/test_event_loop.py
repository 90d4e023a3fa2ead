"""`ledger serve` on uvloop (api.event_loop=uvloop; front processes always run it): the real CLI, one
process and behind a front, answers over gRPC and the JSON gateway as on asyncio's loop, replays an
idempotent write, refuses a caller without credentials, and drains and exits cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.auth import SCOPES_ALL, issue_token
from facade.settings import AuthSettings
from ledger_testkit.ports import free_port
from ledger_testkit.service import ledger_executable
from tests.api.test_logs import json_lines

STOP_WAIT_SECONDS = 60.0


@pytest.mark.parametrize("front_processes", [0, 1])
def test_serve_on_uvloop_answers_as_on_asyncio(tmp_path: Path, front_processes: int) -> None:
    http_port = free_port()
    env = os.environ | {
        "LEDGER_API__EVENT_LOOP": "uvloop",
        "LEDGER_API__FRONT_PROCESSES": str(front_processes),
        "LEDGER_API__PORT": "0",
        "LEDGER_API__HTTP_PORT": str(http_port),
        "LEDGER_ENGINE__DATA_DIR": str(tmp_path / "engine"),
        "LEDGER_API__METADATA_DB": str(tmp_path / "metadata.sqlite3"),
        "LEDGER_OBSERVABILITY__METRICS_PORT": "-1",
        "LEDGER_CLICKHOUSE__SERVE_HISTORY": "false",
        "LEDGER_OBSERVABILITY__LOG_JSON": "true",
    }
    server = subprocess.Popen([ledger_executable(), "serve"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        [*_, serving] = json_lines(server.stdout, lambda line: line.get("event") == "serving")
        assert serving["front_processes"] == front_processes
        bearer = f"Bearer {issue_token(AuthSettings(), 'client-a', SCOPES_ALL)}"
        metadata = (("authorization", bearer),)
        with grpc.insecure_channel(f"127.0.0.1:{serving['port']}") as channel:
            stub: Any = rpc.LedgerStub(channel)
            account = stub.CreateAccount(
                pb.CreateAccountRequest(currency="USD", external_reference="a", type=pb.ACCOUNT_TYPE_NO_OVERDRAFT),
                metadata=metadata,
            )
            credit = pb.PostTransactionRequest(
                idempotency_key="uv-1",
                legs=[pb.Leg(type=pb.LEG_TYPE_CREDIT, account_id=account.account_id, amount="250", currency="USD")],
            )
            first = stub.PostTransaction(credit, metadata=metadata)
            again = stub.PostTransaction(credit, metadata=metadata)  # An idempotent replay: the same answer.
            assert again.transaction_id == first.transaction_id and again.committed_at_ns == first.committed_at_ns
            with pytest.raises(grpc.RpcError) as refused:
                stub.PostTransaction(credit)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        balance = httpx.get(
            f"http://127.0.0.1:{http_port}/v1/accounts/{account.account_id}/balance",
            headers={"authorization": bearer},
            timeout=STOP_WAIT_SECONDS,
        )
        assert balance.status_code == 200, balance.text
        assert json.loads(balance.text)["credits_posted"] == "250"
    finally:
        server.terminate()
        server.wait(timeout=STOP_WAIT_SECONDS)
    assert server.returncode == 0  # SIGTERM drains and exits cleanly.
