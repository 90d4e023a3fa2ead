"""The feed of the read model's `accounts` table (projections.accounts): every customer account, from the
metadata store, the accounts' system of record.

Two paths, so nothing is missed:
- live: the service hands each account it has created (the engine's create is durable, so the account
  exists) to `offer`, which only appends to a bounded in-memory list; the feed's task writes the list to
  the read model on the read model's own thread, in batches;
- catch-up: at start (and whenever the live path dropped something: the list was full, or the process
  died before the task wrote it), the task walks the whole store in id order and inserts every account
  the table does not hold. An account whose store record exists but whose engine create never happened
  (a crash in between) has no engine timestamp and is skipped by the source until it exists.

Why not the engine's change feed: creating an account is no transfer, so it is not a change; and the
labels live in the metadata store, not in the engine. Both paths are idempotent (projections.accounts
inserts only ids the table does not hold), so a race between them costs nothing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from typing import Protocol

from facade.background import run_until_stopped
from projections.accounts import ACCOUNTS_BATCH_MAX, ProjectedAccount, project_accounts
from projections.client import ClickHouseClient
from projections.read_model import ReadModel

__all__ = ["ACCOUNTS_PENDING_MAX", "AccountFeed", "AccountSource"]

ACCOUNTS_PENDING_MAX = 100_000
"""Accounts offered and not yet written; beyond, an offer is dropped and a catch-up finds it instead."""
ACCOUNT_FEED_POLL_SECONDS = 0.05
"""How long the feed waits when nothing is pending: an account is queryable ~50 ms after its creation."""
CATCH_UP_PAGES_MAX = 1_000_000
"""A bound on the catch-up walk: a billion accounts, far beyond any store this service keeps."""

log = logging.getLogger(__name__)


class AccountSource(Protocol):
    """Where the accounts come from (the composition root adapts the metadata store and the engine)."""

    async def accounts_after(self, after: str) -> tuple[list[ProjectedAccount], str]:
        """The accounts following the cursor `after` ("" = from the start), at most ACCOUNTS_BATCH_MAX,
        and the next cursor ("" at the end)."""
        ...


def _project(accounts: Sequence[ProjectedAccount], client: ClickHouseClient) -> int:
    return project_accounts(client, accounts)


class AccountFeed:
    def __init__(self, read_model: ReadModel, source: AccountSource) -> None:
        self._read_model = read_model
        self._source = source
        self._pending: list[ProjectedAccount] = []
        self._catch_up_needed = True
        """At start: accounts created while the read model was off, or offered and lost with a crash."""
        self.catch_ups = 0
        self.projected = 0

    def offer(self, account: ProjectedAccount) -> None:
        """Hands over an account the engine holds (never blocks; called on the service's loop)."""
        if len(self._pending) >= ACCOUNTS_PENDING_MAX:
            self._catch_up_needed = True  # The walk of the store finds it: nothing is lost, only later.
            return
        self._pending.append(account)
        assert len(self._pending) <= ACCOUNTS_PENDING_MAX

    def request_catch_up(self) -> None:
        """An account could not be offered: the next round walks the store instead."""
        self._catch_up_needed = True

    async def catch_up(self) -> int:
        """Inserts every account of the store the read model does not hold; returns how many."""
        inserted, after = 0, ""
        for _ in range(CATCH_UP_PAGES_MAX):
            accounts, after = await self._source.accounts_after(after)
            assert len(accounts) <= ACCOUNTS_BATCH_MAX
            if accounts:
                inserted += await self._read_model.query(functools.partial(_project, accounts))
            if not after:
                break
        else:
            raise AssertionError(f"catch-up walked more than {CATCH_UP_PAGES_MAX} pages")
        self.catch_ups += 1
        self.projected += inserted
        log.info("accounts caught up in the read model: %d inserted", inserted)
        return inserted

    async def _round(self) -> float:
        """One batch (or the catch-up); how long to wait before the next round."""
        if self._catch_up_needed:
            # Cleared first: an offer dropped while the walk runs sets it again.
            self._catch_up_needed = False
            try:
                await self.catch_up()
            except BaseException:
                self._catch_up_needed = True
                raise
            return 0
        if not self._pending:
            return ACCOUNT_FEED_POLL_SECONDS
        batch = self._pending[:ACCOUNTS_BATCH_MAX]
        # Removed only once written: a failed insert is retried with the same accounts.
        self.projected += await self._read_model.query(functools.partial(_project, batch))
        del self._pending[: len(batch)]
        return 0 if self._pending else ACCOUNT_FEED_POLL_SECONDS

    async def run(self, stop: asyncio.Event) -> None:
        """Catches up, then writes what is offered, until `stop` is set; failures are retried with backoff."""
        await run_until_stopped(stop, self._round, component="account_feed")
