"""The TigerBeetle backend: a thin adapter over the official Python client (`tigerbeetle` 0.17).

Our types mirror the client's field for field, so each call copies fields across and maps statuses
by value. One `ClientAsync` is shared by every caller: the client batches concurrent requests itself.
Requests never time out inside the client (TigerBeetle retries until the cluster answers); callers
bound them with their own deadlines.

What this backend cannot deliver, because the client has no call for it:
- Change events come from `query_transfers(timestamp_min=cursor+1)`: every committed transfer in
  commit order, but no expiry events (a pending transfer's expiry is only visible as its absence of a
  post/void) and no account balances as of the change (ChangeEvent.debit_account/credit_account are
  None). TigerBeetle's own CDC (`tigerbeetle amqp`) carries both; a deployment needing them runs it.
- `Account.reserved` cannot be sent (the client always sends zero): a non-zero value is refused here
  with FieldRangeError rather than silently dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tigerbeetle as tb

from facade.engine.protocol import EngineUnavailableError
from facade.engine.types import (
    Account,
    AccountBalance,
    AccountFilter,
    ChangeEvent,
    ChangeEventsFilter,
    ChangeEventType,
    CreateAccountResult,
    CreateAccountStatus,
    CreateTransferResult,
    CreateTransferStatus,
    FieldRangeError,
    QueryFilter,
    Transfer,
    TransferFlags,
    validate_accounts,
    validate_ids,
    validate_transfers,
)


def _to_account(a: Any) -> Account:
    return Account(
        id=a.id,
        debits_pending=a.debits_pending,
        debits_posted=a.debits_posted,
        credits_pending=a.credits_pending,
        credits_posted=a.credits_posted,
        user_data_128=a.user_data_128,
        user_data_64=a.user_data_64,
        user_data_32=a.user_data_32,
        ledger=a.ledger,
        code=a.code,
        flags=int(a.flags),
        timestamp=a.timestamp,
    )


def _to_transfer(t: Any) -> Transfer:
    return Transfer(
        id=t.id,
        debit_account_id=t.debit_account_id,
        credit_account_id=t.credit_account_id,
        amount=t.amount,
        pending_id=t.pending_id,
        user_data_128=t.user_data_128,
        user_data_64=t.user_data_64,
        user_data_32=t.user_data_32,
        timeout=t.timeout,
        ledger=t.ledger,
        code=t.code,
        flags=int(t.flags),
        timestamp=t.timestamp,
    )


def _account_filter(f: AccountFilter) -> Any:
    return tb.AccountFilter(
        account_id=f.account_id,
        user_data_128=f.user_data_128,
        user_data_64=f.user_data_64,
        user_data_32=f.user_data_32,
        code=f.code,
        timestamp_min=f.timestamp_min,
        timestamp_max=f.timestamp_max,
        limit=f.limit,
        flags=tb.AccountFilterFlags(int(f.flags)),
    )


def _query_filter(f: QueryFilter) -> Any:
    return tb.QueryFilter(
        user_data_128=f.user_data_128,
        user_data_64=f.user_data_64,
        user_data_32=f.user_data_32,
        ledger=f.ledger,
        code=f.code,
        timestamp_min=f.timestamp_min,
        timestamp_max=f.timestamp_max,
        limit=f.limit,
        flags=tb.QueryFilterFlags(int(f.flags)),
    )


def _change_type(flags: int) -> ChangeEventType:
    if flags & TransferFlags.PENDING:
        return ChangeEventType.TWO_PHASE_PENDING
    if flags & TransferFlags.POST_PENDING_TRANSFER:
        return ChangeEventType.TWO_PHASE_POSTED
    if flags & TransferFlags.VOID_PENDING_TRANSFER:
        return ChangeEventType.TWO_PHASE_VOIDED
    return ChangeEventType.SINGLE_PHASE


class TigerBeetleEngine:
    name = "tigerbeetle"

    def __init__(self, cluster_id: int, addresses: str) -> None:
        self._client: Any = tb.ClientAsync(cluster_id=cluster_id, replica_addresses=addresses)
        self._closed = False

    @property
    def write_failure(self) -> str | None:
        """None: the cluster's replicas recover by themselves; an unreachable cluster is transient."""
        return None

    def _check_open(self) -> None:
        if self._closed:
            raise EngineUnavailableError("engine is closed")

    async def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        self._check_open()
        accounts = list(accounts)
        validate_accounts(accounts)
        for index, a in enumerate(accounts):
            if a.reserved:
                raise FieldRangeError(f"accounts[{index}].reserved: the TigerBeetle client cannot send it")
        results = await self._client.create_accounts(
            [
                tb.Account(
                    id=a.id,
                    debits_pending=a.debits_pending,
                    debits_posted=a.debits_posted,
                    credits_pending=a.credits_pending,
                    credits_posted=a.credits_posted,
                    user_data_128=a.user_data_128,
                    user_data_64=a.user_data_64,
                    user_data_32=a.user_data_32,
                    ledger=a.ledger,
                    code=a.code,
                    flags=tb.AccountFlags(int(a.flags)),
                    timestamp=a.timestamp,
                )
                for a in accounts
            ]
        )
        return [CreateAccountResult(r.timestamp, CreateAccountStatus(int(r.status))) for r in results]

    async def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]:
        self._check_open()
        transfers = list(transfers)
        validate_transfers(transfers)
        results = await self._client.create_transfers(
            [
                tb.Transfer(
                    id=t.id,
                    debit_account_id=t.debit_account_id,
                    credit_account_id=t.credit_account_id,
                    amount=t.amount,
                    pending_id=t.pending_id,
                    user_data_128=t.user_data_128,
                    user_data_64=t.user_data_64,
                    user_data_32=t.user_data_32,
                    timeout=t.timeout,
                    ledger=t.ledger,
                    code=t.code,
                    flags=tb.TransferFlags(int(t.flags)),
                    timestamp=t.timestamp,
                )
                for t in transfers
            ]
        )
        return [CreateTransferResult(r.timestamp, CreateTransferStatus(int(r.status))) for r in results]

    async def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        self._check_open()
        validate_ids(list(ids))
        return [_to_account(a) for a in await self._client.lookup_accounts(list(ids))]

    async def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        self._check_open()
        validate_ids(list(ids))
        return [_to_transfer(t) for t in await self._client.lookup_transfers(list(ids))]

    async def get_account_transfers(self, filter: AccountFilter) -> list[Transfer]:
        self._check_open()
        return [_to_transfer(t) for t in await self._client.get_account_transfers(_account_filter(filter))]

    async def get_account_balances(self, filter: AccountFilter) -> list[AccountBalance]:
        self._check_open()
        balances = await self._client.get_account_balances(_account_filter(filter))
        return [
            AccountBalance(b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted, b.timestamp)
            for b in balances
        ]

    async def query_accounts(self, filter: QueryFilter) -> list[Account]:
        self._check_open()
        return [_to_account(a) for a in await self._client.query_accounts(_query_filter(filter))]

    async def query_transfers(self, filter: QueryFilter) -> list[Transfer]:
        self._check_open()
        return [_to_transfer(t) for t in await self._client.query_transfers(_query_filter(filter))]

    async def get_change_events(self, filter: ChangeEventsFilter) -> list[ChangeEvent]:
        transfers = await self.query_transfers(
            QueryFilter(timestamp_min=filter.timestamp_min, timestamp_max=filter.timestamp_max, limit=filter.limit)
        )
        return [ChangeEvent(t.timestamp, _change_type(int(t.flags)), t) for t in transfers]

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.close()
