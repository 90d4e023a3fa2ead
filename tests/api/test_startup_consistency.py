"""Start-up consistency through the real start-up path (facade.app.start) on real files: the
storage table's rows for a lost, older or foreign metadata store and a lost journal each end in a
refusal that names the damage, never in a ready service with less; and the continuous check takes a
running service out of readiness when its store loses writes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.app import start
from facade.auth import SCOPES_ALL, Principal, issue_token
from facade.consistency import COVERAGE_PAGE_MAX, READ_MODEL_RECONCILE_ROUNDS, StartupConsistencyError
from facade.domain.accounts import AccountRequest
from facade.domain.ids import transfer_id
from facade.domain.transactions import Metadata, PostRequest
from facade.engine.embedded import EmbeddedEngine
from facade.metadata import JournalMetadataStore
from facade.metadata_store import MetadataStore
from facade.service import ACCOUNT_TYPE_NO_OVERDRAFT, LedgerService
from facade.settings import AuthSettings, Settings
from ledger_events import checkpoint as checkpoints
from ledger_events.chain import GENESIS
from ledger_testkit.service import ledger_executable
from projections.reconcile import ReadModelFigures, compare
from tests.api.conftest import Api, credit, debit, make_settings, open_api, transfer
from tests.api.test_logs import json_lines

STOP_SECONDS = 30
WAIT_SECONDS = 30.0


async def run_some_traffic(api: Api, prefix: str, count: int = 5) -> str:
    alice, bob = await api.account(f"{prefix}-alice"), await api.account(f"{prefix}-bob")
    await api.post(f"{prefix}-fund", credit(alice, 10_000))
    for n in range(count):
        await api.post(f"{prefix}-pay-{n}", transfer(alice, bob, 100))
    await api.post(f"{prefix}-out", debit(bob, 50))
    return alice


async def close(api: Api) -> None:
    await api.channel.close()
    await api.server.stop()


async def refused(settings: Settings) -> str:
    with pytest.raises(StartupConsistencyError) as raised:
        await start(settings)
    return str(raised.value)


def delete_store(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def copy_store(source: Path, destination: Path) -> None:
    """A consistent copy of a closed store (its -wal file too, if one is left)."""
    destination.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal"):
        if Path(f"{source}{suffix}").exists():
            shutil.copy2(f"{source}{suffix}", destination / f"{source.name}{suffix}")


async def test_fresh_start_then_restarts_agree(tmp_path: Path) -> None:
    api = await open_api(tmp_path)
    try:
        alice = await run_some_traffic(api, "a")
        await api.restart()  # Same engine, same store: the markers agree.
        assert await api.available(alice) == 10_000 - 500
        await api.restart()
        assert await api.available(alice) == 10_000 - 500
    finally:
        await close(api)


async def test_a_deleted_metadata_store_with_the_journal_intact_refuses(tmp_path: Path) -> None:
    api = await open_api(tmp_path)
    await run_some_traffic(api, "a")
    await close(api)
    delete_store(api.settings.api.metadata_db)
    message = await refused(api.settings)
    assert str(api.settings.api.metadata_db) in message and "missing or new" in message
    assert await refused(api.settings) == message, "the empty store a refused start leaves refuses again"


async def test_a_deleted_metadata_store_refuses_even_before_the_first_marker(tmp_path: Path) -> None:
    """Data from a build without markers: the engine holds accounts and transfers, the store is new."""
    api = await open_api(tmp_path)
    await run_some_traffic(api, "a")
    await close(api)
    delete_store(api.settings.api.metadata_db)
    renamed = make_settings(tmp_path)  # Another façade name: the engine has no marker under it.
    renamed.consistency.instance_name = "renamed"
    message = await refused(renamed)
    assert str(renamed.api.metadata_db) in message and "holds accounts and transfers" in message


async def test_an_older_copy_of_the_metadata_store_refuses(tmp_path: Path) -> None:
    api = await open_api(tmp_path)
    await run_some_traffic(api, "a")
    await close(api)
    copy_store(api.settings.api.metadata_db, tmp_path / "backup")
    api = await open_api(tmp_path)
    await run_some_traffic(api, "b", count=3)  # Written after the copy was taken.
    await close(api)
    delete_store(api.settings.api.metadata_db)
    copy_store(tmp_path / "backup" / api.settings.api.metadata_db.name, api.settings.api.metadata_db.parent)
    message = await refused(api.settings)
    assert str(api.settings.api.metadata_db) in message and "older than the engine" in message
    # b-alice and b-bob were written after the copy was taken. b's five transfers were too, but their
    # metadata is in the engine's journal on this engine (rebuilt at start), so none is missing.
    assert "2 of 4 engine accounts and 0 of 12 engine transfers" in message


async def test_a_deleted_journal_with_the_store_intact_refuses(tmp_path: Path) -> None:
    api = await open_api(tmp_path)
    await run_some_traffic(api, "a")
    await close(api)
    shutil.rmtree(api.settings.engine.data_dir)
    message = await refused(api.settings)
    assert "engine's data is missing" in message and str(api.settings.api.metadata_db) in message
    assert await refused(api.settings) == message, "the empty journal a refused start leaves refuses again"


async def test_another_deployments_store_refuses(tmp_path: Path) -> None:
    first, second = await open_api(tmp_path / "one"), await open_api(tmp_path / "two")
    await close(first)
    await close(second)
    delete_store(first.settings.api.metadata_db)
    copy_store(second.settings.api.metadata_db, first.settings.api.metadata_db.parent)
    message = await refused(first.settings)
    assert "another deployment's" in message


async def test_a_first_start_interrupted_between_the_markers_completes(tmp_path: Path) -> None:
    """Store marked, engine not (the journal of a ledger that never held data was removed): nothing
    was ever acknowledged, so starting is safe and writes the engine's marker."""
    api = await open_api(tmp_path)
    await close(api)
    shutil.rmtree(api.settings.engine.data_dir)
    api = await open_api(tmp_path)
    try:
        alice = await run_some_traffic(api, "a")
        await api.restart()
        assert await api.available(alice) == 9_500
    finally:
        await close(api)


async def test_a_checkpoint_ahead_of_the_engine_refuses(tmp_path: Path) -> None:
    """Journal and store both gone, but change capture had published changes: the engine lost them."""
    settings = make_settings(tmp_path, history=True)
    checkpoints.save(settings.clickhouse.projector_checkpoint, checkpoints.Checkpoint(1_700_000_000, GENESIS))
    message = await refused(settings)
    assert str(settings.clickhouse.projector_checkpoint) in message and "does not hold" in message


async def test_readiness_fails_when_the_store_loses_writes(tmp_path: Path) -> None:
    api = await open_api(tmp_path)
    try:
        await run_some_traffic(api, "a")
        monitor = api.server.consistency
        assert monitor is not None and api.server.ops is not None
        status = await monitor.check_round()
        assert status.ok and status.transfers_checked == 7 and status.accounts_checked == 2
        ready_url = f"http://127.0.0.1:{api.server.ops.port}/readyz"
        async with httpx.AsyncClient() as client:
            assert (await client.get(ready_url)).status_code == 200
            b_alice = await run_some_traffic(api, "b", count=1)
            # The store loses the newest account's row (as a restored or damaged file would). Transaction
            # metadata cannot be lost apart from the engine on this engine: it is in the journal.
            with sqlite3.connect(api.settings.api.metadata_db) as db:
                assert db.execute("DELETE FROM accounts WHERE account_id = ?", (b_alice,)).rowcount == 1
            status = await monitor.check_round()
            assert not status.ok and "1 of 2 engine accounts and 0 of 3 engine transfers" in status.reason
            ready = await client.get(ready_url)
            assert ready.status_code == 503
            assert ready.json()["checks"]["consistency"]["ok"] is False
            assert "no metadata rows" in ready.json()["checks"]["consistency"]["error"]
            metrics = (await client.get(f"http://127.0.0.1:{api.server.ops.port}/metrics")).text
            assert "ledger_consistency_ok 0.0" in metrics
    finally:
        await close(api)


def test_ledger_serve_refuses_a_deleted_store_with_exit_status_2(tmp_path: Path) -> None:
    """The storage table's row as operators met it: `ledger serve`, traffic, stop, delete
    metadata.sqlite3, start again: a refusal naming the store (no /readyz 200 over an empty ledger)."""
    env = os.environ | {
        "LEDGER_API__PORT": "0",
        "LEDGER_API__HTTP_PORT": "-1",
        "LEDGER_ENGINE__DATA_DIR": str(tmp_path / "engine"),
        "LEDGER_API__METADATA_DB": str(tmp_path / "metadata.sqlite3"),
        "LEDGER_OBSERVABILITY__METRICS_PORT": "-1",
        "LEDGER_OBSERVABILITY__LOG_JSON": "true",
        "LEDGER_CLICKHOUSE__SERVE_HISTORY": "false",
    }
    ledger = ledger_executable()
    server = subprocess.Popen([ledger, "serve"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        [*_, serving] = json_lines(server.stdout, lambda line: line.get("event") == "serving")
        with grpc.insecure_channel(f"127.0.0.1:{serving['port']}") as channel:
            stub: Any = rpc.LedgerStub(channel)
            metadata = (("authorization", f"Bearer {issue_token(AuthSettings(), 'client-a', SCOPES_ALL)}"),)
            request = pb.CreateAccountRequest(currency="USD", external_reference="a", type=pb.ACCOUNT_TYPE_NO_OVERDRAFT)
            account = stub.CreateAccount(request, metadata=metadata).account_id
            stub.PostTransaction(
                pb.PostTransactionRequest(idempotency_key="fund", legs=[credit(str(account), 500)]), metadata=metadata
            )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(STOP_SECONDS)
    delete_store(tmp_path / "metadata.sqlite3")
    refused_start = subprocess.run(
        [ledger, "serve"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=STOP_SECONDS, check=False
    )
    assert refused_start.returncode == 2, refused_start.stderr
    [line] = [json.loads(text) for text in refused_start.stdout.splitlines() if "refusing to start" in text]
    assert str(tmp_path / "metadata.sqlite3") in line["reason"] and "missing or new" in line["reason"]


async def test_readiness_fails_when_the_read_model_drifts(tmp_path: Path) -> None:
    """The in-service read model is reconciled with the engine by the continuous check: a bogus entry in
    ClickHouse (an account the engine does not have) takes the service out of readiness."""
    api = await open_api(tmp_path, history=True)
    try:
        await run_some_traffic(api, "a")
        read_model, monitor = api.server.read_model, api.server.consistency
        assert read_model is not None and monitor is not None
        last = await api.post("a-last", credit(await api.account("a-alice"), 1))
        deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
        while await read_model.projected_until() < last.committed_at_ns:
            assert asyncio.get_running_loop().time() < deadline, "projector did not catch up"
            await asyncio.sleep(0.05)
        while monitor.status.rounds % READ_MODEL_RECONCILE_ROUNDS:  # Up to the next reconciling round.
            assert (await monitor.check_round()).ok
        assert (await monitor.check_round()).ok, "a consistent read model reconciles"
        await read_model.query(
            lambda client: client.command(
                "INSERT INTO entries (event_id, engine_timestamp, change, side, account_id, counterparty_account_id, "
                "amount, signed_amount, chain_sequence) "
                "VALUES ('1:D', 1, 'SINGLE_PHASE', 'DEBIT', 12345, 1, 500, -500, 999999)"
            )
        )
        while monitor.status.rounds % READ_MODEL_RECONCILE_ROUNDS:
            assert (await monitor.check_round()).ok, "only the reconciling round looks at balances"
        status = await monitor.check_round()
        assert not status.ok and "1 accounts the engine does not have (first: 12345)" in status.reason
        assert api.server.readiness is not None
        ready, body = await api.server.readiness.report()
        assert not ready and "drifts" in str(body["checks"])
    finally:
        await close(api)


async def test_reconciling_before_anything_was_projected_is_not_drift(tmp_path: Path) -> None:
    """As of timestamp 0 (an empty read model) every balance is zero, however far the engine moved:
    the continuous check's first round runs while the projector has not caught up."""
    api = await open_api(tmp_path)
    try:
        await run_some_traffic(api, "a")
        report = await compare(api.server.engine, ReadModelFigures(0, {}, {}))
        assert report.ok and report.drifts == [] and report.accounts_checked >= 2
    finally:
        await close(api)


async def test_coverage_spans_many_pages_forward_and_newest_first(tmp_path: Path) -> None:
    """1,100 transfers (several COVERAGE_PAGE_MAX pages): the continuous round finds the one transfer
    whose metadata is gone from the index, however deep in the pages it sits; a restart rebuilds the
    index from the journal, so the start-up check (newest first, over every page) then finds it whole."""
    api = await open_api(tmp_path)
    alice = await api.account("alice")
    for batch in range(2):
        count = 1_000 if batch == 0 else 100
        response = await api.stub.PostTransactions(
            pb.PostTransactionsRequest(
                transactions=[
                    pb.PostTransactionRequest(idempotency_key=f"bulk-{batch}-{n}", legs=[credit(alice, 1)])
                    for n in range(count)
                ]
            ),
            metadata=api.auth(),
        )
        assert all(result.HasField("transaction") for result in response.results)
    assert 2 * COVERAGE_PAGE_MAX < 1_100
    lost = transfer_id("client-a", "bulk-0-3", 0)  # In the oldest page, the newest-first scan's last.
    store = api.server.store
    assert isinstance(store, JournalMetadataStore)
    del store.engine.index.transfers[lost]  # As an index bug would lose it (no file holds the index).
    monitor = api.server.consistency
    assert monitor is not None
    status = await monitor.check_round()
    assert not status.ok and "1 of 1100 engine transfers" in status.reason
    await close(api)
    api = await open_api(tmp_path)  # Rebuilt from the journal: complete again.
    try:
        store = api.server.store
        assert isinstance(store, JournalMetadataStore) and await store.known_transfers([lost]) == {lost}
        assert api.server.consistency is not None
        status = await api.server.consistency.check_round()
        assert status.ok and status.transfers_checked == 1100
    finally:
        await close(api)


async def write_without_markers(directory: Path) -> str:
    """What a build without instance markers left behind: engine and store with data, no markers."""
    settings = make_settings(directory)
    engine = await EmbeddedEngine.open(settings.engine.data_dir)
    store = await MetadataStore.open(settings.api.metadata_db)
    service = LedgerService(engine, store, settings.api)
    await service.start()
    try:
        principal = Principal("client-a", SCOPES_ALL)
        view = await service.create_account(
            principal, AccountRequest("USD", "alice", "alice", ACCOUNT_TYPE_NO_OVERDRAFT, {})
        )
        alice = str(view.record.account_id)
        [posted] = await service.post_transactions(principal, [PostRequest("fund", [credit(alice, 700)], Metadata())])
        assert not isinstance(posted, Exception)
    finally:
        await service.close()
        await store.close()
        await engine.close()
    return alice


async def test_an_upgrade_from_a_build_without_markers_is_adopted(tmp_path: Path) -> None:
    alice = await write_without_markers(tmp_path)
    api = await open_api(tmp_path)
    try:
        assert await api.available(alice) == 700
        await api.restart()  # Now marked on both sides.
        assert await api.available(alice) == 700
    finally:
        await close(api)


async def test_an_upgrade_whose_journal_was_lost_refuses(tmp_path: Path) -> None:
    await write_without_markers(tmp_path)
    settings = make_settings(tmp_path)
    shutil.rmtree(settings.engine.data_dir)
    message = await refused(settings)
    assert "holds no accounts or transfers" in message and str(settings.api.metadata_db) in message
