"""Lookups, account filters, history balances, query filters and the change feed.

Expectations follow TigerBeetle's docs (reference/account-filter.md, query-filter.md,
requests/get_account_transfers.md, get_account_balances.md, query_*.md): results in timestamp order
(reversed on request), at most `limit`, and an invalid filter returns an empty result, not an error.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from facade.engine.protocol import Engine
from facade.engine.types import (
    BATCH_EVENTS_MAX,
    QUERY_LIMIT_MAX,
    U32_MAX,
    U64_MAX,
    U128_MAX,
    Account,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    ChangeEventsFilter,
    ChangeEventType,
    QueryFilter,
    QueryFilterFlags,
    TooMuchDataError,
    Transfer,
    TransferFlags,
)

from .conftest import Ids

D = AccountFilterFlags.DEBITS
C = AccountFilterFlags.CREDITS
R = AccountFilterFlags.REVERSED


async def history_setup(engine: Engine, ids: Ids) -> tuple[int, list[Transfer]]:
    """Account 1 (history) and 2, 3; ten transfers alternating direction. Returns (code, transfers)."""
    code = random.randint(1, 60_000)
    ledger = random.randint(1, 1 << 31)
    await engine.create_accounts(
        [
            Account(id=ids(1), ledger=ledger, code=code, flags=AccountFlags.HISTORY, user_data_64=7),
            Account(id=ids(2), ledger=ledger, code=code, user_data_64=7),
            Account(id=ids(3), ledger=ledger, code=code + 1),
        ]
    )
    transfers = [
        Transfer(
            id=ids(100 + i),
            debit_account_id=ids(1) if i % 2 == 0 else ids(2),
            credit_account_id=ids(2) if i % 2 == 0 else ids(1),
            amount=i + 1,
            ledger=ledger,
            code=code if i < 8 else code + 1,
            user_data_32=i % 3,
        )
        for i in range(10)
    ]
    results = await engine.create_transfers(transfers)
    assert all(r.status.name == "CREATED" for r in results)
    stored = await engine.lookup_transfers([t.id for t in transfers])
    return code, stored


async def test_lookups_keep_request_order_and_omit_missing(engine: Engine, ids: Ids) -> None:
    await history_setup(engine, ids)
    found = await engine.lookup_transfers([ids(105), ids(999), ids(101), 0, U128_MAX])
    assert [t.id for t in found] == [ids(105), ids(101)]
    assert await engine.lookup_accounts([]) == []


async def test_get_account_transfers_filters(engine: Engine, ids: Ids) -> None:
    code, transfers = await history_setup(engine, ids)
    all_ids = [t.id for t in transfers]
    assert [t.id for t in await engine.get_account_transfers(AccountFilter(ids(1), flags=D | C))] == all_ids
    debits = await engine.get_account_transfers(AccountFilter(ids(1), flags=D))
    assert [t.id for t in debits] == all_ids[0::2]
    credits = await engine.get_account_transfers(AccountFilter(ids(1), flags=C | R, limit=2))
    assert [t.id for t in credits] == [all_ids[9], all_ids[7]]
    window = await engine.get_account_transfers(
        AccountFilter(ids(1), timestamp_min=transfers[2].timestamp, timestamp_max=transfers[4].timestamp, flags=D | C)
    )
    assert [t.id for t in window] == all_ids[2:5]
    by_user_data = await engine.get_account_transfers(AccountFilter(ids(1), user_data_32=2, flags=D | C))
    assert [t.id for t in by_user_data] == [all_ids[i] for i in range(10) if i % 3 == 2]
    by_code = await engine.get_account_transfers(AccountFilter(ids(1), code=code + 1, flags=D | C))
    assert [t.id for t in by_code] == all_ids[8:]


@pytest.mark.parametrize(
    "invalid",
    [
        AccountFilter(0),
        AccountFilter(U128_MAX),
        AccountFilter(1, limit=0),
        AccountFilter(1, flags=R),
        AccountFilter(1, timestamp_min=10, timestamp_max=5),
        AccountFilter(1, flags=D | C | (1 << 3)),
    ],
    ids=[
        "zero_id",
        "int_max_id",
        "limit_zero",
        "neither_debits_nor_credits",
        "min_after_max",
        "reserved_flag",
    ],
)
async def test_invalid_account_filter_returns_nothing(engine: Engine, ids: Ids, invalid: AccountFilter) -> None:
    await history_setup(engine, ids)
    account_id = invalid.account_id if invalid.account_id in (0, U128_MAX) else ids(1)
    f = AccountFilter(
        account_id, timestamp_min=invalid.timestamp_min, timestamp_max=invalid.timestamp_max,
        limit=invalid.limit, flags=invalid.flags,
    )  # fmt: skip
    assert await engine.get_account_transfers(f) == []
    assert await engine.get_account_balances(f) == []


async def test_get_account_balances_needs_history_and_matches_each_transfer(engine: Engine, ids: Ids) -> None:
    _, transfers = await history_setup(engine, ids)
    balances = await engine.get_account_balances(AccountFilter(ids(1), flags=D | C))
    assert [b.timestamp for b in balances] == [t.timestamp for t in transfers]
    debits = credits = 0
    for transfer, balance in zip(transfers, balances, strict=True):
        debits += transfer.amount if transfer.debit_account_id == ids(1) else 0
        credits += transfer.amount if transfer.credit_account_id == ids(1) else 0
        assert (balance.debits_posted, balance.credits_posted) == (debits, credits)
    reversed_ = await engine.get_account_balances(AccountFilter(ids(1), flags=D | C | R, limit=3))
    assert reversed_ == balances[::-1][:3]
    assert await engine.get_account_balances(AccountFilter(ids(2), flags=D | C)) == []  # No history flag.


async def test_query_accounts_and_transfers(engine: Engine, ids: Ids) -> None:
    code, transfers = await history_setup(engine, ids)
    accounts = await engine.query_accounts(QueryFilter(code=code, user_data_64=7))
    assert [x.id for x in accounts] == [ids(1), ids(2)]
    newest = await engine.query_accounts(QueryFilter(code=code, flags=QueryFilterFlags.REVERSED, limit=1))
    assert [x.id for x in newest] == [ids(2)]
    found = await engine.query_transfers(QueryFilter(code=code + 1))
    assert [t.id for t in found] == [t.id for t in transfers[8:]]
    ledger = transfers[0].ledger
    latest = await engine.query_transfers(QueryFilter(ledger=ledger, flags=QueryFilterFlags.REVERSED, limit=3))
    assert [t.id for t in latest] == [t.id for t in transfers[::-1][:3]]
    window = await engine.query_transfers(
        QueryFilter(ledger=ledger, timestamp_min=transfers[3].timestamp, timestamp_max=transfers[5].timestamp)
    )
    assert [t.id for t in window] == [t.id for t in transfers[3:6]]
    assert await engine.query_transfers(QueryFilter(ledger=ledger, limit=0)) == []
    assert await engine.query_transfers(QueryFilter(ledger=ledger, timestamp_min=5, timestamp_max=4)) == []


async def test_change_feed_in_commit_order_with_cursor_and_limit(engine: Engine, ids: Ids) -> None:
    _, transfers = await history_setup(engine, ids)
    start = transfers[0].timestamp
    events = await engine.get_change_events(ChangeEventsFilter(timestamp_min=start))
    mine = [e for e in events if e.transfer.id in {t.id for t in transfers}]
    assert [e.transfer.id for e in mine] == [t.id for t in transfers]
    assert all(e.type == ChangeEventType.SINGLE_PHASE for e in mine)
    page = await engine.get_change_events(ChangeEventsFilter(timestamp_min=start, limit=4))
    assert len(page) == 4
    rest = await engine.get_change_events(ChangeEventsFilter(timestamp_min=page[-1].timestamp + 1))
    assert [e.timestamp for e in page + rest][: len(events)] == [e.timestamp for e in events]


EXPIRY_POLLS_MAX = 50


async def test_change_feed_two_phase_types_and_snapshots(engine: Engine, ids: Ids) -> None:
    ledger = random.randint(1, 1 << 31)
    await engine.create_accounts([Account(id=ids(i), ledger=ledger, code=1) for i in (1, 2)])
    pending = Transfer(
        id=ids(100), debit_account_id=ids(1), credit_account_id=ids(2), amount=9, ledger=ledger, code=1,
        flags=TransferFlags.PENDING,
    )  # fmt: skip
    post = Transfer(id=ids(101), pending_id=ids(100), amount=4, flags=TransferFlags.POST_PENDING_TRANSFER)
    expiring = Transfer(
        id=ids(102), debit_account_id=ids(1), credit_account_id=ids(2), amount=3, ledger=ledger, code=1,
        flags=TransferFlags.PENDING, timeout=1,
    )  # fmt: skip
    results = await engine.create_transfers([pending, post, expiring])
    assert all(r.status.name == "CREATED" for r in results)
    events = await engine.get_change_events(ChangeEventsFilter(timestamp_min=results[0].timestamp))
    assert [e.type for e in events][:3] == [
        ChangeEventType.TWO_PHASE_PENDING,
        ChangeEventType.TWO_PHASE_POSTED,
        ChangeEventType.TWO_PHASE_PENDING,
    ]
    assert events[1].debit_account is not None
    assert (events[1].debit_account.debits_pending, events[1].debit_account.debits_posted) == (0, 4)
    await asyncio.sleep(1.4)  # The engine's pulse expires 102.
    for _ in range(EXPIRY_POLLS_MAX):  # A TigerBeetle replica's pulse may run a little later.
        events = await engine.get_change_events(ChangeEventsFilter(timestamp_min=results[2].timestamp + 1))
        events = [e for e in events if e.transfer.debit_account_id == ids(1)]  # A real cluster is shared.
        if events:
            break
        await asyncio.sleep(0.1)
    assert [(e.type, e.transfer.id) for e in events] == [(ChangeEventType.TWO_PHASE_EXPIRED, ids(102))]
    assert events[0].credit_account is not None and events[0].credit_account.credits_pending == 0


# issue 10 #6: a non-zero timestamp bound must lie in TigerBeetle's TimestampRange [1, 2^63 - 1]
# (state_machine.zig get_scan_from_account_filter / get_scan_from_query_filter:
# `filter.timestamp_max == 0 or TimestampRange.valid(filter.timestamp_max)`); otherwise the filter is
# invalid and the result empty. account-filter.md says "must be less than 2^63"; query-filter.md says
# only "must not be 2^64 - 1": the source decides for both. (A timestamp_min >= 2^63 returns nothing
# either way, since no object has such a timestamp, so only timestamp_max tells the rules apart.)
TIMESTAMPS_OUT_OF_RANGE = [1 << 63, U64_MAX - 1, U64_MAX]
TIMESTAMP_RANGE_MAX = (1 << 63) - 1


@pytest.mark.parametrize("timestamp_max", TIMESTAMPS_OUT_OF_RANGE, ids=["2^63", "2^64-2", "2^64-1"])
async def test_timestamp_max_outside_the_timestamp_range_returns_nothing(
    engine: Engine, ids: Ids, timestamp_max: int
) -> None:
    _, transfers = await history_setup(engine, ids)
    ledger = transfers[0].ledger
    everything = [t.id for t in transfers]
    # The largest valid bound is the control: it returns every row.
    valid = AccountFilter(ids(1), timestamp_max=TIMESTAMP_RANGE_MAX, flags=D | C)
    assert [t.id for t in await engine.get_account_transfers(valid)] == everything
    assert len(await engine.get_account_balances(valid)) == len(everything)
    assert [
        t.id for t in await engine.query_transfers(QueryFilter(ledger=ledger, timestamp_max=TIMESTAMP_RANGE_MAX))
    ] == everything
    assert len(await engine.query_accounts(QueryFilter(ledger=ledger, timestamp_max=TIMESTAMP_RANGE_MAX))) == 3

    invalid = AccountFilter(ids(1), timestamp_max=timestamp_max, flags=D | C)
    assert await engine.get_account_transfers(invalid) == []
    assert await engine.get_account_balances(invalid) == []
    assert await engine.query_transfers(QueryFilter(ledger=ledger, timestamp_max=timestamp_max)) == []
    assert await engine.query_accounts(QueryFilter(ledger=ledger, timestamp_max=timestamp_max)) == []
    # With timestamp_min set too (min <= max holds, so only the range rule refuses it).
    both = AccountFilter(ids(1), timestamp_min=transfers[0].timestamp, timestamp_max=timestamp_max, flags=D | C)
    assert await engine.get_account_transfers(both) == []


# issue 10 #7: a query limit above what one reply holds is refused, not capped: the official client
# raises TooMuchDataError before sending (tb_client context.zig: result_count_expected > result_max),
# and the engine protocol raises our TooMuchDataError. Same for a batch of more than 8189 events.
@pytest.mark.parametrize("limit", [QUERY_LIMIT_MAX + 1, U32_MAX], ids=["8190", "2^32-1"])
async def test_limit_above_the_reply_size_is_refused(engine: Engine, ids: Ids, limit: int) -> None:
    _, transfers = await history_setup(engine, ids)
    ledger = transfers[0].ledger
    with pytest.raises(TooMuchDataError):
        await engine.get_account_transfers(AccountFilter(ids(1), limit=limit, flags=D | C))
    with pytest.raises(TooMuchDataError):
        await engine.get_account_balances(AccountFilter(ids(1), limit=limit, flags=D | C))
    with pytest.raises(TooMuchDataError):
        await engine.query_transfers(QueryFilter(ledger=ledger, limit=limit))
    with pytest.raises(TooMuchDataError):
        await engine.query_accounts(QueryFilter(ledger=ledger, limit=limit))
    # The largest limit is accepted.
    found = await engine.query_transfers(QueryFilter(ledger=ledger, limit=QUERY_LIMIT_MAX))
    assert [t.id for t in found] == [t.id for t in transfers]


async def test_batches_above_batch_events_max_are_refused(engine: Engine, ids: Ids) -> None:
    await history_setup(engine, ids)
    too_many = BATCH_EVENTS_MAX + 1
    with pytest.raises(TooMuchDataError):
        await engine.lookup_accounts([ids(1)] * too_many)
    with pytest.raises(TooMuchDataError):
        await engine.lookup_transfers([ids(100)] * too_many)
    ledger = (await engine.lookup_accounts([ids(1)]))[0].ledger
    accounts = [Account(id=ids(1000 + i), ledger=ledger, code=1) for i in range(too_many)]
    with pytest.raises(TooMuchDataError):
        await engine.create_accounts(accounts)
    transfers = [
        Transfer(id=ids(20_000 + i), debit_account_id=ids(1), credit_account_id=ids(2), amount=1, ledger=ledger, code=1)
        for i in range(too_many)
    ]
    with pytest.raises(TooMuchDataError):
        await engine.create_transfers(transfers)
    # Nothing of either batch was written.
    assert await engine.lookup_accounts([ids(1000), ids(1000 + too_many - 1)]) == []
    assert await engine.lookup_transfers([ids(20_000), ids(20_000 + too_many - 1)]) == []
