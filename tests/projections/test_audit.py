"""Audit: the live chain verifies; changed, missing and reordered rows are found; exports round-trip
in CSV and Parquet and a tampered export row is found even when its manifest is forged to match."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from facade.changes.into_read_model import change_capture
from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import ChangeEventsFilter
from projections import audit
from projections.client import ChdbClient
from projections.projector import Projector
from projections.queries import TIMESTAMP_MAX
from tests.projections.conftest import Metadata, Workload, drain

ROUNDS = 4
CHANGES = ROUNDS * 8


@pytest.fixture
async def projected(
    tmp_path: Path, engine: EmbeddedEngine, client: ChdbClient, metadata: Metadata, workload: Workload
) -> ChdbClient:
    for number in range(ROUNDS):
        await workload.round(number)
    assert await drain(change_capture(engine, Projector(client), tmp_path / "cp.json", metadata)) == CHANGES
    return client


def mutate(client: ChdbClient, statement: str) -> None:
    client.command(f"{statement} SETTINGS mutations_sync = 1")


def test_live_chain_verifies(projected: ChdbClient) -> None:
    report = audit.verify_live(projected)
    assert report.ok, report.problems
    assert (report.rows_checked, report.first_sequence, report.last_sequence) == (CHANGES, 1, CHANGES)


@pytest.mark.parametrize(
    ("statement", "sequence", "reason"),
    [
        ("ALTER TABLE transactions UPDATE amount = amount + 1 WHERE chain_sequence = 9", 9, "altered"),
        ("ALTER TABLE transactions UPDATE description = 'edited' WHERE chain_sequence = 3", 3, "altered"),
        ("ALTER TABLE transactions DELETE WHERE chain_sequence = 12", 12, "missing"),
        (  # Two changes swap places in the chain: each carries the other's link.
            "ALTER TABLE transactions UPDATE "
            + ", ".join(
                f"{c} = if(chain_sequence = 5, (SELECT {c} FROM transactions WHERE chain_sequence = 6), "
                f"(SELECT {c} FROM transactions WHERE chain_sequence = 5))"
                for c in ("chain_previous_hash", "chain_hash", "chain_sequence")
            )
            + " WHERE chain_sequence IN (5, 6)",
            5,
            "reordered row",
        ),
        ("ALTER TABLE entries UPDATE amount = amount * 2 WHERE chain_sequence = 7 AND side = 'CREDIT'", 7, "differs"),
        ("ALTER TABLE entries DELETE WHERE chain_sequence = 8 AND side = 'DEBIT'", 8, "sides"),
    ],
)
def test_live_tampering_is_found(projected: ChdbClient, statement: str, sequence: int, reason: str) -> None:
    mutate(projected, statement)
    report = audit.verify_live(projected)
    assert not report.ok
    (problem,) = report.problems
    assert problem.sequence == sequence
    assert reason in problem.reason, problem


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
async def test_export_verify_round_trip(
    tmp_path: Path, engine: EmbeddedEngine, projected: ChdbClient, fmt: audit.Format
) -> None:
    events = await engine.get_change_events(ChangeEventsFilter())
    timestamp_from, timestamp_to = events[5].timestamp, events[20].timestamp  # Sequences 6..20.
    directory = tmp_path / f"export-{fmt}"
    manifest = audit.export(
        projected, directory, timestamp_from=timestamp_from, timestamp_to=timestamp_to, fmt=fmt, progress=False
    )
    assert (manifest.row_count, manifest.first_sequence, manifest.last_sequence) == (15, 6, 20)
    on_disk = json.loads((directory / audit.MANIFEST_NAME).read_text())
    assert (
        on_disk["files"][0]["sha256"] == hashlib.sha256((directory / manifest.files[0].name).read_bytes()).hexdigest()
    )
    alone = audit.verify_export(directory)
    assert alone.ok, alone.problems
    assert (alone.rows_checked, alone.head_hash) == (15, manifest.chain_head)
    against_live = audit.verify_export(directory, projected)
    assert against_live.ok, against_live.problems


def test_export_in_several_files(tmp_path: Path, projected: ChdbClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit, "AUDIT_PAGE_ROWS", 10)
    manifest = audit.export(
        projected, tmp_path / "export", timestamp_from=0, timestamp_to=TIMESTAMP_MAX, fmt="csv", progress=False
    )
    assert [f.rows for f in manifest.files] == [10, 10, 10, 2]
    report = audit.verify_export(tmp_path / "export")
    assert report.ok, report.problems
    assert report.rows_checked == CHANGES


def test_tampered_export_row_is_found(tmp_path: Path, projected: ChdbClient) -> None:
    directory = tmp_path / "export"
    manifest = audit.export(
        projected, directory, timestamp_from=0, timestamp_to=TIMESTAMP_MAX, fmt="csv", progress=False
    )
    path = directory / manifest.files[0].name
    with path.open(newline="") as handle:
        records = list(csv.reader(handle))
    amount = records[0].index("amount")
    records[10][amount] = str(int(records[10][amount]) + 1)  # Row 10: chain sequence 10.
    with path.open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(records)

    report = audit.verify_export(directory)
    assert [p.sequence for p in report.problems] == [0, 10]  # The file's digest, then the chain.
    assert "SHA-256" in report.problems[0].reason

    # Forge the manifest's digest: the chain still finds the row.
    data = json.loads((directory / audit.MANIFEST_NAME).read_text())
    data["files"][0]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (directory / audit.MANIFEST_NAME).write_text(json.dumps(data))
    forged = audit.verify_export(directory)
    (problem,) = forged.problems
    assert (problem.sequence, "altered" in problem.reason) == (10, True)
