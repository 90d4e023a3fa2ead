"""The `dev` auth mode with the built-in signing secret (anyone can read it in facade/auth.py): a loud
warning at every start, and no start at all on a non-loopback address."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from facade.app import start
from facade.auth import InsecureStartError, guard_dev_mode, is_loopback
from facade.settings import AuthSettings
from tests.api.conftest import make_settings

REPOSITORY = Path(__file__).resolve().parents[2]


def test_serve_on_all_interfaces_with_the_builtin_secret_exits_non_zero(tmp_path: Path) -> None:
    environment = {
        **os.environ,
        "LEDGER_API__HOST": "0.0.0.0",
        "LEDGER_API__PORT": "0",
        "LEDGER_API__HTTP_PORT": "-1",
        "LEDGER_API__METADATA_DB": str(tmp_path / "metadata.sqlite3"),
        "LEDGER_ENGINE__DATA_DIR": str(tmp_path / "engine"),
        "LEDGER_OBSERVABILITY__METRICS_PORT": "-1",
        "LEDGER_CLICKHOUSE__SERVE_HISTORY": "false",
        "LEDGER_AUTH__MODE": "dev",
        "LEDGER_AUTH__JWT_SECRET": "",
    }
    process = subprocess.run(
        [sys.executable, "-m", "facade.cli", "serve"],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,  # No .env from the repository.
        timeout=120,
        check=False,
    )
    assert process.returncode != 0
    assert "refusing to listen on 0.0.0.0" in process.stderr, process.stderr
    assert "WARNING: auth.mode=dev with the built-in signing secret" in process.stderr
    assert "Traceback" not in process.stderr
    warnings = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    assert any(w["level"] == "warning" and w["event"] == "insecure_dev_auth" for w in warnings), process.stdout
    assert not (tmp_path / "engine").exists(), "refused before anything was opened"
    assert not (tmp_path / "metadata.sqlite3").exists()


async def test_start_refuses_a_non_loopback_host_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(tmp_path)
    settings.api.host = "0.0.0.0"
    with pytest.raises(InsecureStartError, match=r"refusing to listen on 0\.0\.0\.0"):
        await start(settings)
    assert "WARNING: auth.mode=dev" in capsys.readouterr().err


async def test_loopback_dev_mode_starts_and_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    running = await start(make_settings(tmp_path))
    try:
        assert running.port > 0
        assert "WARNING: auth.mode=dev with the built-in signing secret" in capsys.readouterr().err
    finally:
        await running.stop()


@pytest.mark.parametrize(
    ("settings", "warns"),
    [
        (AuthSettings(mode="dev", jwt_secret=SecretStr("a-real-secret-of-at-least-32-bytes!!")), False),
        (AuthSettings(mode="enforce", jwt_secret=SecretStr("a-real-secret-of-at-least-32-bytes!!")), False),
        (AuthSettings(mode="dev"), True),
    ],
)
def test_only_the_builtin_secret_is_confined_to_loopback(
    settings: AuthSettings, warns: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    if warns:
        with pytest.raises(InsecureStartError):
            guard_dev_mode(settings, ["127.0.0.1", "10.1.2.3"])
    else:
        guard_dev_mode(settings, ["0.0.0.0", "::"])
    assert ("WARNING" in capsys.readouterr().err) == warns


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.1", False),
        ("ledger.example.com", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) == loopback
