"""The batch path's bytes, pinned: one fixed batch of transactions (posts of every leg type, multi-leg,
labels, times, an authorization with a timeout, its capture and a void, a refused overdraft, a retried
key) mapped, journaled through the metadata store (one CREATE_TRANSACTIONS record), its change events'
metadata and the audit leaves hashed from them. Each digest was computed by the build before the batch
path's per-item work was cut (main at 7ab6090): the same inputs must give the same ids, canonical
bodies, fingerprints, transfers, journal bytes, results, metadata and leaf inputs, byte for byte."""

from __future__ import annotations

import hashlib
from pathlib import Path

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.audit.sink import leaf_batch
from facade.domain.accounts import ACCOUNT_CODE_SETTLEMENT, Currencies
from facade.domain.ids import settlement_account_id
from facade.domain.transactions import (
    MappedTransaction,
    Metadata,
    PostRequest,
    ResolveRequest,
    map_post,
    map_resolution,
)
from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import Account, AccountFlags, ChangeEventsFilter, CreateAccountStatus
from facade.metadata import JournalMetadataStore
from facade.settings import ApiSettings
from ledger_events.chain import Link
from ledger_events.entries import metadata_bytes

CURRENCIES = Currencies(dict(ApiSettings().currencies))
ALICE, BOB, CAROL = 3001, 3002, 3003
CLOCK_START_NS = 1_780_000_000_000_000_000
"""A fixed clock (stepped 1 µs a reading): timestamps, and so the journal, do not depend on the wall."""

MAPPED_SHA256 = "2a14101208d344f7355185daae03308137744e68d078bc0c91ae20d6a1af6f21"
JOURNAL_SHA256 = "8cbe2f4535e7e87b36abd5a598ee9fe3e5e20cdafbcea5aae85c8dc8b5a9d243"
RESULTS_SHA256 = "caac30d664402521d3a84242be97faceb865e00681c6610a6addec899b34ea2c"
LEAVES_SHA256 = "cee1d5f149a886dc781f3ba7c840d041e50fa11c494dda46257f02e0a8a2fa58"


def _leg(leg_type: int, amount: str, account: int = 0, source: int = 0, target: int = 0) -> pb.Leg:
    return pb.Leg(
        type=leg_type,  # type: ignore[arg-type]
        account_id=str(account) if account else "",
        from_account_id=str(source) if source else "",
        to_account_id=str(target) if target else "",
        amount=amount,
        currency="USD",
    )


def _posts() -> list[MappedTransaction]:
    credit, debit, transfer = pb.LEG_TYPE_CREDIT, pb.LEG_TYPE_DEBIT, pb.LEG_TYPE_TRANSFER
    labelled = Metadata(
        source="golden",
        correlation_id="corr-1",
        description='quotes " and \\ and ünïcödé',
        labels={"b": "2", "a": "1", "zé": "ü"},
        occurred_at_ns=1_700_000_000_123_456_789,
    )
    requests = [
        PostRequest("fund-alice", [_leg(credit, "100000", account=ALICE)], Metadata(source="bank")),
        PostRequest("fund-bob", [_leg(credit, "5000", account=BOB)], labelled),
        PostRequest(
            "split",
            [_leg(transfer, "250", source=ALICE, target=BOB), _leg(transfer, "125", source=ALICE, target=CAROL)],
            Metadata(correlation_id="split-1"),
        ),
        PostRequest("withdraw", [_leg(debit, "42", account=BOB)], Metadata(description="atm")),
        PostRequest("overdraw", [_leg(debit, "99999999", account=CAROL)], Metadata()),  # CAROL may not overdraw.
        PostRequest("hold", [_leg(transfer, "700", source=ALICE, target=BOB)], labelled, True, 3600),
        PostRequest("hold-2", [_leg(transfer, "80", source=BOB, target=CAROL)], Metadata(), True, 0),
    ]
    return [map_post("client-golden", request, currencies=CURRENCIES) for request in requests]


def _resolutions(posts: list[MappedTransaction]) -> list[MappedTransaction]:
    hold, hold_2 = posts[5], posts[6]
    return [
        map_resolution(
            "client-golden", ResolveRequest("capture", True, "300", Metadata(source="pos")), authorization=hold
        ),
        map_resolution("client-golden", ResolveRequest("void", False, "", Metadata()), authorization=hold_2),
    ]


def _mapped_digest(transactions: list[MappedTransaction]) -> str:
    h = hashlib.sha256()
    for t in transactions:
        h.update(repr((t.client_id, t.idempotency_key, t.transaction_id, t.kind.value, t.currency)).encode())
        h.update(repr((t.body, t.fingerprint.hex(), t.authorization_id)).encode())
        h.update(
            repr([(leg.type.value, leg.debit_account_id, leg.credit_account_id, leg.amount) for leg in t.legs]).encode()
        )
        for x in t.transfers:
            h.update(
                repr(
                    (x.id, x.debit_account_id, x.credit_account_id, x.amount, x.pending_id, x.user_data_128,
                     x.user_data_64, x.user_data_32, x.timeout, x.ledger, x.code, int(x.flags), x.timestamp)
                ).encode()
            )  # fmt: skip
    return h.hexdigest()


def test_mapping_gives_the_same_ids_bodies_and_transfers() -> None:
    posts = _posts()
    assert _mapped_digest(posts + _resolutions(posts)) == MAPPED_SHA256


async def _batch_digests(directory: Path) -> tuple[str, str, str]:
    """SHA-256 of the results, of the engine's files and of the change metadata and leaf inputs."""
    readings = iter(range(CLOCK_START_NS, CLOCK_START_NS + 10**9, 1_000))
    engine = await EmbeddedEngine.open(directory / "engine", clock=lambda: next(readings))
    ledger_id = CURRENCIES.get("USD").ledger
    no_overdraft = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.HISTORY
    created = await engine.create_accounts(
        [
            Account(id=ALICE, ledger=ledger_id, code=1, flags=no_overdraft),
            Account(id=BOB, ledger=ledger_id, code=1, flags=AccountFlags.HISTORY),
            Account(id=CAROL, ledger=ledger_id, code=1, flags=no_overdraft),
            Account(id=settlement_account_id("USD"), ledger=ledger_id, code=ACCOUNT_CODE_SETTLEMENT),
        ]
    )
    assert all(r.status == CreateAccountStatus.CREATED for r in created)
    store = await JournalMetadataStore.open(directory / "metadata.sqlite3", engine, owns_engine=True)
    try:
        posts = _posts()
        results = await store.submit(posts)
        # The same batch again (every key retried: `exists`, no new intents), then the resolutions.
        results += await store.submit(posts)
        results += await store.submit(_resolutions(posts))
        events = await engine.get_change_events(ChangeEventsFilter(timestamp_min=1, limit=100))
        metadata = await store.metadata_for([e.transfer.id for e in events])
        leaves = leaf_batch(events, metadata, Link(0, bytes(32), bytes(32)))
    finally:
        await store.close()
    assert len(events) == 9 and len(metadata) == 9  # The refused overdraft is no change.
    results_text = repr([(r.timestamp, int(r.status)) for r in results])
    journal = b"".join(path.read_bytes() for path in sorted((directory / "engine").iterdir()) if path.is_file())
    h = hashlib.sha256()
    for event in events:
        h.update(metadata_bytes(metadata.get(event.transfer.id)))
    for data in leaves.leaf_inputs:
        h.update(data)
    h.update(leaves.link_last.hash)
    return hashlib.sha256(results_text.encode()).hexdigest(), hashlib.sha256(journal).hexdigest(), h.hexdigest()


async def test_the_journal_results_metadata_and_leaves_are_byte_for_byte_the_same(tmp_path: Path) -> None:
    assert await _batch_digests(tmp_path) == (RESULTS_SHA256, JOURNAL_SHA256, LEAVES_SHA256)
