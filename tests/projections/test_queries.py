"""Queries over a projected workload: as-of balances equal the engine's history; statements,
daily totals and correlation lookups agree with what was posted; reconciliation finds no drift,
then finds injected drift."""

from __future__ import annotations

from pathlib import Path

from facade.changes.into_read_model import change_capture
from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import AccountFilter, AccountFilterFlags, ChangeEventsFilter
from projections import queries
from projections.client import ChdbClient
from projections.projector import Projector
from projections.reconcile import reconcile
from tests.projections.conftest import ACCOUNT_IDS, Metadata, Workload, drain

ROUNDS = 5


async def project(tmp_path: Path, engine: EmbeddedEngine, client: ChdbClient, metadata: Metadata) -> None:
    await drain(change_capture(engine, Projector(client), tmp_path / "cp.json", metadata))


async def test_balance_as_of_equals_engine_history(
    tmp_path: Path, engine: EmbeddedEngine, client: ChdbClient, metadata: Metadata, workload: Workload
) -> None:
    for number in range(ROUNDS):
        await workload.round(number)
    await project(tmp_path, engine, client, metadata)
    flags = AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS
    checked = 0
    for account_id in ACCOUNT_IDS:
        history = await engine.get_account_balances(AccountFilter(account_id=account_id, flags=flags))
        assert history, f"account {account_id} has no history"
        for point, following in zip(history, [*history[1:], None], strict=True):
            # At the change, and just before the account's next one (timestamps are consecutive
            # within a batch, so "just after" belongs to the next change of another account).
            end = following.timestamp - 1 if following is not None else point.timestamp + 10**9
            for timestamp in (point.timestamp, end):
                series = queries.balance_as_of(client, account_id, timestamp)
                derived = queries.balances_from_entries(client, timestamp, account_id)[account_id]
                expected = (point.debits_pending, point.debits_posted, point.credits_pending, point.credits_posted)
                for b in (series, derived):
                    assert (b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted) == expected
                checked += 1
        before = queries.balance_as_of(client, account_id, history[0].timestamp - 1)
        assert before == queries.ZERO_BALANCE
    assert checked > 50


async def test_statement_totals_and_correlation(
    tmp_path: Path, engine: EmbeddedEngine, client: ChdbClient, metadata: Metadata, workload: Workload
) -> None:
    for number in range(ROUNDS):
        await workload.round(number)
    await project(tmp_path, engine, client, metadata)
    events = await engine.get_change_events(ChangeEventsFilter())
    middle = events[len(events) // 2].timestamp
    end = events[-1].timestamp + 1

    full = queries.statement(client, 3, 0, end)
    first = queries.statement(client, 3, 0, middle)
    second = queries.statement(client, 3, middle, end)
    assert not full.truncated
    assert full.lines == first.lines + second.lines
    assert first.closing == second.opening
    for statement in (first, second):
        net = statement.closing.net_posted - statement.opening.net_posted
        assert net == sum(line.signed_amount for line in statement.lines)
    paged = queries.statement(client, 3, 0, end, limit=2)
    assert paged.truncated
    assert paged.lines == full.lines[:2]
    assert paged.closing == full.lines[1].balance_after

    totals = queries.daily_totals(client, 0, end)
    assert sum(t.transactions for t in totals) == len(events)
    captured = [t for t in totals if t.transaction_type == "capture"]
    assert [(t.change, t.transactions, t.amount) for t in captured] == [
        ("TWO_PHASE_POSTED", ROUNDS, sum(200 + n for n in range(ROUNDS)))
    ]
    unlabeled = [t for t in totals if t.transaction_type == ""]
    assert [(t.currency, t.transactions) for t in unlabeled] == [("", ROUNDS)]

    found = queries.transactions_by_correlation_id(client, "round-2")
    assert len(found) == 7  # Every transfer of round 2 but the one without metadata.
    assert [row.engine_timestamp for row in found] == sorted(row.engine_timestamp for row in found)
    assert {row.transaction_type for row in found} == {"transfer", "authorize", "capture", "void"}
    assert queries.transactions_by_correlation_id(client, "no-such-correlation") == []


async def test_reconciliation_zero_drift_then_injected_drift(
    tmp_path: Path, engine: EmbeddedEngine, client: ChdbClient, metadata: Metadata, workload: Workload
) -> None:
    for number in range(ROUNDS):
        await workload.round(number)
    await project(tmp_path, engine, client, metadata)
    report = await reconcile(engine, client)
    assert report.ok, report
    assert report.accounts_checked == len(ACCOUNT_IDS)
    assert report.drifts == []

    # The engine moves on without the projector: lag, not drift (history accounts compare as of T).
    await workload.round(ROUNDS)
    lagging = await reconcile(engine, client)
    assert lagging.ok, lagging

    # A bogus posted debit on account 4, written straight into ClickHouse.
    client.command(
        "INSERT INTO entries (event_id, engine_timestamp, change, side, account_id, counterparty_account_id, amount, "
        "signed_amount, chain_sequence) VALUES ('1:D', 1, 'SINGLE_PHASE', 'DEBIT', 4, 1, 12345, -12345, 999999)"
    )
    drifted = await reconcile(engine, client)
    assert not drifted.ok
    assert drifted.drifting_accounts == [4]
    (drift,) = drifted.drifts
    assert (drift.source, drift.field, drift.clickhouse - drift.engine) == ("entries", "debits_posted", 12345)

    # A balance_after altered in the time series (`balances` is a view over entries' balance columns): an
    # entry that moves no money (amount 0) but carries account 5's newest balances with one more pending credit.
    client.command(
        "INSERT INTO entries (event_id, engine_timestamp, change, side, account_id, counterparty_account_id, amount, "
        "signed_amount, ledger, has_balance_after, debits_pending_after, debits_posted_after, credits_pending_after, "
        "credits_posted_after, chain_sequence) SELECT event_id, engine_timestamp + 1, 'SINGLE_PHASE', side, "
        "account_id, counterparty_account_id, 0, 0, ledger, true, debits_pending_after, debits_posted_after, "
        "credits_pending_after + 1, credits_posted_after, 999998 FROM entries WHERE account_id = 5 AND "
        "has_balance_after ORDER BY engine_timestamp DESC LIMIT 1"
    )
    twice = await reconcile(engine, client)
    assert twice.drifting_accounts == [4, 5]
    assert [(d.source, d.field) for d in twice.drifts if d.account_id == 5] == [("balances", "credits_pending")]
