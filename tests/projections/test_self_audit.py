"""The background self-audit recomputes each signed root from the read model and checks the ledger
invariants: a clean read model moves `ledger_audit_last_verified_timestamp`; an altered row, a
forged root or unbalanced entries count in `ledger_audit_failures_total` and show in /readyz detail."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from prometheus_client import REGISTRY

from facade.api.ops import Readiness
from facade.audit.log import AuditLog, LeafRecord
from facade.audit.self_audit import AuditCheck, ChainFold, Frontier, SelfAudit, fold_chain, row_leaf_input_of
from facade.audit.sink import AuditSink
from facade.changes.into_read_model import change_capture
from facade.changes.poller import ChangeCapture, Pacing
from facade.engine.embedded import EmbeddedEngine
from facade.settings import AuditSettings
from ledger_audit_verifier import leaf_hash
from projections.client import ChdbClient, ClickHouseClient
from projections.projector import Projector
from projections.queries import TIMESTAMP_MAX
from tests.projections.conftest import Metadata, Workload, drain

ROUNDS = 3
CHANGES = ROUNDS * 8
T = TypeVar("T")


def failures(check: AuditCheck) -> float:
    return REGISTRY.get_sample_value("ledger_audit_failures_total", {"check": check.value}) or 0.0


def last_verified() -> float:
    return REGISTRY.get_sample_value("ledger_audit_last_verified_timestamp") or 0.0


@pytest.fixture
async def fed(
    tmp_path: Path, engine: EmbeddedEngine, client: ChdbClient, metadata: Metadata, workload: Workload
) -> AuditLog:
    for number in range(ROUNDS):
        await workload.round(number)
    assert await drain(change_capture(engine, Projector(client), tmp_path / "cp.json", metadata)) == CHANGES
    log = AuditLog(AuditSettings(data_dir=tmp_path / "audit", checkpoint_entries=10))
    capture = ChangeCapture(
        engine, AuditSink(log), tmp_path / "audit-cp.json", metadata, pacing=Pacing(batch_changes_max=4)
    )
    assert await drain(capture) == CHANGES
    return log


def query_of(client: ClickHouseClient) -> Callable[[Callable[[ClickHouseClient], T]], object]:
    async def query(function: Callable[[ClickHouseClient], T]) -> T:
        return function(client)

    return query


def test_frontier_root_is_the_tree_root(fed: AuditLog) -> None:
    frontier = Frontier()
    for size in range(1, CHANGES + 1):
        frontier.add(fed.tree.leaf(size - 1))
        assert frontier.root() == fed.tree.root(size)


async def test_clean_read_model_moves_the_verified_timestamp(
    fed: AuditLog, client: ChdbClient, engine: EmbeddedEngine
) -> None:
    before = {check: failures(check) for check in AuditCheck}
    audit = SelfAudit(fed, query_of(client), engine=engine)  # type: ignore[arg-type]  # A Query over a plain client.
    assert await audit.run_once() is None
    assert audit.verified_size == CHANGES
    latest = fed.latest()
    assert latest is not None
    assert last_verified() == pytest.approx(latest.checkpoint.timestamp_last / 1e9) and last_verified() > 0
    assert {check: failures(check) for check in AuditCheck} == before
    await audit.check()  # Readiness: no failure to report.


def mutate(client: ChdbClient, statement: str) -> None:
    client.command(f"{statement} SETTINGS mutations_sync = 1")


async def test_altered_row_fails_the_chain_and_shows_in_readiness(fed: AuditLog, client: ChdbClient) -> None:
    mutate(client, "ALTER TABLE transactions UPDATE amount = amount + 1 WHERE chain_sequence = 5")
    before = failures(AuditCheck.CHAIN)
    audit = SelfAudit(fed, query_of(client))  # type: ignore[arg-type]
    failure = await audit.run_once()
    assert failure is not None and failure.check is AuditCheck.CHAIN
    assert failures(AuditCheck.CHAIN) == before + 1
    ready, body = await Readiness({}, {"audit": audit.check}).report()
    assert ready  # Reported, not required: writes still go on.
    detail = body["dependencies"]
    assert isinstance(detail, dict) and detail["audit"]["ok"] is False
    assert "chain breaks at sequence 5" in detail["audit"]["error"]


async def test_forged_root_is_found(tmp_path: Path, fed: AuditLog, client: ChdbClient) -> None:
    """A checkpoint whose tree holds other leaves than the read model's rows (same chain, same size)."""
    forged = AuditLog(AuditSettings(data_dir=tmp_path / "forged"))
    records = [LeafRecord(i + 1, 0, fed.head().link, b"forged" + fed.tree.leaf(i)) for i in range(CHANGES)]
    forged.append(records)
    forged.seal()
    assert forged.tree.leaf(0) == leaf_hash(b"forged" + fed.tree.leaf(0))
    before = failures(AuditCheck.ROOT)
    failure = await SelfAudit(forged, query_of(client)).run_once()  # type: ignore[arg-type]
    assert failure is not None and failure.check is AuditCheck.ROOT
    assert failures(AuditCheck.ROOT) == before + 1


async def test_unbalanced_entries_fail_the_ledger_sums(fed: AuditLog, client: ChdbClient) -> None:
    mutate(client, "ALTER TABLE entries UPDATE amount = amount + 1 WHERE side = 'DEBIT' AND engine_timestamp = "
           "(SELECT min(engine_timestamp) FROM entries)")  # fmt: skip
    before = failures(AuditCheck.LEDGER_SUMS)
    failure = await SelfAudit(fed, query_of(client)).run_once()  # type: ignore[arg-type]
    assert failure is not None and failure.check is AuditCheck.LEDGER_SUMS
    assert failures(AuditCheck.LEDGER_SUMS) == before + 1


def test_the_folds_leaf_inputs_are_the_audit_modules(fed: AuditLog, client: ChdbClient) -> None:
    """fold_chain builds each leaf input from the row's values (row_leaf_input_of); it must be byte for byte
    what the audit module builds from the row's ChainRow (escapes, non-ASCII, labels, rows without metadata,
    every change kind the workload makes), and what the service's own tree holds."""
    from projections.audit import _CHAIN_PAGE, _row
    from projections.audit_evidence import row_leaf_input

    found = client.query_rows(_CHAIN_PAGE, {"cursor": 0, "timestamp_to": TIMESTAMP_MAX, "limit": 1000})
    assert len(found) == CHANGES
    rows = [_row(values) for values in found]
    assert any(not row.has_metadata for row in rows) and any(row.labels for row in rows)
    assert len({row.change for row in rows}) >= 2
    for index, (values, row) in enumerate(zip(found, rows, strict=True)):
        assert row_leaf_input_of(values) == row_leaf_input(row)
        assert leaf_hash(row_leaf_input_of(values)) == fed.tree.leaf(index)


def test_a_fold_in_pages_and_rounds_reaches_the_trees_root(fed: AuditLog, client: ChdbClient) -> None:
    """Folding up to each checkpoint in turn (as successive rounds do) ends at each signed root."""
    fold = ChainFold()
    for sealed in fed.checkpoints():
        fold, failure = fold_chain(client, fold, sealed.tree_size)
        assert failure is None
        assert fold.frontier.size == sealed.tree_size
        assert fold.frontier.root() == sealed.checkpoint.root_hash
    assert fold.link == fed.head().link
