"""`ledger serve --workers N`: refused with a clear message where it cannot be right (the embedded
engine is single-writer; per-worker SQLite stores would not share idempotency records), and over a real
TigerBeetle cluster (TB_ADDRESSES; skipped otherwise) N worker processes serve one port, sharing the
PostgreSQL metadata store: a retry through any connection replays the original outcome."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.app import start
from ledger_testkit.ports import free_port
from tests.api.conftest import Api, credit, make_settings
from tests.api.test_ownership_tigerbeetle import ledger_command
from tests.metadata.test_shared_facades import LogLines, auth, facade_env, post

WORKERS = 3
CONNECTIONS = 12
STOP_SECONDS = 30


def refusal(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ledger_command(), "serve", "--workers", "2"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=STOP_SECONDS,
        check=False,
    )


def test_workers_are_refused_with_the_embedded_engine(tmp_path: Path) -> None:
    env = os.environ | {"LEDGER_ENGINE__BACKEND": "embedded", "LEDGER_ENGINE__DATA_DIR": str(tmp_path / "engine")}
    refused = refusal(env, tmp_path)
    assert refused.returncode == 1
    assert "needs the TigerBeetle backend" in refused.stderr and "single-writer" in refused.stderr
    assert not (tmp_path / "engine").exists()  # Refused before anything was opened.


def test_workers_are_refused_with_a_store_per_worker(tmp_path: Path) -> None:
    env = os.environ | {"LEDGER_ENGINE__BACKEND": "tigerbeetle", "LEDGER_API__METADATA_BACKEND": "sqlite"}
    refused = refusal(env, tmp_path)
    assert refused.returncode == 1 and "needs the shared metadata store" in refused.stderr


def children(pid: int) -> set[int]:
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def tigerbeetle_workers_env(tmp_path: Path, postgres_dsn: str, port: int) -> dict[str, str]:
    if not os.environ.get("TB_ADDRESSES"):
        pytest.skip("needs a TigerBeetle cluster: run with TB_ADDRESSES=3000")
    return facade_env(
        tmp_path,
        postgres_dsn,
        engine__backend="tigerbeetle",
        engine__tb_addresses=os.environ["TB_ADDRESSES"],
        engine__tb_cluster_id=os.environ.get("TB_CLUSTER_ID", "0"),
        consistency__instance_name=f"workers-{uuid.uuid4().hex[:12]}",
        consistency__join_unmarked_engine="true",
        api__port=str(port),
    )


def wait_serving(supervisor: subprocess.Popen[str], workers: int) -> list[dict[str, Any]]:
    """The "serving" line of each worker (worker 0 first, then the others)."""
    assert supervisor.stdout is not None
    lines = LogLines(supervisor.stdout)
    return [lines.wait("serving") for _ in range(workers)]


def test_workers_share_one_port_over_tigerbeetle(tmp_path: Path, postgres_dsn: str) -> None:
    port = free_port()
    env = tigerbeetle_workers_env(tmp_path, postgres_dsn, port)
    supervisor = subprocess.Popen(
        [ledger_command(), "serve", "--workers", str(WORKERS)], env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    try:
        serving = wait_serving(supervisor, WORKERS)
        assert {line["port"] for line in serving} == {port}
        assert {line["pid"] for line in serving} == children(supervisor.pid)  # N distinct worker processes.
        run = uuid.uuid4().hex[:12]
        client = f"client-{run}"
        outcomes: list[pb.Transaction] = []
        for index in range(CONNECTIONS):  # A new connection each: the kernel picks a worker per connection.
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub: Any = rpc.LedgerStub(channel)
                if index == 0:
                    account = stub.CreateAccount(
                        pb.CreateAccountRequest(
                            currency="USD", external_reference=run, owner=run, type=pb.ACCOUNT_TYPE_NO_OVERDRAFT
                        ),
                        metadata=auth(client),
                    )
                    account_id = str(account.account_id)
                outcomes.append(post(stub, client, "once", credit(account_id, 5)))
        assert not outcomes[0].deduplicated
        assert all(o.deduplicated and o.committed_at_ns == outcomes[0].committed_at_ns for o in outcomes[1:])
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(STOP_SECONDS)
    assert supervisor.returncode == 0


def test_a_worker_that_dies_takes_the_others_down(tmp_path: Path, postgres_dsn: str) -> None:
    """No half-sized service behind the port: the supervisor stops every worker and exits non-zero (its
    own supervisor, systemd or compose, restarts the whole set)."""
    env = tigerbeetle_workers_env(tmp_path, postgres_dsn, free_port())
    supervisor = subprocess.Popen(
        [ledger_command(), "serve", "--workers", "2"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    try:
        workers = {line["pid"] for line in wait_serving(supervisor, 2)}
        os.kill(max(workers), signal.SIGKILL)
        supervisor.wait(STOP_SECONDS)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
    assert supervisor.returncode != 0
    for pid in workers:  # Every worker is gone (reaped by the supervisor, so no /proc entry).
        assert not Path(f"/proc/{pid}").exists()


async def open_on(directory: Path, port: int, *, reuse_port: bool) -> Api:
    """tests/api/conftest.py's server on a fixed port."""
    settings = make_settings(directory)
    settings.api = settings.api.model_copy(update={"port": port, "grpc_reuse_port": reuse_port})
    server = await start(settings)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    return Api(settings, server, channel, rpc.LedgerStub(channel))


async def test_the_grpc_port_is_shared_only_when_asked(tmp_path: Path) -> None:
    """SO_REUSEPORT only for workers (api.grpc_reuse_port): otherwise a second server on a busy port
    fails to start instead of silently taking half of its connections."""
    port = free_port()
    first = await open_on(tmp_path / "first", port, reuse_port=False)
    try:
        busy = subprocess.run(
            [ledger_command(), "serve"],
            env=os.environ
            | {
                "LEDGER_API__PORT": str(port),
                "LEDGER_API__HTTP_PORT": "-1",
                "LEDGER_OBSERVABILITY__METRICS_PORT": "-1",
                "LEDGER_CLICKHOUSE__SERVE_HISTORY": "false",
                "LEDGER_ENGINE__DATA_DIR": str(tmp_path / "second" / "engine"),
                "LEDGER_API__METADATA_DB": str(tmp_path / "second" / "metadata.sqlite3"),
            },
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=STOP_SECONDS,
            check=False,
        )
        assert busy.returncode != 0 and "bind" in (busy.stdout + busy.stderr).lower()
    finally:
        await first.channel.close()
        await first.server.stop()
    shared = [await open_on(tmp_path / f"shared-{i}", port, reuse_port=True) for i in range(2)]
    try:
        for api in shared:  # Both bound the one port and serve it.
            assert api.server.port == port
            assert await api.available(await api.account("alice")) == 0
    finally:
        for api in shared:
            await api.channel.close()
            await api.server.stop()
