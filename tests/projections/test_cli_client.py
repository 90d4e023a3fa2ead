"""The read-model CLI as a client: the installed `ledger` command, run as a subprocess against a real
service over loopback (gateway + SQL endpoint), its answers checked against the engine's balances; then
`--offline` refused with one line while the service holds the files, and working once it has stopped."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pyarrow.parquet as pq  # type: ignore[import-untyped]  # pyarrow ships no type hints.

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.app import start
from facade.auth import SCOPE_AUDIT, SCOPE_READ, issue_token
from facade.settings import AuditSettings
from tests.api.conftest import Api, make_settings, transfer

COMMAND_TIMEOUT_SECONDS = 180.0
PROJECTION_POLLS_MAX = 400
EXIT_USAGE = 2


@dataclass(frozen=True)
class Done:
    code: int
    out: list[dict[str, Any]]
    err: str


def ledger_environment(api: Api, tmp_path: Path, **extra: str) -> dict[str, str]:
    settings = api.settings
    environment = {
        "LEDGER_ENGINE__DATA_DIR": str(settings.engine.data_dir),
        "LEDGER_API__METADATA_DB": str(settings.api.metadata_db),
        "LEDGER_CLICKHOUSE__CHDB_PATH": str(settings.clickhouse.chdb_path),
        "LEDGER_CLICKHOUSE__PROJECTOR_CHECKPOINT": str(settings.clickhouse.projector_checkpoint),
        "LEDGER_AUDIT__DATA_DIR": str(tmp_path / "audit"),
        "LEDGER_CLIENT__GATEWAY_URL": f"http://127.0.0.1:{api.server.http_port}",
        "LEDGER_CLIENT__SQL_URL": f"http://127.0.0.1:{api.server.sql.port if api.server.sql else 0}",
        "LEDGER_AUTH__MODE": "dev",
    }
    return {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")} | environment | extra


async def ledger(environment: Mapping[str, str], cwd: Path, *argv: str) -> Done:
    """`ledger ARGV` in a child process; awaited, so the service in this process keeps answering."""
    program = shutil.which("ledger", path=str(Path(sys.executable).parent)) or "ledger"
    process = await asyncio.create_subprocess_exec(
        program,
        *argv,
        env=dict(environment),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT_SECONDS)
    assert process.returncode is not None
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    return Done(process.returncode, lines, err.decode())


async def projected(api: Api, account_id: str, credits_posted: int) -> None:
    """Waits (bounded polls, nothing timed) until the read model holds the account's credits."""
    headers = {"authorization": f"Bearer {issue_token(api.settings.auth, 'client-a', frozenset({SCOPE_READ}))}"}
    url = f"http://127.0.0.1:{api.server.http_port}/v1/accounts/{account_id}/balance-as-of"
    async with httpx.AsyncClient(headers=headers) as http:
        for _ in range(PROJECTION_POLLS_MAX):
            response = await http.get(url)
            if response.status_code == 200 and int(response.json()["credits_posted"]) >= credits_posted:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the read model did not catch up")


async def checkpointed(api: Api, tree_size: int) -> None:
    """Waits (bounded polls) until the service has sealed a checkpoint of at least `tree_size` changes."""
    headers = {"authorization": f"Bearer {issue_token(api.settings.auth, 'auditor', frozenset({SCOPE_AUDIT}))}"}
    url = f"http://127.0.0.1:{api.server.http_port}/v1/audit/checkpoint"
    async with httpx.AsyncClient(headers=headers) as http:
        for _ in range(PROJECTION_POLLS_MAX):
            response = await http.get(url)
            if response.status_code == 200 and int(response.json()["tree_size"]) >= tree_size:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("no checkpoint sealed")


async def test_cli_commands_against_the_running_service(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, True, http_port=0, sql_port=0)
    # Seal a checkpoint after every change: the export's evidence needs one that covers its rows.
    audit = AuditSettings(data_dir=tmp_path / "audit", checkpoint_entries=1, checkpoint_interval_seconds=0.2)
    settings = settings.model_copy(update={"audit": audit})
    server = await start(settings)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    api = Api(settings, server, channel, rpc.LedgerStub(channel))
    stopped = False
    try:
        alice = await api.account("alice", no_overdraft=False)
        bob = await api.account("bob")
        await api.post("c-1", transfer(alice, bob, 700), metadata=pb.TransactionMetadata(correlation_id="order-7"))
        await api.post("c-2", transfer(alice, bob, 50), metadata=pb.TransactionMetadata(correlation_id="order-7"))
        await api.post("c-3", transfer(bob, alice, 25))
        engine = await api.stub.GetBalance(pb.GetBalanceRequest(account_id=bob), metadata=api.auth())
        await projected(api, bob, int(engine.credits_posted))
        environment = ledger_environment(api, tmp_path)

        done = await ledger(environment, tmp_path, "balance", bob)
        assert done.code == 0, done.err
        assert done.out[0]["credits_posted"] == engine.credits_posted == "750"
        assert done.out[0]["debits_posted"] == engine.debits_posted == "25"

        done = await ledger(environment, tmp_path, "statement", bob, "--from", "1970-01-01", "--to", "now")
        assert done.code == 0, done.err
        statement = done.out[0]
        assert [line["signed_amount"] for line in statement["lines"]] == ["700", "50", "-25"]
        assert statement["closing"]["credits_posted"] == engine.credits_posted

        done = await ledger(environment, tmp_path, "totals", "--from", "0", "--to", "now")
        assert done.code == 0, done.err
        assert sum(int(total["amount"]) for total in done.out) == 775

        done = await ledger(environment, tmp_path, "correlation", "order-7")
        assert done.code == 0, done.err
        assert sorted(int(t["amount"]) for t in done.out) == [50, 700]

        done = await ledger(environment, tmp_path, "reconcile")
        assert (done.code, done.out[0]["ok"]) == (0, True), done.err

        export = tmp_path / "export"
        export_argv = ("audit", "export", "--from", "0", "--to", "now", "--format", "parquet", "--out", str(export))
        done = await ledger(environment, tmp_path, *export_argv)
        assert done.code == 0, done.err
        assert done.out[0]["row_count"] == 3
        table = pq.read_table(next(export.glob("*.parquet")))
        assert sum(int(value) for value in table.column("amount").to_pylist()) == 775

        # With the verifier keys (read while the service runs), the export carries verified evidence.
        await checkpointed(api, 3)
        keys = await asyncio.create_subprocess_exec(
            shutil.which("ledger", path=str(Path(sys.executable).parent)) or "ledger",
            *("audit", "keys", "--verifier-keys"),
            env=environment,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
        )
        key_text, _ = await keys.communicate()
        assert keys.returncode == 0 and key_text.strip()
        (tmp_path / "ledger.pub").write_bytes(key_text)
        evidenced = tmp_path / "evidenced"
        export_argv = ("audit", "export", "--from", "0", "--to", "now", "--format", "csv", "--out", str(evidenced))
        done = await ledger(environment, tmp_path, *export_argv, "--public-key", str(tmp_path / "ledger.pub"))
        assert done.code == 0, done.err
        assert done.out[0]["evidence"]["proofs"] == 3 and done.out[0]["evidence"]["proof_rows"] == "all"
        done = await ledger(
            environment,
            tmp_path,
            "audit",
            "verify",
            "--export",
            str(evidenced),
            "--public-key",
            str(tmp_path / "ledger.pub"),
        )
        assert (done.code, done.out[0]["ok"]) == (0, True), done.out

        done = await ledger(environment, tmp_path, "audit", "verify")
        assert (done.code, done.out[0]["ok"], done.out[0]["rows_checked"]) == (0, True, 3), done.err
        done = await ledger(environment, tmp_path, "audit", "verify", "--export", str(export))
        assert (done.code, done.out[0]["ok"]) == (0, True), done.err
        done = await ledger(environment, tmp_path, "audit", "verify", "--export", str(export), "--files-only")
        assert (done.code, done.out[0]["ok"]) == (0, True), done.err  # Opens nothing the service holds.

        # Bad input and refusals: one line on stderr, exit code 2, nothing on stdout.
        unknown = str(int(bob) + 1)
        done = await ledger(environment, tmp_path, "balance", unknown)
        assert (done.code, done.out, done.err.count("\n")) == (EXIT_USAGE, [], 1), done.err
        assert "NOT_FOUND" in done.err or "ACCOUNT_NOT_FOUND" in done.err
        wrong_key = environment | {"LEDGER_CLIENT__API_KEY": "reader-1.not-the-secret"}
        done = await ledger(wrong_key, tmp_path, "totals", "--from", "0", "--to", "now")
        assert (done.code, done.err.count("\n")) == (EXIT_USAGE, 1) and "INVALID_API_KEY" in done.err, done.err

        for argv in (("balance", bob, "--offline"), ("reconcile", "--offline"), ("audit", "verify", "--offline")):
            done = await ledger(environment, tmp_path, *argv)
            assert (done.code, done.out, done.err.count("\n")) == (EXIT_USAGE, [], 1), done.err
            assert "a running service holds" in done.err and "Traceback" not in done.err

        await api.channel.close()
        await api.server.stop()
        stopped = True
        # Stopped: the service is unreachable (one line, exit 1), and --offline opens the files.
        done = await ledger(environment, tmp_path, "balance", bob)
        assert (done.code, done.err.count("\n")) == (1, 1) and "not reachable" in done.err, done.err
        done = await ledger(environment, tmp_path, "balance", bob, "--offline")
        assert done.code == 0, done.err
        assert done.out[0]["credits_posted"] == 750 and done.out[0]["debits_posted"] == 25
        done = await ledger(environment, tmp_path, "reconcile", "--offline")
        assert (done.code, done.out[0]["ok"]) == (0, True), done.err
    finally:
        if not stopped:
            await api.channel.close()
            await api.server.stop()
