"""The continuous checks' reconciliation in slices (projections.reconcile.ReconcileSweep) on a real
service, engine and read model: a sweep of many slices compares every engine account exactly once and
finds nothing on a clean read model, and damage to an old row (far behind anything new) is found
within one sweep, with the slice that holds it."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from projections import reconcile
from projections.reconcile import ACCOUNT_ID_MAX, ReconcileSweep, compare, sweeping_drift
from tests.api.conftest import Api, credit, open_api, transfer

WAIT_SECONDS = 30.0
ACCOUNTS = 6


async def traffic(api: Api) -> int:
    """Transfers between ACCOUNTS accounts; returns the last one's commit time once projected."""
    accounts = [await api.account(f"sweep-{n}") for n in range(ACCOUNTS)]
    await api.post("sweep-fund", credit(accounts[0], 1_000_000))
    last = 0
    for n in range(3 * ACCOUNTS):
        posted = await api.post(f"sweep-pay-{n}", transfer(accounts[n % ACCOUNTS], accounts[(n + 1) % ACCOUNTS], 10))
        last = posted.committed_at_ns
    read_model = api.server.read_model
    assert read_model is not None
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while await read_model.projected_until() < last:
        assert asyncio.get_running_loop().time() < deadline, "projector did not catch up"
        await asyncio.sleep(0.05)
    return last


async def test_a_sweep_in_many_slices_compares_every_account_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reconcile, "SLICE_ENTRIES_MAX", 4)  # Dozens of entries: several slices.
    api = await open_api(tmp_path, history=True)
    try:
        await traffic(api)
        read_model = api.server.read_model
        assert read_model is not None
        sweep = ReconcileSweep()
        checked = 0
        ranges = []
        for _ in range(reconcile.SLICES_MAX):
            figures = await read_model.query(sweep.next_figures)
            report = await compare(api.server.engine, figures)
            assert report.ok, report
            ranges.append(figures.accounts)
            checked += report.accounts_checked
            if sweep.sweep_ends:
                break
        assert sweep.sweeps == 1 and len(ranges) > 2, "the model is several slices"
        # The slices tile the id space: no gap, no overlap.
        assert ranges[0].low == 0 and ranges[-1].high == ACCOUNT_ID_MAX
        assert all(after.low == before.high + 1 for before, after in itertools.pairwise(ranges))
        # Every engine account compared exactly once over the sweep, as the one-go reconciliation does.
        assert checked == (await full_report(api)).accounts_checked >= ACCOUNTS
    finally:
        await api.channel.close()
        await api.server.stop()


async def full_report(api: Api) -> reconcile.ReconciliationReport:
    read_model = api.server.read_model
    assert read_model is not None
    return await compare(api.server.engine, await read_model.query(reconcile.read_figures))


async def test_damage_to_an_old_row_is_found_within_one_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconcile, "SLICE_ENTRIES_MAX", 4)
    api = await open_api(tmp_path, history=True)
    try:
        await traffic(api)
        read_model = api.server.read_model
        assert read_model is not None
        drift = sweeping_drift(api.server.engine, read_model.query)
        clean = ReconcileSweep()
        slices = 0
        while True:  # How many slices a sweep has now.
            await read_model.query(clean.next_figures)
            slices += 1
            if clean.sweep_ends:
                break
        assert slices > 2
        for _ in range(slices):
            assert await drift() == "", "a clean read model has no drift in any slice"
        victim = ACCOUNT_ID_MAX - 7  # In the last slice: found only after every other slice was looked at.
        await read_model.query(
            lambda client: client.command(
                "INSERT INTO entries (event_id, engine_timestamp, change, side, account_id, counterparty_account_id, "
                "amount, signed_amount, chain_sequence) "
                "VALUES ('1:D', 1, 'SINGLE_PHASE', 'DEBIT', {victim:UInt128}, 1, 500, -500, 999999)",
                {"victim": victim},
            )
        )
        reasons = [await drift() for _ in range(slices)]
        assert reasons[:-1] == [""] * (slices - 1), "found in its own slice, not before"
        assert f"1 accounts the engine does not have (first: {victim})" in reasons[-1]
    finally:
        await api.channel.close()
        await api.server.stop()
