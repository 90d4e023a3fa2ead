"""Many façades, one truth: real `ledger serve` processes sharing the PostgreSQL metadata store, called
over loopback gRPC. A retry through another façade returns the original outcome: the commit (same
engine timestamp, deduplicated), and a recorded failure with its original reason (never the engine's
id_already_failed), and a key reused with another body is refused.

- Over the embedded engine (single writer): one façade after the other on the same journal; the first
  is killed (SIGKILL) after its answers, so only what was durable before each ack is left.
- Over a TigerBeetle cluster (TB_ADDRESSES; skipped otherwise): side by side.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import grpc
import pytest

from facade.api.errors import error_info
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.auth import SCOPES_ALL, issue_token
from facade.settings import AuthSettings
from tests.api.conftest import credit, debit
from tests.api.test_ownership_tigerbeetle import ledger_command

STOP_SECONDS = 30
WAIT_SECONDS = 60.0


def facade_env(directory: Path, dsn: str, **engine: str) -> dict[str, str]:
    """A façade whose metadata lives in PostgreSQL (its own directory holds no metadata)."""
    directory.mkdir(parents=True, exist_ok=True)
    return (
        os.environ
        | {
            "LEDGER_API__PORT": "0",
            "LEDGER_API__HTTP_PORT": "-1",
            "LEDGER_API__METADATA_BACKEND": "postgres",
            "LEDGER_API__METADATA_DSN": dsn,
            "LEDGER_API__METADATA_DB": str(directory / "unused.sqlite3"),
            "LEDGER_OBSERVABILITY__METRICS_PORT": "-1",
            "LEDGER_OBSERVABILITY__LOG_JSON": "true",
            "LEDGER_CLICKHOUSE__SERVE_HISTORY": "false",
            "LEDGER_KAFKA__BOOTSTRAP_SERVERS": "",
        }
        | {f"LEDGER_{key.upper()}": value for key, value in engine.items()}
    )


class LogLines:
    """A server's JSON log lines, read by a thread: the pipe never fills, and a line already buffered
    is never missed (select() does not see what a text stream has read ahead)."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for text in stream:
            try:
                self._lines.put(json.loads(text))
            except ValueError:  # Not ours to judge here (tests/api/test_logs.py is): kept as text.
                self._lines.put({"text": text})

    def wait(self, event: str) -> dict[str, Any]:
        """The next line logging `event`; fails after WAIT_SECONDS."""
        deadline = time.monotonic() + WAIT_SECONDS
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line.get("event") == event:
                return line
        raise AssertionError(f"no {event!r} log line within {WAIT_SECONDS} s")


class Facade:
    """One `ledger serve` process and a gRPC stub on its port."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [ledger_command(), "serve"], env=env, cwd=directory, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        serving = LogLines(self.process.stdout).wait("serving")
        self.channel = grpc.insecure_channel(f"127.0.0.1:{serving['port']}")
        self.stub: Any = rpc.LedgerStub(self.channel)
        assert not (directory / "unused.sqlite3").exists()  # Its SQLite store is not what it uses.

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self.channel.close()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        self.process.wait(STOP_SECONDS)


def auth(client: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {issue_token(AuthSettings(), client, SCOPES_ALL)}"),)


def post(stub: Any, client: str, key: str, *legs: pb.Leg) -> pb.Transaction:
    request = pb.PostTransactionRequest(idempotency_key=key, legs=list(legs))
    response: pb.Transaction = stub.PostTransaction(request, metadata=auth(client))
    return response


def refusal(stub: Any, client: str, key: str, *legs: pb.Leg) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.RpcError) as raised:
        post(stub, client, key, *legs)
    error: Any = raised.value
    info = error_info(error)
    assert info is not None
    return error.code(), info.reason, error.details()


class Outcomes:
    """What the first façade answered, for the second to reproduce."""

    def __init__(self, stub: Any, client: str, reference: str) -> None:
        self.client = client
        self.reference = reference
        account = stub.CreateAccount(
            pb.CreateAccountRequest(
                currency="USD", external_reference=reference, owner=reference, type=pb.ACCOUNT_TYPE_NO_OVERDRAFT
            ),
            metadata=auth(client),
        )
        self.account_id = str(account.account_id)
        self.funded = post(stub, client, "fund", credit(self.account_id, 10))
        self.refused = refusal(stub, client, "overdraft", debit(self.account_id, 50))
        assert self.refused[:2] == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
        self.spent = post(stub, client, "spend", debit(self.account_id, 3))

    def check_retries_through(self, stub: Any) -> None:
        client, account_id = self.client, self.account_id
        funded = post(stub, client, "fund", credit(account_id, 10))
        assert funded.deduplicated and funded.committed_at_ns == self.funded.committed_at_ns
        assert funded.transaction_id == self.funded.transaction_id
        # The recorded failure, with its original reason and message: not IDEMPOTENCY_KEY_FAILED.
        assert refusal(stub, client, "overdraft", debit(account_id, 50)) == self.refused
        code, reason, _ = refusal(stub, client, "spend", debit(account_id, 4))
        assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
        by_key = stub.GetTransaction(pb.GetTransactionRequest(idempotency_key="spend"), metadata=auth(client))
        assert by_key.committed_at_ns == self.spent.committed_at_ns
        # The account's metadata is the first façade's record (the same owner and reference).
        account = stub.GetAccount(pb.GetAccountRequest(account_id=account_id), metadata=auth(client))
        assert (account.external_reference, account.owner) == (self.reference, self.reference)
        balance = stub.GetBalance(pb.GetBalanceRequest(account_id=account_id), metadata=auth(client))
        assert int(balance.available) == 7


def test_a_retry_through_the_next_facade_returns_the_original_outcome(tmp_path: Path, postgres_dsn: str) -> None:
    """Embedded engine (single writer): façade 1 serves, is killed; façade 2 on the same journal and the
    same PostgreSQL store answers every retry as façade 1 did."""
    engine = {"engine__data_dir": str(tmp_path / "engine")}
    first = Facade(tmp_path / "facade-1", facade_env(tmp_path / "facade-1", postgres_dsn, **engine))
    try:
        outcomes = Outcomes(first.stub, "client-a", "alice")
    finally:
        first.stop(signal.SIGKILL)  # Nothing flushed at exit: only what was durable before each ack.
    second = Facade(tmp_path / "facade-2", facade_env(tmp_path / "facade-2", postgres_dsn, **engine))
    try:
        outcomes.check_retries_through(second.stub)
        # And the other way round: a new outcome recorded by façade 2 is in the shared store.
        post(second.stub, "client-a", "second", credit(outcomes.account_id, 1))
    finally:
        second.stop()
    third = Facade(tmp_path / "facade-3", facade_env(tmp_path / "facade-3", postgres_dsn, **engine))
    try:
        again = post(third.stub, "client-a", "second", credit(outcomes.account_id, 1))
        assert again.deduplicated
    finally:
        third.stop()


@pytest.fixture
def tigerbeetle_facades(tmp_path: Path, postgres_dsn: str) -> Iterator[tuple[Facade, Facade]]:
    if not os.environ.get("TB_ADDRESSES"):
        pytest.skip("needs a TigerBeetle cluster: run with TB_ADDRESSES=3000")
    engine = {
        "engine__backend": "tigerbeetle",
        "engine__tb_addresses": os.environ["TB_ADDRESSES"],
        "engine__tb_cluster_id": os.environ.get("TB_CLUSTER_ID", "0"),
        # The cluster outlives the test: one deployment name per run (both façades share it and the store).
        "consistency__instance_name": f"shared-{uuid.uuid4().hex[:12]}",
        "consistency__join_unmarked_engine": "true",
    }
    started: list[Facade] = []
    try:
        for index in (1, 2):  # One after the other: the second finds the first's marker in both places.
            directory = tmp_path / f"facade-{index}"
            started.append(Facade(directory, facade_env(directory, postgres_dsn, **engine)))
        yield started[0], started[1]
    finally:
        for facade in started:
            facade.stop()


def test_facades_side_by_side_over_tigerbeetle_share_outcomes(tigerbeetle_facades: tuple[Facade, Facade]) -> None:
    first, second = tigerbeetle_facades
    run = uuid.uuid4().hex[:12]
    outcomes = Outcomes(first.stub, f"client-{run}", f"alice-{run}")
    outcomes.check_retries_through(second.stub)
    # Both serving at once: a key first used through façade 2 replays through façade 1.
    through_second = post(second.stub, outcomes.client, "second", credit(outcomes.account_id, 1))
    through_first = post(first.stub, outcomes.client, "second", credit(outcomes.account_id, 1))
    assert through_first.deduplicated and through_first.committed_at_ns == through_second.committed_at_ns
