"""The read-model commands end to end, in-process: project from the engine's data directory, query,
reconcile, export and verify, with settings as the `ledger` CLI would build them."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
from pathlib import Path

import pytest

from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import Account
from facade.settings import ApiSettings, AuditSettings, ClickHouseSettings, EngineSettings, Settings
from ledger_testkit.service import ledger_executable
from projections import cli
from tests.projections.conftest import ACCOUNT_IDS, CODE, LEDGER, Metadata, Workload


def command(settings: Settings, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[object]]:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    code = cli.run(parser.parse_args(argv), settings)
    lines = capsys.readouterr().out.splitlines()
    return code, [json.loads(line) for line in lines]


def test_parse_time() -> None:
    assert cli.parse_time("1970-01-01T00:00:01Z") == 1_000_000_000
    assert cli.parse_time("1970-01-02") == 86_400 * 1_000_000_000
    assert cli.parse_time("1795581614956174029") == 1795581614956174029


async def post_rounds(data_dir: Path, rounds: int) -> None:
    engine = await EmbeddedEngine.open(data_dir)
    try:
        await engine.create_accounts([Account(id=i, ledger=LEDGER, code=CODE) for i in ACCOUNT_IDS])
        workload = Workload(engine, Metadata())
        for number in range(rounds):
            await workload.round(number)
    finally:
        await engine.close()  # The commands open the engine's directory themselves.


def test_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Synchronous, as the CLI runs its own event loops."""
    asyncio.run(post_rounds(tmp_path / "engine", 3))
    settings = Settings(
        engine=EngineSettings(data_dir=tmp_path / "engine"),
        api=ApiSettings(metadata_db=tmp_path / "metadata.sqlite3"),
        clickhouse=ClickHouseSettings(
            chdb_path=tmp_path / "clickhouse-cli", projector_checkpoint=tmp_path / "projector.json"
        ),
        audit=AuditSettings(data_dir=tmp_path / "audit"),
    )
    code, out = command(settings, capsys, "project", "--once")
    assert (code, out[0]) == (0, out[0])
    assert isinstance(out[0], dict) and out[0]["changes_projected"] == 24

    code, out = command(settings, capsys, "balance", "3", "--offline")
    assert code == 0 and isinstance(out[0], dict) and out[0]["credits_posted"] > 0

    code, out = command(settings, capsys, "statement", "3", "--from", "1970-01-01", "--to", "now", "--offline")
    assert code == 0 and isinstance(out[0], dict) and len(out[0]["lines"]) > 0

    code, out = command(settings, capsys, "totals", "--from", "0", "--to", "now", "--offline")
    assert code == 0 and sum(row["transactions"] for row in out if isinstance(row, dict)) == 24

    code, out = command(settings, capsys, "reconcile", "--offline")
    assert code == 0 and isinstance(out[0], dict) and out[0]["ok"] is True

    export = tmp_path / "export"
    code, out = command(
        settings,
        capsys,
        "audit",
        "export",
        "--from",
        "0",
        "--to",
        "now",
        "--format",
        "parquet",
        "--out",
        str(export),
        "--offline",
    )
    assert code == 0 and isinstance(out[0], dict) and out[0]["row_count"] == 24
    code, out = command(settings, capsys, "audit", "verify", "--export", str(export), "--offline")
    assert code == 0 and isinstance(out[0], dict) and out[0]["ok"] is True
    code, out = command(settings, capsys, "audit", "verify", "--offline")
    assert code == 0 and isinstance(out[0], dict) and out[0]["rows_checked"] == 24


def test_ledger_console_script(tmp_path: Path) -> None:
    """The installed `ledger` entry point carries the read-model commands, configured by LEDGER_* variables:
    project, export, tamper with the export, verify (exit 1 names the problem)."""
    import os
    import subprocess

    asyncio.run(post_rounds(tmp_path / "engine", 2))
    ledger = ledger_executable()
    env = os.environ | {
        "LEDGER_ENGINE__DATA_DIR": str(tmp_path / "engine"),
        "LEDGER_API__METADATA_DB": str(tmp_path / "metadata.sqlite3"),
        "LEDGER_CLICKHOUSE__CHDB_PATH": str(tmp_path / "clickhouse"),
        "LEDGER_CLICKHOUSE__PROJECTOR_CHECKPOINT": str(tmp_path / "projector.json"),
        "LEDGER_AUDIT__DATA_DIR": str(tmp_path / "audit"),
    }

    def ledger_run(*argv: str) -> subprocess.CompletedProcess[str]:
        command = [ledger, *argv]
        return subprocess.run(command, check=False, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)

    done = ledger_run("project", "--once")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["changes_projected"] == 16
    export = tmp_path / "export"
    done = ledger_run(
        "audit", "export", "--from", "0", "--to", "now", "--format", "csv", "--out", str(export), "--offline"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["row_count"] == 16
    done = ledger_run("audit", "verify", "--export", str(export), "--offline")
    assert done.returncode == 0 and json.loads(done.stdout)["ok"] is True, done.stdout + done.stderr

    data = next(export.glob("*.csv"))
    with data.open(newline="") as handle:
        records = list(csv.reader(handle))
    amount = records[0].index("amount")
    records[3][amount] = str(int(records[3][amount]) + 1)
    with data.open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(records)
    done = ledger_run("audit", "verify", "--export", str(export), "--files-only", "--offline")
    assert done.returncode == 1
    assert json.loads(done.stdout)["ok"] is False
