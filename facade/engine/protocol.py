"""The engine protocol: TigerBeetle's client operations, plus a change feed.

This is the seam between "what money does" and "where it is stored". It is deliberately identical to
TigerBeetle's operations (same names, same argument and result types, same limits) so the embedded
engine and a TigerBeetle cluster are interchangeable, and so is every test written against it.

Contract, for both backends:
- `create_*` return one result per event, in event order (TigerBeetle 0.17's dense results), and return
  only after the batch is durable. A batch holds at most BATCH_EVENTS_MAX events.
- Reads are strongly consistent: they see every write acknowledged before they were issued.
- An argument that cannot be encoded (a u128 field above 2^128-1) raises FieldRangeError and nothing
  is written. More than one request or reply holds (a batch above BATCH_EVENTS_MAX events, a query
  `limit` above QUERY_LIMIT_MAX) raises its subclass TooMuchDataError, as the official client does.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from facade.engine.types import (
    Account,
    AccountBalance,
    AccountFilter,
    ChangeEvent,
    ChangeEventsFilter,
    CreateAccountResult,
    CreateTransferResult,
    QueryFilter,
    Transfer,
)


class EngineFault(enum.Enum):
    """Why the engine refuses: what a caller may be told (the message, with paths and OS errors, is for logs)."""

    UNAVAILABLE = "ENGINE_UNAVAILABLE"
    """Closed, or its cluster unreachable: retry."""
    STORAGE_FULL = "STORAGE_FULL"
    """No space for the journal: writes resume by themselves when space returns; reads serve."""
    STORAGE_FAILED = "STORAGE_FAILED"
    """A write or fsync failed for good: writes need a restart by an operator; reads serve."""


class EngineUnavailableError(RuntimeError):
    """The engine cannot serve now; `fault` says why in terms a caller may see."""

    def __init__(self, message: str, fault: EngineFault = EngineFault.UNAVAILABLE) -> None:
        super().__init__(message)
        self.fault = fault


@runtime_checkable
class Engine(Protocol):
    name: str
    """The backend's name: 'embedded' or 'tigerbeetle'."""

    @property
    def write_failure(self) -> str | None:
        """Why this engine can never write again without a restart or a repair (e.g. a journal write
        failed and the page cache cannot be trusted), or None while writes can succeed. A transient fault
        (a cluster briefly unreachable, a disk that may get space back) is not one. Liveness (/healthz)
        fails on it: restarting the process is the remedy."""
        ...

    async def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]: ...

    async def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]: ...

    async def lookup_accounts(self, ids: Sequence[int]) -> list[Account]: ...

    async def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]: ...

    async def get_account_transfers(self, filter: AccountFilter) -> list[Transfer]: ...

    async def get_account_balances(self, filter: AccountFilter) -> list[AccountBalance]: ...

    async def query_accounts(self, filter: QueryFilter) -> list[Account]: ...

    async def query_transfers(self, filter: QueryFilter) -> list[Transfer]: ...

    async def get_change_events(self, filter: ChangeEventsFilter) -> list[ChangeEvent]:
        """Committed changes with timestamp_min <= timestamp <= timestamp_max (0 = unbounded), in commit
        order, at most `limit`. A poller passes its last seen timestamp + 1 as timestamp_min."""
        ...

    async def close(self) -> None: ...
