"""Reconciliation: the read model's balances against the engine's, account by account.

Two independent ClickHouse figures per account, both as of the newest projected change T:
- `entries`: balances summed from the entries (posted amounts, unresolved reservations);
- `balances`: the newest balance_after in the time series (absent on the TigerBeetle backend).
Each must equal the engine's. A mismatch is drift (a missing, extra or altered row), unless the
account changed in the engine after T (projection lag): then it is compared with the engine's
balance as of T when the account keeps history, and otherwise reported as not comparable yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from facade.engine.protocol import Engine
from facade.engine.types import (
    QUERY_LIMIT_MAX,
    Account,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    QueryFilter,
)
from projections.client import ClickHouseClient
from projections.queries import Balance, balances_from_entries, latest_balances, projected_timestamp

ACCOUNT_PAGES_MAX = 10_000
"""Bound on engine account pages (QUERY_LIMIT_MAX accounts each): 81 million accounts."""
BALANCE_FIELDS = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")


@dataclass(slots=True, frozen=True)
class AccountDrift:
    account_id: int
    source: str
    """Which ClickHouse figure drifted: 'entries' (sums) or 'balances' (time series)."""
    field: str
    engine: int
    clickhouse: int


@dataclass(slots=True)
class ReconciliationReport:
    timestamp: int
    """Engine timestamp of the newest projected change: everything is compared as of it."""
    accounts_checked: int = 0
    drifts: list[AccountDrift] = field(default_factory=list)
    accounts_not_comparable: list[int] = field(default_factory=list)
    """Accounts that moved after `timestamp` and keep no history: compare again once caught up."""
    unknown_accounts: list[int] = field(default_factory=list)
    """Accounts with entries in ClickHouse that the engine does not have."""

    @property
    def ok(self) -> bool:
        return not self.drifts and not self.unknown_accounts

    @property
    def drifting_accounts(self) -> list[int]:
        return sorted({d.account_id for d in self.drifts})


async def _engine_accounts(engine: Engine) -> dict[int, Account]:
    accounts: dict[int, Account] = {}
    cursor = 0
    for _ in range(ACCOUNT_PAGES_MAX):
        page = await engine.query_accounts(QueryFilter(timestamp_min=cursor + 1, limit=QUERY_LIMIT_MAX))
        for account in page:
            accounts[account.id] = account
        if len(page) < QUERY_LIMIT_MAX:
            return accounts
        cursor = page[-1].timestamp
    raise RuntimeError(f"more than {ACCOUNT_PAGES_MAX} pages of accounts")


def _engine_balance(account: Account) -> Balance:
    return Balance(account.debits_pending, account.debits_posted, account.credits_pending, account.credits_posted, 0)


def _differences(account_id: int, source: str, engine: Balance, clickhouse: Balance) -> list[AccountDrift]:
    return [
        AccountDrift(account_id, source, name, getattr(engine, name), getattr(clickhouse, name))
        for name in BALANCE_FIELDS
        if getattr(engine, name) != getattr(clickhouse, name)
    ]


async def _engine_balance_as_of(engine: Engine, account: Account, timestamp: int) -> Balance | None:
    """The engine's balance as of `timestamp` when it can tell (history accounts), else None."""
    if timestamp == 0:
        # Nothing projected yet: before the first change every balance is zero. (Passed on, a zero
        # timestamp_max would mean "unbounded" to the engine and compare the latest balances.)
        return Balance(0, 0, 0, 0, 0)
    moved = await engine.get_account_transfers(
        AccountFilter(account_id=account.id, timestamp_min=timestamp + 1, limit=1)
    )
    if not moved:
        return _engine_balance(account)
    if not account.flags & AccountFlags.HISTORY:
        return None
    flags = AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS | AccountFilterFlags.REVERSED
    history = await engine.get_account_balances(
        AccountFilter(account_id=account.id, timestamp_max=timestamp, limit=1, flags=flags)
    )
    if not history:
        return Balance(0, 0, 0, 0, 0)
    b = history[0]
    return Balance(b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted, 0)


@dataclass(slots=True, frozen=True)
class ReadModelFigures:
    """The read model's side of a reconciliation, read in one go (a service reads it on the thread
    that owns its ClickHouse client, then compares on the event loop)."""

    timestamp: int
    from_entries: dict[int, Balance]
    from_series: dict[int, Balance]


def read_figures(client: ClickHouseClient) -> ReadModelFigures:
    timestamp = projected_timestamp(client)
    return ReadModelFigures(timestamp, balances_from_entries(client, timestamp), latest_balances(client, timestamp))


async def compare(engine: Engine, figures: ReadModelFigures) -> ReconciliationReport:
    """Compares every engine account (and every account the read model knows) as of figures.timestamp."""
    timestamp, from_entries, from_series = figures.timestamp, figures.from_entries, figures.from_series
    accounts = await _engine_accounts(engine)
    report = ReconciliationReport(timestamp=timestamp)
    report.unknown_accounts = sorted(set(from_entries) - set(accounts))
    zero = Balance(0, 0, 0, 0, 0)
    for account_id, account in sorted(accounts.items()):
        report.accounts_checked += 1
        figures_of_account = [("entries", from_entries.get(account_id, zero))]
        if account_id in from_series or (from_series and account_id in from_entries):
            figures_of_account.append(("balances", from_series.get(account_id, zero)))
        engine_now = _engine_balance(account)
        if all(not _differences(account_id, source, engine_now, figure) for source, figure in figures_of_account):
            continue
        engine_then = await _engine_balance_as_of(engine, account, timestamp)
        if engine_then is None:
            report.accounts_not_comparable.append(account_id)
            continue
        for source, figure in figures_of_account:
            report.drifts.extend(_differences(account_id, source, engine_then, figure))
    return report


async def reconcile(engine: Engine, client: ClickHouseClient) -> ReconciliationReport:
    """Compares every engine account (and every account ClickHouse knows) as of the projected time."""
    return await compare(engine, read_figures(client))


def drift_reason(report: ReconciliationReport) -> str:
    """ "" when the read model agrees with the engine; otherwise one line saying what drifted (for
    readiness and logs: bounded, whatever the number of drifting accounts)."""
    if report.ok:
        return ""
    drifting = report.drifting_accounts
    return (
        f"the read model drifts from the engine as of {report.timestamp}: {len(drifting)} accounts with different "
        f"balances (first: {drifting[0] if drifting else '-'}), {len(report.unknown_accounts)} accounts the engine "
        f"does not have (first: {report.unknown_accounts[0] if report.unknown_accounts else '-'})"
    )
