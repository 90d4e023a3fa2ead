"""The TigerBeetle backend's own behaviour: requests sized to the cluster, errors translated, the change
feed read from TigerBeetle's `get_change_events` (expiries included).

The planning and translation tests run always; the others need a real cluster (`TB_ADDRESSES`, as the
conformance suite) and compare it with the embedded engine running the same events. The README's recipe
starts a `--development` replica, whose 32 KiB requests hold 253 transfers: a 300-event batch must be
split, and a client configured for the production 1 MiB learns the smaller limit from the refusals.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import tigerbeetle as tb

from facade.engine import tigerbeetle as adapter
from facade.engine.embedded import EmbeddedEngine
from facade.engine.protocol import Engine, EngineUnavailableError
from facade.engine.tigerbeetle import TigerBeetleEngine
from facade.engine.types import (
    Account,
    AccountFlags,
    ChangeEvent,
    ChangeEventsFilter,
    ChangeEventType,
    CreateTransferStatus,
    FieldRangeError,
    TooMuchDataError,
    Transfer,
    TransferFlags,
)
from tests.tigerbeetle_fixtures import needs_binary, tigerbeetle_replica

from .conftest import TB_SKIP_REASON, Ids

needs_tigerbeetle = pytest.mark.skipif(not os.environ.get("TB_ADDRESSES"), reason=TB_SKIP_REASON)

LINKED = TransferFlags.LINKED
DEVELOPMENT_LIMIT_REQUEST_BYTES = 32 * 1024
DEVELOPMENT_TRANSFERS_MAX = 253
DEVELOPMENT_IDS_MAX = 2031
CLIENTS_MAX = 64
"""Client sessions a replica keeps (TigerBeetle's config.zig `clients_max`): one more evicts the oldest."""
EXPIRY_POLLS_MAX = 100
"""Polls of the change feed, 0.1 s apart, for a pending transfer with a 1 s timeout to expire."""


def plan(
    flags: list[int], count_max: int, imported_mask: int = TransferFlags.IMPORTED, count_possible: int = 0
) -> list[tuple[int, int]]:
    chunks: list[tuple[int, int]] = []
    start = 0
    while start < len(flags):
        end = adapter._chunk_end(
            flags, start, count_max=count_max, count_possible=count_possible or count_max, imported_mask=imported_mask
        )
        chunks.append((start, end))
        start = end
    return chunks


def test_requests_hold_whole_linked_chains() -> None:
    flags = [LINKED, LINKED, 0] * 100  # 100 chains of 3.
    chunks = plan(flags, DEVELOPMENT_TRANSFERS_MAX)
    assert chunks == [(0, 252), (252, 300)]  # 253 would cut chain 85 after its first event.
    assert all(not flags[end - 1] & LINKED for _, end in chunks)
    # An open chain at the batch's end stays in the last request, with the events before it.
    open_end = [*flags[:-1], LINKED]
    assert plan(open_end, DEVELOPMENT_TRANSFERS_MAX) == [(0, 252), (252, 300)]
    assert plan(flags, 300) == [(0, 300)]


def test_a_chain_longer_than_a_request_is_refused() -> None:
    flags = [0] * 10 + [LINKED] * 299 + [0]
    with pytest.raises(TooMuchDataError, match="linked chain"):
        plan(flags, DEVELOPMENT_TRANSFERS_MAX)
    # While the cluster's limit is still being learned, a chain above the current guess but below any
    # refused size goes out alone (a probe).
    assert plan(flags, 200, count_possible=DEVELOPMENT_TRANSFERS_MAX + 50) == [(0, 10), (10, 310)]


def test_requests_start_in_the_batch_imported_mode() -> None:
    # TigerBeetle decides a batch's mode by its first event: a request must not start with an event
    # of the other mode (it would turn that event's imported_event_* failure into successes).
    imported = TransferFlags.IMPORTED
    flags = [imported] * 200 + [0] * 10 + [imported] * 90
    assert plan(flags, DEVELOPMENT_TRANSFERS_MAX) == [(0, 253), (253, 300)]
    flags = [imported] * 5 + [0] * 250 + [imported] * 45
    assert plan(flags, DEVELOPMENT_TRANSFERS_MAX) == [(0, 4), (4, 257), (257, 300)]
    with pytest.raises(TooMuchDataError):
        plan([imported] * 5 + [0] * 300, DEVELOPMENT_TRANSFERS_MAX)
    accounts = [int(AccountFlags.IMPORTED)] * 260
    assert plan(accounts, DEVELOPMENT_TRANSFERS_MAX, AccountFlags.IMPORTED) == [(0, 253), (253, 260)]


def test_the_request_limit_is_learned_from_refusals() -> None:
    """A client configured for 1 MiB against a 32 KiB replica converges on its exact limits."""
    body_size_max = DEVELOPMENT_LIMIT_REQUEST_BYTES - adapter.MESSAGE_HEADER_SIZE
    limit = adapter._RequestLimit(adapter.LIMIT_REQUEST_BYTES_DEFAULT)
    refusals = 0
    for event_size, count_expected in ((128, DEVELOPMENT_TRANSFERS_MAX), (16, DEVELOPMENT_IDS_MAX)):
        for _ in range(40):  # Each round: the largest request the limit allows, as a busy batcher sends.
            count = limit.events_max(event_size)
            if count * event_size + event_size > body_size_max:  # The client's check (one batch's trailer).
                limit.refused(count, event_size)
                refusals += 1
            else:
                limit.accepted(count, event_size)
        assert limit.events_max(event_size) == count_expected
    assert refusals <= adapter.REQUEST_REFUSALS_MAX
    configured = adapter._RequestLimit(DEVELOPMENT_LIMIT_REQUEST_BYTES)
    assert configured.events_max(adapter.EVENT_SIZE_TRANSFER) == DEVELOPMENT_TRANSFERS_MAX
    assert configured.events_max(adapter.EVENT_SIZE_ID) == DEVELOPMENT_IDS_MAX
    assert adapter._RequestLimit(adapter.LIMIT_REQUEST_BYTES_DEFAULT).events_max(adapter.EVENT_SIZE_TRANSFER) == 8189


def test_client_errors_are_translated() -> None:
    assert isinstance(adapter._translate(tb.TooMuchDataError()), TooMuchDataError)
    assert isinstance(adapter._translate(tb.IntegerOverflowError("x")), FieldRangeError)
    for error in (
        tb.ClientEvictedError(),
        tb.ClientClosedError(),
        tb.ClientReleaseTooLowError(),
        tb.ClientReleaseTooHighError(),
        Exception("Unexpected PacketStatus"),
    ):
        assert isinstance(adapter._translate(error), EngineUnavailableError), error
    with pytest.raises(EngineUnavailableError, match="cannot start the TigerBeetle client"):
        TigerBeetleEngine(cluster_id=0, addresses="not-an-address")
    with pytest.raises(ValueError, match="limit_request_bytes"):
        TigerBeetleEngine(cluster_id=0, addresses="3000", limit_request_bytes=1024)


@pytest.fixture
async def tigerbeetle() -> AsyncIterator[TigerBeetleEngine]:
    """A client configured for the production request size: against a --development replica it learns."""
    engine = TigerBeetleEngine(
        cluster_id=int(os.environ.get("TB_CLUSTER_ID", "0")), addresses=os.environ["TB_ADDRESSES"]
    )
    try:
        yield engine
    finally:
        await engine.close()


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[EmbeddedEngine]:
    engine = await EmbeddedEngine.open(tmp_path / "engine")
    try:
        yield engine
    finally:
        await engine.close()


def batch_of_300(ids: Ids, ledger: int) -> list[Transfer]:
    """100 linked chains of 3 (chain 40 breaks in its middle: its debit account does not exist), the last
    chain left open, and a few transfers that fail alone."""
    transfers = []
    for index in range(300):
        transfers.append(
            Transfer(
                id=ids(1000 + index),
                debit_account_id=ids(1),
                credit_account_id=ids(2),
                amount=index + 1,
                ledger=ledger,
                code=1,
                flags=LINKED if index % 3 != 2 else 0,
            )
        )
    transfers[121] = replace(transfers[121], debit_account_id=ids(9))  # Chain 40: 120, 121, 122.
    transfers[-1] = replace(transfers[-1], flags=LINKED)  # The last chain stays open.
    transfers[200] = replace(transfers[200], amount=0, ledger=0)  # Fails with ledger_must_not_be_zero.
    return transfers


async def run_batch(engine: Engine, ids: Ids, ledger: int) -> list[CreateTransferStatus]:
    await engine.create_accounts([Account(id=ids(i), ledger=ledger, code=1) for i in (1, 2)])
    transfers = batch_of_300(ids, ledger)
    results = await engine.create_transfers(transfers)
    assert len(results) == len(transfers)
    created = [r.timestamp for r in results if r.status == CreateTransferStatus.CREATED]
    assert created == sorted(created) and len(set(created)) == len(created)
    found = await engine.lookup_transfers([t.id for t in transfers])
    assert [t.id for t in found] == [
        t.id for t, r in zip(transfers, results, strict=True) if r.status.name == "CREATED"
    ]
    return [r.status for r in results]


@needs_tigerbeetle
async def test_300_transfers_answer_as_one_batch_on_the_embedded_engine(
    tigerbeetle: TigerBeetleEngine, embedded: EmbeddedEngine
) -> None:
    ledger = random.randint(1, 1 << 31)
    statuses = await run_batch(tigerbeetle, Ids(), ledger)
    assert statuses == await run_batch(embedded, Ids(), ledger)
    assert statuses.count(CreateTransferStatus.CREATED) == 300 - 9  # Chains 40 and 66 fail, the last is open.
    assert statuses[120:123] == [
        CreateTransferStatus.LINKED_EVENT_FAILED,
        CreateTransferStatus.DEBIT_ACCOUNT_NOT_FOUND,
        CreateTransferStatus.LINKED_EVENT_FAILED,
    ]
    assert statuses[-1] == CreateTransferStatus.LINKED_EVENT_CHAIN_OPEN
    # The batch went out in several requests: the client learned the replica's limit.
    assert tigerbeetle._limit.refused_min is not None


@needs_tigerbeetle
async def test_lookups_larger_than_a_request(tigerbeetle: TigerBeetleEngine, ids: Ids) -> None:
    ledger = random.randint(1, 1 << 31)
    accounts = [Account(id=ids(i), ledger=ledger, code=1) for i in range(1, 301)]
    results = await tigerbeetle.create_accounts(accounts)
    assert {r.status.name for r in results} == {"CREATED"}
    wanted = [ids(i) for i in range(1, 2501)]  # 2500 ids: more than 2031, most of them missing.
    found = await tigerbeetle.lookup_accounts(wanted)
    assert [a.id for a in found] == [a.id for a in accounts]
    assert [a.timestamp for a in found] == [r.timestamp for r in results]


@needs_tigerbeetle
@pytest.mark.parametrize("limit_request_bytes", [DEVELOPMENT_LIMIT_REQUEST_BYTES, 1024 * 1024], ids=["32KiB", "1MiB"])
async def test_a_chain_longer_than_a_request_is_refused_and_nothing_is_written(
    ids: Ids, limit_request_bytes: int
) -> None:
    engine = TigerBeetleEngine(0, os.environ["TB_ADDRESSES"], limit_request_bytes=limit_request_bytes)
    try:
        ledger = random.randint(1, 1 << 31)
        await engine.create_accounts([Account(id=ids(i), ledger=ledger, code=1) for i in (1, 2)])
        chain = [
            Transfer(id=ids(100 + i), debit_account_id=ids(1), credit_account_id=ids(2), amount=1, ledger=ledger,
                     code=1, flags=LINKED)
            for i in range(300)
        ]  # fmt: skip
        chain[-1] = replace(chain[-1], flags=0)
        with pytest.raises(TooMuchDataError):
            await engine.create_transfers(chain)
        assert await engine.lookup_transfers([t.id for t in chain]) == []
        # The same chain fits once it is short enough.
        results = await engine.create_transfers(chain[-DEVELOPMENT_TRANSFERS_MAX:])
        assert {r.status.name for r in results} == {"CREATED"}
    finally:
        await engine.close()


@needs_tigerbeetle
async def test_a_closed_engine_is_unavailable(tigerbeetle: TigerBeetleEngine) -> None:
    await tigerbeetle.close()
    with pytest.raises(EngineUnavailableError):
        await tigerbeetle.lookup_accounts([1])
    with pytest.raises(EngineUnavailableError):
        await tigerbeetle.get_change_events(ChangeEventsFilter())


async def expiry_scenario(engine: Engine, ids: Ids, ledger: int) -> list[ChangeEvent]:
    """A pending transfer posted in part, one voided, one that expires after 1 s: its change events."""
    await engine.create_accounts(
        [Account(id=ids(i), ledger=ledger, code=1, flags=AccountFlags.HISTORY) for i in (1, 2)]
    )

    def pending(symbolic: int, amount: int, timeout: int = 0) -> Transfer:
        return Transfer(
            id=ids(symbolic), debit_account_id=ids(1), credit_account_id=ids(2), amount=amount, user_data_64=symbolic,
            timeout=timeout, ledger=ledger, code=1, flags=TransferFlags.PENDING,
        )  # fmt: skip

    results = await engine.create_transfers(
        [
            pending(100, 9),
            Transfer(id=ids(101), pending_id=ids(100), amount=4, flags=TransferFlags.POST_PENDING_TRANSFER),
            pending(102, 3, timeout=1),
            pending(103, 5),
            Transfer(id=ids(104), pending_id=ids(103), flags=TransferFlags.VOID_PENDING_TRANSFER),
        ]
    )
    assert {r.status.name for r in results} == {"CREATED"}
    events: list[ChangeEvent] = []
    for _ in range(EXPIRY_POLLS_MAX):
        feed = await engine.get_change_events(ChangeEventsFilter(timestamp_min=results[0].timestamp))
        events = [e for e in feed if e.transfer.debit_account_id == ids(1)]  # A real cluster is shared.
        if events[-1].type == ChangeEventType.TWO_PHASE_EXPIRED:
            break
        await asyncio.sleep(0.1)
    # Expired: a post now fails, and the balances no longer hold the 3.
    late = await engine.create_transfers(
        [Transfer(id=ids(105), pending_id=ids(102), amount=3, flags=TransferFlags.POST_PENDING_TRANSFER)]
    )
    assert late[0].status == CreateTransferStatus.PENDING_TRANSFER_EXPIRED
    (debit,) = await engine.lookup_accounts([ids(1)])
    assert (debit.debits_pending, debit.debits_posted) == (0, 4)
    return events


def normalized(events: list[ChangeEvent], ids: Ids) -> list[tuple[object, ...]]:
    """Events with symbolic ids and timestamps replaced by their rank (the backends' clocks differ)."""
    ranks = {
        t: rank for rank, t in enumerate(sorted({e.timestamp for e in events} | {e.transfer.timestamp for e in events}))
    }

    def symbolic(value: int) -> int:
        return value - ids.base if value > ids.base else value

    rows: list[tuple[object, ...]] = []
    for e in events:
        assert e.debit_account is not None and e.credit_account is not None
        t = e.transfer
        rows.append(
            (
                ranks[e.timestamp], e.type, symbolic(t.id), symbolic(t.debit_account_id),
                symbolic(t.credit_account_id), t.amount, symbolic(t.pending_id), t.user_data_128, t.user_data_64,
                t.user_data_32, t.timeout, t.ledger, t.code, int(t.flags), ranks[t.timestamp],
                *(
                    (symbolic(a.id), a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted,
                     a.user_data_128, a.user_data_64, a.user_data_32, a.ledger, a.code, int(a.flags), a.reserved)
                    for a in (e.debit_account, e.credit_account)
                ),
            )
        )  # fmt: skip
    return rows


@needs_tigerbeetle
async def test_expiry_appears_in_the_change_feed_as_on_the_embedded_engine(
    tigerbeetle: TigerBeetleEngine, embedded: EmbeddedEngine
) -> None:
    ledger = random.randint(1, 1 << 31)
    real_ids, embedded_ids = Ids(), Ids()
    real = await expiry_scenario(tigerbeetle, real_ids, ledger)
    assert [e.type for e in real] == [
        ChangeEventType.TWO_PHASE_PENDING,
        ChangeEventType.TWO_PHASE_POSTED,
        ChangeEventType.TWO_PHASE_PENDING,
        ChangeEventType.TWO_PHASE_PENDING,
        ChangeEventType.TWO_PHASE_VOIDED,
        ChangeEventType.TWO_PHASE_EXPIRED,
    ]
    expired = real[-1]
    assert expired.transfer.id == real_ids(102) and expired.timestamp > expired.transfer.timestamp
    assert expired.debit_account is not None and expired.debit_account.debits_pending == 0
    assert normalized(real, real_ids) == normalized(await expiry_scenario(embedded, embedded_ids, ledger), embedded_ids)


@needs_binary
async def test_an_evicted_client_is_replaced(tmp_path: Path) -> None:
    """Eviction ends a client session for good: the call that finds out is unavailable (retryable), and
    the engine's next call runs on a fresh session. On a replica of its own: evicting disturbs others."""
    async with tigerbeetle_replica(tmp_path) as address:
        engine = TigerBeetleEngine(cluster_id=0, addresses=address)
        try:
            assert await engine.lookup_accounts([1]) == []  # Registers the engine's session.
            for _ in range(CLIENTS_MAX):  # Newer sessions, one at a time (a replica caps its connections).
                other = tb.ClientAsync(cluster_id=0, replica_addresses=address)
                try:
                    assert await other.lookup_accounts([1]) == []
                finally:
                    await other.close()
            with pytest.raises(EngineUnavailableError, match="evicted"):
                await engine.lookup_accounts([1])
            await engine.create_accounts([Account(id=7, ledger=1, code=1)])
            assert [a.id for a in await engine.lookup_accounts([7])] == [7]
        finally:
            await engine.close()
