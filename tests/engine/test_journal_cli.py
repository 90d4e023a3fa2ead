"""`ledger doctor`, `ledger backup` and `ledger restore` through the installed console script."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from facade.engine.embedded import EmbeddedLedger
from facade.engine.journal import JOURNAL_FILE
from facade.engine.journal_check import check
from ledger_testkit.service import ledger_executable

from ._journal_workload import write_workload

LEDGER_SCRIPT = ledger_executable()


def _ledger(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("LEDGER_")}
    return subprocess.run(
        [str(LEDGER_SCRIPT), *args], cwd=cwd, env=environment, capture_output=True, text=True, check=False
    )


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_doctor_reports_damage_precisely_and_repairs_it_from_the_mirror(tmp_path: Path) -> None:
    directory, mirror = tmp_path / "data", tmp_path / "mirror"
    acknowledged = write_workload(directory, records=12, transfers_per_batch=20, seed=7, mirror=mirror)
    healthy = _ledger("doctor", "--data-dir", str(directory), "--mirror-dir", str(mirror), cwd=tmp_path)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "12 intact records" in healthy.stdout and "healthy" in healthy.stdout

    records = check(directory).records
    damaged = records[len(records) // 2].header
    _flip(directory / JOURNAL_FILE, damaged.offset + 200)
    found = _ledger("doctor", "--data-dir", str(directory), cwd=tmp_path)
    assert found.returncode == 1
    assert f"{directory / JOURNAL_FILE} op {damaged.op} at byte {damaged.offset}" in found.stdout, found.stdout
    assert "NOT repairable" in found.stdout
    alone = _ledger("doctor", "--data-dir", str(directory), "--repair", cwd=tmp_path)
    assert alone.returncode == 1 and "NOT repairable" in alone.stdout

    with_mirror = ["doctor", "--data-dir", str(directory), "--mirror-dir", str(mirror)]
    checked = _ledger(*with_mirror, cwd=tmp_path)
    assert checked.returncode == 1 and "repairable: run with --repair" in checked.stdout, checked.stdout
    repaired = _ledger(*with_mirror, "--repair", cwd=tmp_path)
    assert repaired.returncode == 0 and "now healthy" in repaired.stdout, repaired.stdout
    assert (directory / JOURNAL_FILE).read_bytes() == (mirror / JOURNAL_FILE).read_bytes()
    assert _ledger("doctor", "--data-dir", str(directory), cwd=tmp_path).returncode == 0
    ledger = EmbeddedLedger.open(directory)
    try:
        acknowledged.assert_present_in(ledger)
    finally:
        ledger.close()


def test_backup_of_a_live_engine_restores_every_acknowledged_record(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    acknowledged = write_workload(directory, records=10, transfers_per_batch=20, seed=8)
    live = EmbeddedLedger.open(directory)  # Holds the directory lock: backup must not need it.
    try:
        backed_up = _ledger("backup", "--data-dir", str(directory), "--to", str(tmp_path / "backup"), cwd=tmp_path)
        assert backed_up.returncode == 0, backed_up.stdout + backed_up.stderr
        assert "backed up 10 records" in backed_up.stdout
        refused = _ledger("restore", "--from", str(tmp_path / "backup"), "--data-dir", str(directory), cwd=tmp_path)
        assert refused.returncode == 1 and "holds data" in refused.stdout
    finally:
        live.close()
    shutil.rmtree(directory)
    restored = _ledger(
        "restore", "--from", str(tmp_path / "backup"), "--data-dir", str(tmp_path / "new"),
        "--mirror-dir", str(tmp_path / "new-mirror"), cwd=tmp_path,
    )  # fmt: skip
    assert restored.returncode == 0, restored.stdout + restored.stderr
    ledger = EmbeddedLedger.open(tmp_path / "new", mirror=tmp_path / "new-mirror")
    try:
        acknowledged.assert_present_in(ledger)
    finally:
        ledger.close()
    assert check(tmp_path / "new", tmp_path / "new-mirror").healthy


def test_serve_refuses_to_start_on_damage_naming_it(tmp_path: Path) -> None:
    directory = tmp_path / "data" / "engine"
    write_workload(directory, records=6, transfers_per_batch=10, seed=9)
    last = check(directory).records[-1].header
    _flip(directory / JOURNAL_FILE, last.offset + 5)  # The last record's header: acknowledged, not torn.
    environment = {
        "LEDGER_ENGINE__DATA_DIR": str(directory),
        "LEDGER_API__PORT": "0",
        "LEDGER_API__HTTP_PORT": "-1",
        "LEDGER_API__METADATA_DB": str(tmp_path / "metadata.sqlite3"),
        "LEDGER_OBSERVABILITY__METRICS_PORT": "0",
    }
    served = subprocess.run(
        [str(LEDGER_SCRIPT), "serve"],
        cwd=tmp_path,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}, **environment},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert served.returncode == 1, served.stdout + served.stderr
    assert f"{directory / JOURNAL_FILE} op {last.op} at byte {last.offset}: header damaged" in served.stderr
    assert "Traceback" not in served.stderr
