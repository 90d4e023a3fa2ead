"""`ledger serve`'s front processes when api.front_processes is not set (facade.settings.settings_served):
SERVE_FRONT_PROCESSES_DEFAULT on the embedded engine and a host with that many cores, one process otherwise
or when set; the real CLI then serves the gRPC port from its fronts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.auth import SCOPES_ALL, issue_token
from facade.settings import SERVE_FRONT_PROCESSES_DEFAULT, ApiSettings, AuthSettings, EngineSettings, Settings
from facade.settings import settings_served as served
from ledger_testkit.service import ledger_executable
from tests.api._serve import credit_new_account, fronts_of, serve_env
from tests.api.test_logs import json_lines

STOP_WAIT_SECONDS = 60.0


def test_not_set_is_the_serve_default_on_the_embedded_engine_with_the_cores_for_it() -> None:
    assert served(Settings(), cpu_count=2).api.front_processes == SERVE_FRONT_PROCESSES_DEFAULT == 2
    assert served(Settings(), cpu_count=64).api.front_processes == SERVE_FRONT_PROCESSES_DEFAULT
    assert served(Settings(), cpu_count=1).api.front_processes == 0  # One core: fronts would only add hand-offs.
    assert served(Settings(), cpu_count=None).api.front_processes == 0
    tigerbeetle = Settings(engine=EngineSettings(backend="tigerbeetle"))
    assert served(tigerbeetle, cpu_count=2).api.front_processes == 0  # Not measured there: as set.
    for chosen in (0, 1, 3):  # Set (an environment variable, .env, or in code): kept as set.
        assert served(Settings(api=ApiSettings(front_processes=chosen)), cpu_count=2).api.front_processes == chosen
    settings = Settings()
    assert served(settings, cpu_count=2) is not settings and settings.api.front_processes == 0  # Not changed.


def test_not_set_in_the_environment_counts_as_not_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEDGER_API__FRONT_PROCESSES", raising=False)
    assert served(Settings(), cpu_count=2).api.front_processes == SERVE_FRONT_PROCESSES_DEFAULT
    monkeypatch.setenv("LEDGER_API__FRONT_PROCESSES", "0")
    assert served(Settings(), cpu_count=2).api.front_processes == 0


@pytest.mark.skipif((os.cpu_count() or 1) < SERVE_FRONT_PROCESSES_DEFAULT, reason="the default needs 2 cores")
def test_ledger_serve_without_the_setting_serves_from_its_default_fronts(tmp_path: Path) -> None:
    env = serve_env(tmp_path)
    server = subprocess.Popen([ledger_executable(), "serve"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        [*_, serving] = json_lines(server.stdout, lambda line: line.get("event") == "serving")
        assert serving["front_processes"] == SERVE_FRONT_PROCESSES_DEFAULT
        assert len(fronts_of(server.pid)) == SERVE_FRONT_PROCESSES_DEFAULT
        bearer = f"Bearer {issue_token(AuthSettings(), 'client-a', SCOPES_ALL)}"
        metadata = (("authorization", bearer),)
        with grpc.insecure_channel(f"127.0.0.1:{serving['port']}") as channel:
            stub: Any = rpc.LedgerStub(channel)
            account, posted = credit_new_account(stub, metadata, idempotency_key="default-fronts-1")
            assert posted.transaction_id
            balance = stub.GetBalance(pb.GetBalanceRequest(account_id=account.account_id), metadata=metadata)
            assert balance.posted == "250"
    finally:
        server.terminate()
        server.wait(timeout=STOP_WAIT_SECONDS)
    assert server.returncode == 0  # SIGTERM drains the fronts and exits cleanly.
