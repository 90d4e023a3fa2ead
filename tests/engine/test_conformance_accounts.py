"""create_accounts conformance: every CreateAccountStatus, precedence, linked chains, imports.

Expectations follow TigerBeetle's docs (reference/requests/create_accounts.md, account.md).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from facade.engine.protocol import Engine
from facade.engine.types import U128_MAX, Account, AccountFlags, CreateAccountStatus

from .conftest import Ids

S = CreateAccountStatus
A = AccountFlags


def a(id: int, **fields: int) -> Account:
    defaults: dict[str, int] = {"ledger": 1, "code": 1}
    defaults.update(fields)
    return Account(id=id, **defaults)


CASES: list[tuple[str, list[list[Account]], list[list[CreateAccountStatus]]]] = [
    ("created", [[a(1)]], [[S.CREATED]]),
    ("linked_event_failed", [[a(1, flags=A.LINKED), a(2, ledger=0)]], [[S.LINKED_EVENT_FAILED, S.LEDGER_MUST_NOT_BE_ZERO]]),
    ("linked_event_chain_open", [[a(1), a(2, flags=A.LINKED)]], [[S.CREATED, S.LINKED_EVENT_CHAIN_OPEN]]),
    ("imported_event_not_expected", [[a(1), a(2, flags=A.IMPORTED, timestamp=1)]], [[S.CREATED, S.IMPORTED_EVENT_NOT_EXPECTED]]),
    ("timestamp_must_be_zero", [[a(1, timestamp=1)]], [[S.TIMESTAMP_MUST_BE_ZERO]]),
    ("imported_event_timestamp_out_of_range",
     [[a(1, flags=A.IMPORTED, timestamp=0)], [a(2, flags=A.IMPORTED, timestamp=1 << 63)]],
     [[S.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE], [S.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE]]),
    ("imported_event_timestamp_must_not_advance",
     [[a(1, flags=A.IMPORTED, timestamp=(1 << 63) - 1)]], [[S.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE]]),
    ("reserved_flag", [[a(1, flags=1 << 6)]], [[S.RESERVED_FLAG]]),
    ("id_must_not_be_zero", [[a(0)]], [[S.ID_MUST_NOT_BE_ZERO]]),
    ("id_must_not_be_int_max", [[a(U128_MAX)]], [[S.ID_MUST_NOT_BE_INT_MAX]]),
    ("reserved_flag_precedes_id", [[a(0, flags=1 << 7)]], [[S.RESERVED_FLAG]]),
    ("exists_with_different_flags", [[a(1)], [a(1, flags=A.HISTORY)]], [[S.CREATED], [S.EXISTS_WITH_DIFFERENT_FLAGS]]),
    ("exists_with_different_user_data_128", [[a(1)], [a(1, user_data_128=1)]], [[S.CREATED], [S.EXISTS_WITH_DIFFERENT_USER_DATA_128]]),
    ("exists_with_different_user_data_64", [[a(1)], [a(1, user_data_64=1)]], [[S.CREATED], [S.EXISTS_WITH_DIFFERENT_USER_DATA_64]]),
    ("exists_with_different_user_data_32", [[a(1)], [a(1, user_data_32=1)]], [[S.CREATED], [S.EXISTS_WITH_DIFFERENT_USER_DATA_32]]),
    ("exists_with_different_ledger", [[a(1)], [a(1, ledger=2)]], [[S.CREATED], [S.EXISTS_WITH_DIFFERENT_LEDGER]]),
    ("exists_with_different_code", [[a(1)], [a(1, code=2)]], [[S.CREATED], [S.EXISTS_WITH_DIFFERENT_CODE]]),
    ("exists", [[a(1)], [a(1)]], [[S.CREATED], [S.EXISTS]]),
    ("exists_precedes_validation", [[a(1)], [a(1, debits_posted=5)]], [[S.CREATED], [S.EXISTS]]),
    ("exists_breaks_a_chain", [[a(1)], [a(2, flags=A.LINKED), a(1)]], [[S.CREATED], [S.LINKED_EVENT_FAILED, S.EXISTS]]),
    ("flags_are_mutually_exclusive",
     [[a(1, flags=A.DEBITS_MUST_NOT_EXCEED_CREDITS | A.CREDITS_MUST_NOT_EXCEED_DEBITS)]], [[S.FLAGS_ARE_MUTUALLY_EXCLUSIVE]]),
    ("debits_pending_must_be_zero", [[a(1, debits_pending=1)]], [[S.DEBITS_PENDING_MUST_BE_ZERO]]),
    ("debits_posted_must_be_zero", [[a(1, debits_posted=1)]], [[S.DEBITS_POSTED_MUST_BE_ZERO]]),
    ("credits_pending_must_be_zero", [[a(1, credits_pending=1)]], [[S.CREDITS_PENDING_MUST_BE_ZERO]]),
    ("credits_posted_must_be_zero", [[a(1, credits_posted=1)]], [[S.CREDITS_POSTED_MUST_BE_ZERO]]),
    ("ledger_must_not_be_zero", [[a(1, ledger=0)]], [[S.LEDGER_MUST_NOT_BE_ZERO]]),
    ("code_must_not_be_zero", [[a(1, code=0)]], [[S.CODE_MUST_NOT_BE_ZERO]]),
    ("ledger_zero_precedes_code_zero", [[a(1, ledger=0, code=0)]], [[S.LEDGER_MUST_NOT_BE_ZERO]]),
    ("a_failed_account_id_can_be_created_later", [[a(1, ledger=0)], [a(1)]], [[S.LEDGER_MUST_NOT_BE_ZERO], [S.CREATED]]),
    ("closed_at_creation", [[a(1, flags=A.CLOSED)]], [[S.CREATED]]),
]  # fmt: skip
COVERED_ELSEWHERE = {
    S.IMPORTED_EVENT_EXPECTED,
    S.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS,
    S.RESERVED_FIELD,
}


@pytest.mark.parametrize(("name", "batches", "expected"), CASES, ids=[c[0] for c in CASES])
async def test_create_accounts_table(
    engine: Engine,
    ids: Ids,
    name: str,
    batches: list[list[Account]],
    expected: list[list[CreateAccountStatus]],
) -> None:
    for batch, statuses in zip(batches, expected, strict=True):
        results = await engine.create_accounts([ids.account(x) for x in batch])
        assert [r.status for r in results] == statuses, name


def test_every_status_is_covered() -> None:
    covered = {s for _, _, expected in CASES for statuses in expected for s in statuses} | COVERED_ELSEWHERE
    assert covered == set(S), f"uncovered: {set(S) - covered}"


async def test_reserved_field(engine: Engine, ids: Ids) -> None:
    results = await engine.create_accounts([ids.account(a(1, reserved=1))])
    assert [r.status for r in results] == [S.RESERVED_FIELD]


async def test_imported_accounts(engine: Engine, ids: Ids) -> None:
    base = time.time_ns()
    await asyncio.sleep(0.01)
    results = await engine.create_accounts([ids.account(a(1, flags=A.IMPORTED, timestamp=base + 5)), ids.account(a(2))])
    assert [r.status for r in results] == [S.CREATED, S.IMPORTED_EVENT_EXPECTED]
    assert results[0].timestamp == base + 5
    results = await engine.create_accounts(
        [
            ids.account(a(3, flags=A.IMPORTED, timestamp=base + 5)),  # Not after the last account.
            ids.account(a(4, flags=A.IMPORTED, timestamp=base + 6)),
        ]
    )
    assert [r.status for r in results] == [S.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS, S.CREATED]
    [stored] = await engine.lookup_accounts([ids(4)])
    assert stored.timestamp == base + 6


async def test_created_accounts_have_zero_balances_and_increasing_timestamps(engine: Engine, ids: Ids) -> None:
    results = await engine.create_accounts([ids.account(a(i, user_data_64=i)) for i in range(1, 6)])
    timestamps = [r.timestamp for r in results]
    assert timestamps == sorted(timestamps) and len(set(timestamps)) == 5
    accounts = await engine.lookup_accounts([ids(i) for i in (5, 99, 1)])
    assert [x.id for x in accounts] == [ids(5), ids(1)], "missing ids are omitted; request order kept"
    assert all(x.debits_posted == x.credits_posted == x.debits_pending == x.credits_pending == 0 for x in accounts)
    assert accounts[0].user_data_64 == 5
