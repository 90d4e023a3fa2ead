"""Export bundles carry their evidence: a genuine bundle verifies offline with the public key alone
(in a fresh directory, creating nothing); every forgery an outsider could make is refused, even when
the forger recomputes the chain and the manifest to match."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from facade.audit.log import AuditLog
from facade.audit.sink import AuditSink
from facade.changes.into_read_model import change_capture
from facade.changes.poller import ChangeCapture, Pacing
from facade.engine.embedded import EmbeddedEngine
from facade.settings import AuditSettings
from ledger_audit_verifier import VerifierKey, parse_keys, row_leaf_input, verify_bundle
from ledger_testkit.service import ledger_executable
from projections import audit, audit_evidence
from projections.client import ChdbClient
from projections.projector import Projector
from projections.queries import TIMESTAMP_MAX
from tests.projections.conftest import Metadata, Workload, drain

ROUNDS = 3
CHANGES = ROUNDS * 8
Rows = list[dict[str, str]]


@pytest.fixture
async def audit_log(tmp_path: Path) -> AuditLog:
    return AuditLog(AuditSettings(data_dir=tmp_path / "audit", checkpoint_entries=10))


@pytest.fixture
async def exported(
    tmp_path: Path,
    engine: EmbeddedEngine,
    client: ChdbClient,
    metadata: Metadata,
    workload: Workload,
    audit_log: AuditLog,
) -> Path:
    """The service's path: the engine's change feed into the read model and, separately, into the tree."""
    for number in range(ROUNDS):
        await workload.round(number)
    assert await drain(change_capture(engine, Projector(client), tmp_path / "cp.json", metadata)) == CHANGES
    sink = AuditSink(audit_log)
    assert (
        await drain(
            ChangeCapture(engine, sink, tmp_path / "audit-cp.json", metadata, pacing=Pacing(batch_changes_max=4))
        )
        == CHANGES
    )
    assert audit_log.tree.size == CHANGES
    assert [c.tree_size for c in audit_log.checkpoints()] == [12, 24]  # Every 10 changes, at batch ends.
    assert audit_evidence.catch_up(audit_log, client) == 0  # The read model adds nothing the feed did not.
    directory = tmp_path / "export"
    manifest = audit.export(client, directory, timestamp_from=0, timestamp_to=TIMESTAMP_MAX, fmt="csv", progress=False)
    evidence = audit_evidence.attach_evidence(directory, manifest, audit_log, client)
    assert (evidence.tree_size, evidence.proof_rows, evidence.proofs) == (CHANGES, "all", CHANGES)
    return directory


def key_of(audit_log: AuditLog) -> VerifierKey:
    return audit_log.keys.active().verifier


def read_rows(directory: Path) -> Rows:
    with next(directory.glob("*.csv")).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def forge(directory: Path, edit: Callable[[Rows], Rows]) -> None:
    """What a forger without the key can do: edit rows, renumber and re-chain them, rewrite the manifest."""
    path = next(directory.glob("*.csv"))
    rows = edit(read_rows(directory))
    manifest = json.loads((directory / "manifest.json").read_text())
    previous = manifest["previous_hash"]
    for number, row in enumerate(rows):
        row["chain_sequence"] = str(manifest["first_sequence"] + number)
        row["chain_previous_hash"] = previous
        row["chain_hash"] = previous = hashlib.sha256(row_leaf_input(row)).hexdigest()
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    manifest["row_count"] = manifest["files"][0]["rows"] = len(rows)
    manifest["last_sequence"] = manifest["first_sequence"] + len(rows) - 1
    manifest["chain_head"] = previous
    manifest["files"][0]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_genuine_bundle_verifies(exported: Path, audit_log: AuditLog) -> None:
    report = verify_bundle(exported, key_of(audit_log))
    assert report.ok, report.problems
    assert (report.rows_checked, report.rows_proved, report.tree_size) == (CHANGES, CHANGES, CHANGES)


def test_recomputed_chain_still_verifies_as_a_chain(exported: Path, audit_log: AuditLog) -> None:
    """The forge helper itself is faithful: re-chaining untouched rows changes nothing."""
    forge(exported, lambda rows: rows)
    assert verify_bundle(exported, key_of(audit_log)).ok


def altered_amount(rows: Rows) -> Rows:
    rows[5]["amount"] = str(int(rows[5]["amount"]) + 1)
    return rows


def deleted_row(rows: Rows) -> Rows:
    return rows[:7] + rows[8:]


def reordered_rows(rows: Rows) -> Rows:
    rows[3], rows[4] = rows[4], rows[3]
    return rows


def inserted_row(rows: Rows) -> Rows:
    extra = dict(rows[2])
    extra["transfer_id"] = str(int(extra["transfer_id"]) + 10_000)
    return [*rows[:3], extra, *rows[3:]]


@pytest.mark.parametrize("edit", [altered_amount, deleted_row, reordered_rows, inserted_row])
def test_forgery_with_recomputed_chain_is_refused(
    exported: Path, audit_log: AuditLog, edit: Callable[[Rows], Rows]
) -> None:
    assert audit.verify_export(exported).ok  # Without the checkpoint, the forgery cannot be told apart...
    forge(exported, edit)
    assert audit.verify_export(exported).ok  # ...the old chain-only check still says "ok" (issue 13)...
    report = verify_bundle(exported, key_of(audit_log))
    assert not report.ok  # ...the signed tree does not hold the forged leaves.
    assert "not in the tree" in report.problems[0] or "inclusion" in report.problems[0], report.problems


def test_large_export_proves_first_and_last_rows_and_still_catches_a_middle_edit(
    tmp_path: Path, exported: Path, audit_log: AuditLog, client: ChdbClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert verify_bundle(exported, key_of(audit_log)).ok
    monkeypatch.setattr(audit_evidence, "EVIDENCE_ALL_ROWS_MAX", 4)
    directory = tmp_path / "large"
    manifest = audit.export(client, directory, timestamp_from=0, timestamp_to=TIMESTAMP_MAX, fmt="csv", progress=False)
    evidence = audit_evidence.attach_evidence(directory, manifest, audit_log, client)
    assert (evidence.proof_rows, evidence.proofs) == ("first_and_last", 2)
    assert verify_bundle(directory, key_of(audit_log)).ok
    forge(directory, altered_amount)  # Row 6 has no proof of its own; the last row's leaf covers it.
    assert not verify_bundle(directory, key_of(audit_log)).ok


def test_wrong_key_is_refused(exported: Path) -> None:
    stranger = VerifierKey("ledger-service/audit", Ed25519PrivateKey.generate().public_key().public_bytes_raw())
    report = verify_bundle(exported, stranger)
    assert not report.ok and "no signature by key" in report.problems[0]


def test_forged_checkpoint_signature_is_refused(exported: Path, audit_log: AuditLog) -> None:
    evidence = json.loads((exported / "evidence.json").read_text())
    evidence["checkpoint"] = evidence["checkpoint"].replace(f"\n{CHANGES}\n", f"\n{CHANGES + 1}\n", 1)
    (exported / "evidence.json").write_text(json.dumps(evidence))
    report = verify_bundle(exported, key_of(audit_log))
    assert not report.ok and "does not verify" in report.problems[0]


@pytest.mark.parametrize("cut", ["last_rows", "evidence_file", "proofs", "data_file"])
def test_truncated_bundle_is_refused(exported: Path, audit_log: AuditLog, cut: str) -> None:
    data = next(exported.glob("*.csv"))
    if cut == "last_rows":
        lines = data.read_text(encoding="utf-8").splitlines(keepends=True)
        data.write_text("".join(lines[: len(lines) // 2]), encoding="utf-8")
    elif cut == "evidence_file":
        (exported / "evidence.json").unlink()
    elif cut == "proofs":
        evidence = json.loads((exported / "evidence.json").read_text())
        evidence["proofs"] = evidence["proofs"][:-1]
        (exported / "evidence.json").write_text(json.dumps(evidence))
    else:
        data.unlink()
    assert not verify_bundle(exported, key_of(audit_log)).ok


def test_rotated_key_keeps_old_checkpoints_verifiable(exported: Path, audit_log: AuditLog) -> None:
    old = key_of(audit_log)
    new = audit_log.keys.rotate()
    assert new.verifier != old
    assert {k.key_id for k in audit_log.keys.verifier_keys()} == {old.key_id, new.verifier.key_id}
    assert verify_bundle(exported, old).ok  # Signed before the rotation: still verifies with the old key.
    assert not verify_bundle(exported, new.verifier).ok
    key_lines = "\n".join(key.text() for key in audit_log.keys.verifier_keys()) + "\n"
    assert verify_bundle(exported, parse_keys(key_lines)).ok  # A key file with every key: the right one is used.
    assert [c.checkpoint.key_id for c in audit_log.checkpoints()] == [old.key_id] * 2
    key_file = audit_log.keys.directory / f"{old.key_id}.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert audit_log.keys.directory.stat().st_mode & 0o777 == 0o700


def test_console_script_verifies_offline_in_an_empty_directory(
    tmp_path: Path, exported: Path, audit_log: AuditLog
) -> None:
    """`ledger audit verify --export DIR --public-key FILE` with no data dir, no read model and no
    LEDGER_* settings: it verifies, and the empty working directory stays empty (no chDB folder)."""
    bundle = tmp_path / "handed-over"
    shutil.copytree(exported, bundle)
    key_file = tmp_path / "ledger.pub"
    key_file.write_text(key_of(audit_log).text() + "\n")
    empty = tmp_path / "auditor"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    ledger = ledger_executable()
    for command in (
        [ledger, "audit", "verify", "--export", str(bundle), "--public-key", str(key_file)],
        [sys.executable, "-m", "ledger_audit_verifier", "--export", str(bundle), "--public-key", str(key_file)],
    ):
        done = subprocess.run(command, check=False, env=env, cwd=empty, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["ok"] is True
        assert list(empty.iterdir()) == []
    forge(bundle, altered_amount)
    done = subprocess.run(command, check=False, env=env, cwd=empty, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and json.loads(done.stdout)["ok"] is False
    assert list(empty.iterdir()) == []


def test_cli_keys_checkpoint_and_proof_documents(
    tmp_path: Path, exported: Path, audit_log: AuditLog, client: ChdbClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ledger audit keys | checkpoint | prove | consistency` against the same audit dir; the proof
    documents verify with the stand-alone verifier and the public key alone."""
    import argparse

    from facade.settings import ClickHouseSettings, Settings
    from ledger_audit_verifier import verify_proof_document
    from projections import cli

    del exported
    client.close()  # chDB: one directory per process; `prove --transaction` opens it itself.
    settings = Settings(
        audit=AuditSettings(data_dir=audit_log.directory),
        clickhouse=ClickHouseSettings(chdb_path=tmp_path / "clickhouse"),
    )

    def run(*argv: str) -> list[dict[str, object]]:
        parser = argparse.ArgumentParser()
        cli.register(parser.add_subparsers(dest="command", required=True))
        assert cli.run(parser.parse_args(argv), settings) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    keys = run("audit", "keys")
    assert [k["active"] for k in keys] == [True]
    key = VerifierKey.parse(str(keys[0]["verifier_key"]))
    assert run("audit", "checkpoint")[0]["tree_size"] == CHANGES  # Nothing new: the latest one.
    proved = run("audit", "prove", "--sequence", "7", "--tree-size", "12")
    assert verify_proof_document(proved[0], key) == "leaf 6 is in the signed tree of size 12"
    by_transaction = run("audit", "prove", "--transaction", "tx-1001")
    assert [verify_proof_document(d, key) for d in by_transaction] == [
        f"leaf 0 is in the signed tree of size {CHANGES}"
    ]
    consistency = run("audit", "consistency", "--old", "12")
    assert verify_proof_document(consistency[0], key).startswith(f"the signed tree of size {CHANGES} extends")
    forged = dict(proved[0], leaf_index=8)
    with pytest.raises(ValueError, match="inclusion proof"):
        verify_proof_document(forged, key)
    rotated = run("audit", "keys", "--rotate")
    assert sorted(k["active"] is True for k in rotated) == [False, True]
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    assert cli.run(parser.parse_args(["audit", "keys", "--verifier-keys"]), settings) == 0
    key_lines = capsys.readouterr().out
    assert {k.key_id for k in parse_keys(key_lines)} == {str(k["key_id"]) for k in rotated}
    assert verify_proof_document(proved[0], parse_keys(key_lines))  # Signed by the old key: still verifies.


def cut_last_row(rows: Rows) -> Rows:
    return rows[:-1]


def cut_first_row(rows: Rows) -> Rows:
    return rows[1:]


@pytest.mark.parametrize("edit", [cut_last_row, cut_first_row])
def test_rows_cut_at_either_end_are_refused(exported: Path, audit_log: AuditLog, edit: Callable[[Rows], Rows]) -> None:
    """Every remaining row is genuine and proved, but the range is no longer complete: the boundary
    proofs (the changes right before and after the range) catch it."""
    forge_ends(exported, edit)
    report = verify_bundle(exported, key_of(audit_log))
    assert not report.ok and "cut" in report.problems[0], report.problems


def forge_ends(directory: Path, edit: Callable[[Rows], Rows]) -> None:
    """Drops rows without re-chaining (the rest stay genuine), fixing the manifest to match."""
    path = next(directory.glob("*.csv"))
    rows = edit(read_rows(directory))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["row_count"] = manifest["files"][0]["rows"] = len(rows)
    manifest["first_sequence"], manifest["last_sequence"] = (
        int(rows[0]["chain_sequence"]),
        int(rows[-1]["chain_sequence"]),
    )
    manifest["previous_hash"], manifest["chain_head"] = rows[0]["chain_previous_hash"], rows[-1]["chain_hash"]
    manifest["files"][0]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (directory / "manifest.json").write_text(json.dumps(manifest))


async def test_sub_range_and_empty_range_prove_their_boundaries(
    tmp_path: Path, exported: Path, audit_log: AuditLog, client: ChdbClient
) -> None:
    rows = read_rows(exported)
    timestamp_from, timestamp_to = int(rows[5]["engine_timestamp"]), int(rows[12]["engine_timestamp"])
    middle = tmp_path / "middle"
    manifest = audit.export(
        client, middle, timestamp_from=timestamp_from, timestamp_to=timestamp_to, fmt="csv", progress=False
    )
    assert (manifest.first_sequence, manifest.last_sequence) == (6, 12)
    audit_evidence.attach_evidence(middle, manifest, audit_log, client)
    report = verify_bundle(middle, key_of(audit_log))
    assert report.ok, report.problems
    assert (report.rows_checked, report.complete_through) == (7, timestamp_to)
    forge_ends(middle, cut_last_row)
    assert not verify_bundle(middle, key_of(audit_log)).ok

    empty = tmp_path / "empty"
    manifest = audit.export(
        client, empty, timestamp_from=timestamp_from + 1, timestamp_to=timestamp_from + 1, fmt="csv", progress=False
    )
    assert manifest.row_count == 0
    audit_evidence.attach_evidence(empty, manifest, audit_log, client)
    assert verify_bundle(empty, key_of(audit_log)).ok
