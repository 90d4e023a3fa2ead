"""Fixtures for the read-model tests: the real embedded engine, real chDB, a real metadata source.

chDB holds one database directory per process, so `client` opens a fresh directory per test and
closes it afterwards (tests run one at a time in a process).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest

from facade.changes.poller import ChangeCapture
from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import Account, AccountFlags, CreateTransferStatus, Transfer, TransferFlags
from ledger_events.gen.ledger.v1 import entries_pb2
from projections.client import ChdbClient

LEDGER = 840
CODE = 1
ACCOUNT_IDS = tuple(range(1, 7))
"""Accounts 1..6; 1 is the funding account the others draw from (no balance constraints)."""
CHANGES_MAX = 100_000
"""Bound on the drain loop: no test produces more changes."""


class Metadata:
    """A MetadataSource over a dict, filled as the workload posts (what the facade's store does)."""

    def __init__(self) -> None:
        self.by_transfer: dict[int, entries_pb2.EntryMetadata] = {}

    async def metadata_for(self, transfer_ids: Sequence[int]) -> dict[int, entries_pb2.EntryMetadata]:
        return {i: self.by_transfer[i] for i in transfer_ids if i in self.by_transfer}


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[EmbeddedEngine]:
    engine = await EmbeddedEngine.open(tmp_path / "engine")
    results = await engine.create_accounts(
        [Account(id=i, ledger=LEDGER, code=CODE, flags=AccountFlags.HISTORY) for i in ACCOUNT_IDS]
    )
    assert all(r.status.name == "CREATED" for r in results)
    yield engine
    await engine.close()


@pytest.fixture
def client(tmp_path: Path) -> Iterator[ChdbClient]:
    client = ChdbClient(tmp_path / "clickhouse", "ledger")
    yield client
    client.close()


@pytest.fixture
def metadata() -> Metadata:
    return Metadata()


class Workload:
    """Posts a deterministic mix of single-phase, pending, post (partial) and void transfers."""

    def __init__(self, engine: EmbeddedEngine, metadata: Metadata) -> None:
        self.engine = engine
        self.metadata = metadata
        self.next_id = 1000

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def _describe(self, transfer_id: int, kind: str, correlation_id: str) -> None:
        self.metadata.by_transfer[transfer_id] = entries_pb2.EntryMetadata(
            transaction_id=f"tx-{transfer_id}",
            idempotency_key=f"key-{transfer_id}",
            client_id="client-a",
            transaction_type=kind,
            source="tests",
            correlation_id=correlation_id,
            description="tab\there, quote ' and \\ backslash,\nnewline, ünïcode",
            labels={"order": str(transfer_id), "we'ird\tkey": "va\\lue"},
            currency="USD",
            leg_index=0,
        )

    async def post(self, transfers: list[Transfer]) -> None:
        results = await self.engine.create_transfers(transfers)
        assert [r.status for r in results] == [CreateTransferStatus.CREATED] * len(transfers)

    async def round(self, number: int) -> None:
        """One round: 4 single-phase, a pending then partial post, a pending then void; one
        transfer without metadata. Correlation id `round-<number>` on every described transfer."""
        correlation = f"round-{number}"
        singles = []
        for k in range(4):
            transfer_id = self._id()
            debit = 1 if k % 2 == 0 else 2 + (number + k) % 5
            credit = 2 + (number + k + 1) % 5 if debit == 1 else 1
            singles.append(
                Transfer(id=transfer_id, debit_account_id=debit, credit_account_id=credit,
                         amount=100 + 7 * number + k, ledger=LEDGER, code=CODE)
            )  # fmt: skip
            if k != 3:
                self._describe(transfer_id, "transfer", correlation)
        await self.post(singles)
        held, voided = self._id(), self._id()
        self._describe(held, "authorize", correlation)
        self._describe(voided, "authorize", correlation)
        await self.post(
            [
                Transfer(id=held, debit_account_id=1, credit_account_id=3, amount=500, ledger=LEDGER, code=CODE,
                         flags=TransferFlags.PENDING),
                Transfer(id=voided, debit_account_id=1, credit_account_id=4, amount=300, ledger=LEDGER, code=CODE,
                         flags=TransferFlags.PENDING),
            ]
        )  # fmt: skip
        post, void = self._id(), self._id()
        self._describe(post, "capture", correlation)
        self._describe(void, "void", correlation)
        await self.post(
            [
                Transfer(id=post, pending_id=held, amount=200 + number, ledger=LEDGER, code=CODE,
                         flags=TransferFlags.POST_PENDING_TRANSFER),
                Transfer(id=void, pending_id=voided, ledger=LEDGER, code=CODE,
                         flags=TransferFlags.VOID_PENDING_TRANSFER),
            ]
        )  # fmt: skip


@pytest.fixture
def workload(engine: EmbeddedEngine, metadata: Metadata) -> Workload:
    return Workload(engine, metadata)


async def drain(capture: ChangeCapture) -> int:
    """Runs change capture until it finds nothing new; returns how many changes it published."""
    total = 0
    for _ in range(CHANGES_MAX):
        published = await capture.run_once()
        if published == 0:
            return total
        total += published
    raise AssertionError("change capture did not drain")
