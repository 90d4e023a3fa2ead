"""Reconciliation: the read model's balances against the engine's, account by account.

Two independent ClickHouse figures per account, both as of the newest projected change T:
- `entries`: balances summed from the entries (posted amounts, unresolved reservations);
- `balances`: the newest balance_after in the time series (absent on the TigerBeetle backend).
Each must equal the engine's. A mismatch is drift (a missing, extra or altered row), unless the
account changed in the engine after T (projection lag): then it is compared with the engine's
balance as of T when the account keeps history, and otherwise reported as not comparable yet.

On demand (`reconcile`, the History Reconcile RPC) every account is compared in one go. The service's
continuous checks (facade.consistency, the self-audit) instead sweep the account id space in slices
(`ReconcileSweep`): each step compares the accounts of one id range, read through the tables' primary
key (account_id, engine_timestamp), so a step reads about SLICE_ENTRIES_MAX entries whatever the size
of the read model. Every row is still looked at once per sweep (damage to an old row is found, not
only drift in new ones), but the read model's process, which also runs the projector's inserts, is
never held for longer than one slice: a full scan of millions of entries held it for seconds and the
projection lagged by as much.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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
from projections.client import ClickHouseClient, Row
from projections.queries import (
    Balance,
    balances_from_entries,
    latest_balances,
    projected_timestamp,
    to_int,
)

ACCOUNT_ID_MAX = 2**128 - 1
SLICE_ENTRIES_MAX = 200_000
"""Entries one sweep step reads at most, on average: ~0.1 s of the read model's process (chDB, 2 cores)."""
SLICES_MAX = 4096
"""Bound on the slices of a sweep (≈ 800 million entries at SLICE_ENTRIES_MAX; more makes slices larger)."""
ACCOUNT_PAGES_MAX = 10_000
"""Bound on engine account pages (QUERY_LIMIT_MAX accounts each): 81 million accounts."""
BALANCE_FIELDS = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")


@dataclass(slots=True, frozen=True)
class AccountRange:
    """Account ids from `low` to `high`, both included."""

    low: int = 0
    high: int = ACCOUNT_ID_MAX

    def __post_init__(self) -> None:
        assert 0 <= self.low <= self.high <= ACCOUNT_ID_MAX

    def __contains__(self, account_id: int) -> bool:
        return self.low <= account_id <= self.high


ALL_ACCOUNTS = AccountRange()


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
    accounts: AccountRange = ALL_ACCOUNTS
    """The accounts these figures cover: the engine's other accounts are not compared."""


def read_figures(client: ClickHouseClient) -> ReadModelFigures:
    timestamp = projected_timestamp(client)
    return ReadModelFigures(timestamp, balances_from_entries(client, timestamp), latest_balances(client, timestamp))


# The same figures as projections.queries' balances_from_entries and latest_balances, for one account id
# range: the bounds are on account_id itself, so ClickHouse reads only that range of the primary key.
_RESOLVED_IN_RANGE = """
WITH resolved AS (
    SELECT account_id, if(change = 'TWO_PHASE_EXPIRED', transfer_id, pending_id)
    FROM entries
    WHERE account_id BETWEEN {low:UInt128} AND {high:UInt128}
        AND change IN ('TWO_PHASE_POSTED', 'TWO_PHASE_VOIDED', 'TWO_PHASE_EXPIRED')
        AND engine_timestamp <= {timestamp:UInt64}
)"""
_BALANCES_FROM_ENTRIES_IN_RANGE = (
    _RESOLVED_IN_RANGE
    + """
SELECT
    account_id,
    sumIf(toUInt256(amount), side = 'DEBIT' AND change = 'TWO_PHASE_PENDING' AND (account_id, transfer_id) NOT IN resolved),
    sumIf(toUInt256(amount), side = 'DEBIT' AND change IN ('SINGLE_PHASE', 'TWO_PHASE_POSTED')),
    sumIf(toUInt256(amount), side = 'CREDIT' AND change = 'TWO_PHASE_PENDING' AND (account_id, transfer_id) NOT IN resolved),
    sumIf(toUInt256(amount), side = 'CREDIT' AND change IN ('SINGLE_PHASE', 'TWO_PHASE_POSTED')),
    max(engine_timestamp)
FROM entries
WHERE account_id BETWEEN {low:UInt128} AND {high:UInt128} AND engine_timestamp <= {timestamp:UInt64}
GROUP BY account_id"""  # noqa: E501
)
_LATEST_BALANCES_IN_RANGE = """
SELECT account_id, argMax(debits_pending, engine_timestamp), argMax(debits_posted, engine_timestamp),
    argMax(credits_pending, engine_timestamp), argMax(credits_posted, engine_timestamp), max(engine_timestamp)
FROM balances
WHERE account_id BETWEEN {low:UInt128} AND {high:UInt128} AND engine_timestamp <= {timestamp:UInt64}
GROUP BY account_id"""
_ENTRIES_COUNT = "SELECT count() FROM entries"
"""Answered from the parts' metadata: no rows are read."""


def _balance(row: Row) -> Balance:
    return Balance(to_int(row[0]), to_int(row[1]), to_int(row[2]), to_int(row[3]), to_int(row[4]))


def _figures_in(client: ClickHouseClient, accounts: AccountRange) -> ReadModelFigures:
    timestamp = projected_timestamp(client)
    parameters = {"low": accounts.low, "high": accounts.high, "timestamp": timestamp}
    from_entries = {
        to_int(row[0]): _balance(row[1:]) for row in client.query_rows(_BALANCES_FROM_ENTRIES_IN_RANGE, parameters)
    }
    from_series = {
        to_int(row[0]): _balance(row[1:]) for row in client.query_rows(_LATEST_BALANCES_IN_RANGE, parameters)
    }
    assert all(account_id in accounts for account_id in from_entries)
    return ReadModelFigures(timestamp, from_entries, from_series, accounts)


class ReconcileSweep:
    """The account id space in slices, one per `next_figures` call, round and round (see the module
    docstring). The number of slices is chosen at the start of each sweep from the entries' count, so a
    growing read model gets more, equally small, slices."""

    def __init__(self) -> None:
        self._slice = 0
        self._slices = 1
        self.sweeps = 0
        """Completed sweeps: every account compared at least once per sweep."""

    def next_figures(self, client: ClickHouseClient) -> ReadModelFigures:
        """The next slice's figures (on the client's thread); the last slice of a sweep covers up to
        ACCOUNT_ID_MAX, so the slices always cover every id."""
        if self._slice == 0:
            entries = to_int(client.query_rows(_ENTRIES_COUNT)[0][0])
            self._slices = min(SLICES_MAX, max(1, -(-entries // SLICE_ENTRIES_MAX)))
        width = (ACCOUNT_ID_MAX + 1) // self._slices
        low = self._slice * width
        high = ACCOUNT_ID_MAX if self._slice == self._slices - 1 else low + width - 1
        figures = _figures_in(client, AccountRange(low, high))
        self._slice += 1
        if self._slice == self._slices:
            self._slice = 0
            self.sweeps += 1
        assert 0 <= self._slice < self._slices
        return figures

    @property
    def sweep_ends(self) -> bool:
        """The next call starts a new sweep (the previous one covered every account)."""
        return self._slice == 0


async def compare(engine: Engine, figures: ReadModelFigures) -> ReconciliationReport:
    """Compares every engine account (and every account the read model knows) in figures.accounts as of
    figures.timestamp."""
    timestamp, from_entries, from_series = figures.timestamp, figures.from_entries, figures.from_series
    accounts = await _engine_accounts(engine)
    if figures.accounts != ALL_ACCOUNTS:
        accounts = {account_id: a for account_id, a in accounts.items() if account_id in figures.accounts}
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


def sweeping_drift(
    engine: Engine, query: Callable[[Callable[[ClickHouseClient], ReadModelFigures]], Awaitable[ReadModelFigures]]
) -> Callable[[], Awaitable[str]]:
    """A drift check for the continuous consistency check: each call compares the next slice of a
    ReconcileSweep ("" when it agrees); `query` runs a function on the read model's client thread."""
    sweep = ReconcileSweep()

    async def drift() -> str:
        return drift_reason(await compare(engine, await query(sweep.next_figures)))

    return drift


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
