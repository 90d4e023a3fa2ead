"""The shipped compose layout for real: two `ledger serve` processes, each with its own metadata store,
over one real TigerBeetle cluster (TB_ADDRESSES; skipped otherwise). Client B (read + write, no admin)
can neither move nor read client A's account through the façade that does not know it; A can use it
through either."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from facade.api.errors import error_info
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.auth import SCOPE_ADMIN, SCOPE_READ, SCOPE_WRITE, issue_token
from facade.settings import AuthSettings
from ledger_testkit.service import ledger_executable
from tests.api.conftest import credit, debit, transfer
from tests.api.test_logs import json_lines

pytestmark = pytest.mark.skipif(
    not os.environ.get("TB_ADDRESSES"), reason="needs a TigerBeetle cluster: run with TB_ADDRESSES=3000"
)

READ_WRITE = frozenset({SCOPE_READ, SCOPE_WRITE})
ADMIN = frozenset({SCOPE_ADMIN, SCOPE_READ, SCOPE_WRITE})
STOP_SECONDS = 30


def facade_process(directory: Path, name: str) -> tuple[subprocess.Popen[str], int]:
    """`ledger serve` on the TigerBeetle backend with its own metadata store; returns it and its gRPC port."""
    process = subprocess.Popen(
        [ledger_command(), "serve"], env=facade_env(directory, name), cwd=directory, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    [*_, serving] = json_lines(process.stdout, lambda line: line.get("event") == "serving")
    return process, int(serving["port"])


def ledger_command() -> str:
    return ledger_executable()


def facade_env(directory: Path, name: str) -> dict[str, str]:
    env = os.environ | {
        "LEDGER_ENGINE__BACKEND": "tigerbeetle",
        "LEDGER_ENGINE__TB_ADDRESSES": os.environ["TB_ADDRESSES"],
        "LEDGER_ENGINE__TB_CLUSTER_ID": os.environ.get("TB_CLUSTER_ID", "0"),
        "LEDGER_API__PORT": "0",
        "LEDGER_API__HTTP_PORT": "-1",
        "LEDGER_API__METADATA_DB": str(directory / "metadata.sqlite3"),
        "LEDGER_OBSERVABILITY__METRICS_PORT": "-1",
        "LEDGER_OBSERVABILITY__LOG_JSON": "true",
        "LEDGER_CLICKHOUSE__SERVE_HISTORY": "false",
        "LEDGER_CONSISTENCY__INSTANCE_NAME": name,
        # The test cluster may hold other tests' data from before any marker: this façade joins it.
        "LEDGER_CONSISTENCY__JOIN_UNMARKED_ENGINE": "true",
    }
    directory.mkdir(parents=True, exist_ok=True)
    return env


@pytest.fixture
def facades(tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    run = uuid.uuid4().hex[:12]  # The cluster outlives the test: names unique per run.
    processes: list[subprocess.Popen[str]] = []
    channels: list[grpc.Channel] = []
    try:
        for index in (1, 2):
            process, port = facade_process(tmp_path / f"facade-{index}", f"tb-test-{run}-{index}")
            processes.append(process)
            channels.append(grpc.insecure_channel(f"127.0.0.1:{port}"))
        yield rpc.LedgerStub(channels[0]), rpc.LedgerStub(channels[1])
    finally:
        for channel in channels:
            channel.close()
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait(STOP_SECONDS)


def auth(client: str, scopes: frozenset[str]) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {issue_token(AuthSettings(), client, scopes)}"),)


def refused(call: Any, *args: Any, **kwargs: Any) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        call(*args, **kwargs)
    error: Any = raised.value
    assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
    info = error_info(error)
    assert info is not None and info.reason == "ACCOUNT_NOT_FOUND"


def test_two_facade_processes_on_one_tigerbeetle_cluster(facades: tuple[Any, Any]) -> None:
    first, second = facades
    run = uuid.uuid4().hex[:12]
    client_a, client_b = f"client-a-{run}", f"client-b-{run}"

    def create(stub: Any, client: str, reference: str) -> str:
        request = pb.CreateAccountRequest(
            currency="USD", external_reference=reference, type=pb.ACCOUNT_TYPE_NO_OVERDRAFT
        )
        return str(stub.CreateAccount(request, metadata=auth(client, ADMIN)).account_id)

    def post(stub: Any, client: str, key: str, leg: pb.Leg) -> None:
        stub.PostTransaction(
            pb.PostTransactionRequest(idempotency_key=key, legs=[leg]), metadata=auth(client, READ_WRITE)
        )

    def available(stub: Any, client: str, account: str) -> int:
        balance = stub.GetBalance(pb.GetBalanceRequest(account_id=account), metadata=auth(client, READ_WRITE))
        return int(balance.available)

    alice = create(first, client_a, "alice")
    post(first, client_a, "fund", credit(alice, 100_000))
    mallory = create(second, client_b, "mallory")

    refused(post, second, client_b, "steal", transfer(alice, mallory, 60_000))
    refused(post, second, client_b, "drain", debit(alice, 1_000))
    refused(second.GetBalance, pb.GetBalanceRequest(account_id=alice), metadata=auth(client_b, READ_WRITE))
    refused(post, first, client_b, "steal-1", transfer(alice, mallory, 60_000))
    assert (available(first, client_a, alice), available(second, client_b, mallory)) == (100_000, 0)

    assert available(second, client_a, alice) == 100_000  # The owner, from the engine.
    post(second, client_a, "cash-out", debit(alice, 1_000))
    assert available(first, client_a, alice) == 99_000


def test_a_facade_that_lost_its_store_refuses_to_start_on_tigerbeetle(tmp_path: Path) -> None:
    name = f"tb-test-{uuid.uuid4().hex[:12]}"
    process, port = facade_process(tmp_path, name)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub: Any = rpc.LedgerStub(channel)
            request = pb.CreateAccountRequest(currency="USD", external_reference="a", type=pb.ACCOUNT_TYPE_NO_OVERDRAFT)
            stub.CreateAccount(request, metadata=auth(f"client-{name}", ADMIN))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(STOP_SECONDS)
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"metadata.sqlite3{suffix}").unlink(missing_ok=True)
    refused_start = subprocess.run(
        [ledger_command(), "serve"],
        env=facade_env(tmp_path, name),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=STOP_SECONDS,
        check=False,
    )
    assert refused_start.returncode == 2, refused_start.stderr
    [line] = [json.loads(text) for text in refused_start.stdout.splitlines() if "refusing to start" in text]
    assert str(tmp_path / "metadata.sqlite3") in line["reason"] and "missing or new" in line["reason"]
    assert f"its own consistency.instance_name (not {name!r})" in line["reason"]  # The other likely cause.
