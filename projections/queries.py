"""The read model's queries: the one place their SQL lives, run unchanged on chDB and on a server.

Times are engine timestamps (u64 ns since the Unix epoch), periods half-open [from, to). Every
query that can return many rows has a named maximum and says when it stopped there.

Balances as of a time come from the `balances` time series (the account's balances right after its
last change at or before that time). `balances_from_entries` derives the same numbers from the
entries alone, for events without balances (the TigerBeetle backend) and for reconciliation: posted
balances are sums of posted amounts; pending balances are the amounts of reservations not yet
resolved (posted, voided or expired) at that time, because a post releases the whole reservation
whatever amount it posts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from projections.client import ClickHouseClient, ParameterError, Row

STATEMENT_LINES_MAX = 10_000
"""Most lines in one statement page; the next page starts after the last line's timestamp."""
TRANSACTIONS_BY_CORRELATION_MAX = 10_000
DAILY_TOTALS_ROWS_MAX = 100_000
TIMESTAMP_MAX = (1 << 64) - 1


def to_int(value: object) -> int:
    """A JSON integer (or a decimal string, as some servers quote wide integers) as an int."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"expected an integer, got {value!r}")
    return int(value)


def to_str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def to_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    return to_int(value) != 0


def to_labels(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise TypeError(f"expected a map, got {value!r}")
    return {to_str(k): to_str(v) for k, v in value.items()}


@dataclass(slots=True, frozen=True)
class Balance:
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int
    timestamp: int
    """Engine timestamp of the account's last change at or before the requested time (0: none)."""

    @property
    def net_posted(self) -> int:
        """credits_posted - debits_posted: the balance of a credit-normal (customer) account."""
        return self.credits_posted - self.debits_posted


ZERO_BALANCE = Balance(0, 0, 0, 0, 0)


@dataclass(slots=True, frozen=True)
class StatementLine:
    engine_timestamp: int
    change: str
    side: str
    amount: int
    signed_amount: int
    counterparty_account_id: int
    transfer_id: int
    pending_id: int
    ledger: int
    code: int
    balance_after: Balance | None
    transaction_id: str
    transaction_type: str
    source: str
    correlation_id: str
    description: str
    currency: str


@dataclass(slots=True, frozen=True)
class Statement:
    account_id: int
    timestamp_from: int
    timestamp_to: int
    opening: Balance
    """Balances just before the period."""
    closing: Balance
    """Balances after the last line (at the period's end when not truncated)."""
    lines: list[StatementLine]
    truncated: bool
    """True when the period holds more than `limit` lines: continue from lines[-1].engine_timestamp + 1."""


@dataclass(slots=True, frozen=True)
class DailyTotal:
    day: str
    ledger: int
    currency: str
    transaction_type: str
    source: str
    change: str
    transactions: int
    amount: int


@dataclass(slots=True, frozen=True)
class TransactionRow:
    engine_timestamp: int
    change: str
    debit_account_id: int
    credit_account_id: int
    amount: int
    transfer_id: int
    pending_id: int
    ledger: int
    code: int
    chain_sequence: int
    transaction_id: str
    transaction_type: str
    source: str
    correlation_id: str
    description: str
    labels: dict[str, str]
    currency: str
    leg_index: int


_BALANCE_AS_OF = """
SELECT debits_pending, debits_posted, credits_pending, credits_posted, engine_timestamp
FROM balances
WHERE account_id = {account_id:UInt128} AND engine_timestamp <= {timestamp:UInt64}
ORDER BY engine_timestamp DESC
LIMIT 1"""


def _balance(row: Row) -> Balance:
    return Balance(to_int(row[0]), to_int(row[1]), to_int(row[2]), to_int(row[3]), to_int(row[4]))


def balance_as_of(client: ClickHouseClient, account_id: int, timestamp: int) -> Balance:
    """The account's balances right after its last change at or before `timestamp` (zero before its
    first). Falls back to the entries when the events carried no balances."""
    found = client.query_rows(_BALANCE_AS_OF, {"account_id": account_id, "timestamp": timestamp})
    if found:
        return _balance(found[0])
    derived = balances_from_entries(client, timestamp, account_id)
    return derived.get(account_id, ZERO_BALANCE)


# The change kinds are constants written into the text, never values bound from a caller.
_RESOLVED = """
WITH resolved AS (
    SELECT account_id, if(change = 'TWO_PHASE_EXPIRED', transfer_id, pending_id)
    FROM entries
    WHERE change IN ('TWO_PHASE_POSTED', 'TWO_PHASE_VOIDED', 'TWO_PHASE_EXPIRED')
        AND engine_timestamp <= {timestamp:UInt64}
        AND {account_filter:String} IN ('', toString(account_id))
)"""
_BALANCES_FROM_ENTRIES = """
SELECT
    account_id,
    sumIf(toUInt256(amount), side = 'DEBIT' AND change = 'TWO_PHASE_PENDING' AND (account_id, transfer_id) NOT IN resolved),
    sumIf(toUInt256(amount), side = 'DEBIT' AND change IN ('SINGLE_PHASE', 'TWO_PHASE_POSTED')),
    sumIf(toUInt256(amount), side = 'CREDIT' AND change = 'TWO_PHASE_PENDING' AND (account_id, transfer_id) NOT IN resolved),
    sumIf(toUInt256(amount), side = 'CREDIT' AND change IN ('SINGLE_PHASE', 'TWO_PHASE_POSTED')),
    max(engine_timestamp)
FROM entries
WHERE engine_timestamp <= {timestamp:UInt64} AND {account_filter:String} IN ('', toString(account_id))
GROUP BY account_id
ORDER BY account_id"""  # noqa: E501
_BALANCES_FROM_ENTRIES_QUERY = _RESOLVED + _BALANCES_FROM_ENTRIES
"""Two constant texts joined: no value is ever part of the SQL."""


def balances_from_entries(
    client: ClickHouseClient, timestamp: int, account_id: int | None = None
) -> dict[int, Balance]:
    """Every account's balances as of `timestamp` (or just `account_id`'s), summed from `entries`."""
    found = client.query_rows(
        _BALANCES_FROM_ENTRIES_QUERY,
        {"timestamp": timestamp, "account_filter": "" if account_id is None else str(account_id)},
    )
    return {to_int(row[0]): _balance(row[1:]) for row in found}


_LATEST_BALANCES = """
SELECT account_id, argMax(debits_pending, engine_timestamp), argMax(debits_posted, engine_timestamp),
    argMax(credits_pending, engine_timestamp), argMax(credits_posted, engine_timestamp), max(engine_timestamp)
FROM balances
WHERE engine_timestamp <= {timestamp:UInt64}
GROUP BY account_id
ORDER BY account_id"""


def latest_balances(client: ClickHouseClient, timestamp: int) -> dict[int, Balance]:
    """Every account's newest balance_after at or before `timestamp` (the balances time series)."""
    return {to_int(row[0]): _balance(row[1:]) for row in client.query_rows(_LATEST_BALANCES, {"timestamp": timestamp})}


_STATEMENT = """
SELECT engine_timestamp, change, side, amount, signed_amount, counterparty_account_id, transfer_id, pending_id,
    ledger, code, has_balance_after, debits_pending_after, debits_posted_after, credits_pending_after,
    credits_posted_after, transaction_id, transaction_type, source, correlation_id, description, currency
FROM entries
WHERE account_id = {account_id:UInt128}
    AND engine_timestamp >= {timestamp_from:UInt64} AND engine_timestamp < {timestamp_to:UInt64}
ORDER BY engine_timestamp
LIMIT {limit:UInt32}"""


def _statement_line(row: Row) -> StatementLine:
    timestamp = to_int(row[0])
    after = None
    if to_bool(row[10]):
        after = Balance(to_int(row[11]), to_int(row[12]), to_int(row[13]), to_int(row[14]), timestamp)
    return StatementLine(
        engine_timestamp=timestamp,
        change=to_str(row[1]),
        side=to_str(row[2]),
        amount=to_int(row[3]),
        signed_amount=to_int(row[4]),
        counterparty_account_id=to_int(row[5]),
        transfer_id=to_int(row[6]),
        pending_id=to_int(row[7]),
        ledger=to_int(row[8]),
        code=to_int(row[9]),
        balance_after=after,
        transaction_id=to_str(row[15]),
        transaction_type=to_str(row[16]),
        source=to_str(row[17]),
        correlation_id=to_str(row[18]),
        description=to_str(row[19]),
        currency=to_str(row[20]),
    )


def statement(
    client: ClickHouseClient,
    account_id: int,
    timestamp_from: int,
    timestamp_to: int,
    limit: int = STATEMENT_LINES_MAX,
) -> Statement:
    """The account's entries in [timestamp_from, timestamp_to), with opening and closing balances."""
    assert 0 < limit <= STATEMENT_LINES_MAX
    assert 0 <= timestamp_from <= timestamp_to
    found = client.query_rows(
        _STATEMENT,
        {"account_id": account_id, "timestamp_from": timestamp_from, "timestamp_to": timestamp_to, "limit": limit + 1},
    )
    lines = [_statement_line(row) for row in found[:limit]]
    truncated = len(found) > limit
    opening = balance_as_of(client, account_id, timestamp_from - 1) if timestamp_from > 0 else ZERO_BALANCE
    closing_timestamp = lines[-1].engine_timestamp if truncated else max(timestamp_from, timestamp_to - 1)
    closing = balance_as_of(client, account_id, closing_timestamp) if timestamp_to > 0 else ZERO_BALANCE
    return Statement(account_id, timestamp_from, timestamp_to, opening, closing, lines, truncated)


_DAILY_TOTALS = """
SELECT toString(toDate(engine_time)) AS day, ledger, currency, transaction_type, source, change,
    count(), sum(toUInt256(amount))
FROM transactions
WHERE engine_timestamp >= {timestamp_from:UInt64} AND engine_timestamp < {timestamp_to:UInt64}
GROUP BY day, ledger, currency, transaction_type, source, change
ORDER BY day, ledger, currency, transaction_type, source, change
LIMIT {limit:UInt32}"""


def daily_totals(client: ClickHouseClient, timestamp_from: int, timestamp_to: int) -> list[DailyTotal]:
    """Count and amount per UTC day x ledger x currency x transaction type x source x change, for
    reconciliation against bank and processor reports."""
    found = client.query_rows(
        _DAILY_TOTALS, {"timestamp_from": timestamp_from, "timestamp_to": timestamp_to, "limit": DAILY_TOTALS_ROWS_MAX}
    )
    return [
        DailyTotal(
            day=to_str(r[0]),
            ledger=to_int(r[1]),
            currency=to_str(r[2]),
            transaction_type=to_str(r[3]),
            source=to_str(r[4]),
            change=to_str(r[5]),
            transactions=to_int(r[6]),
            amount=to_int(r[7]),
        )
        for r in found
    ]


_BY_CORRELATION = """
SELECT engine_timestamp, change, debit_account_id, credit_account_id, amount, transfer_id, pending_id, ledger, code,
    chain_sequence, transaction_id, transaction_type, source, correlation_id, description, labels, currency, leg_index
FROM transactions
WHERE correlation_id = {correlation_id:String}
ORDER BY engine_timestamp
LIMIT {limit:UInt32}"""


def transactions_by_correlation_id(client: ClickHouseClient, correlation_id: str) -> list[TransactionRow]:
    """Every change whose metadata carries `correlation_id`, in commit order."""
    assert correlation_id, "an empty correlation id matches every change without metadata"
    try:
        found = client.query_rows(
            _BY_CORRELATION, {"correlation_id": correlation_id, "limit": TRANSACTIONS_BY_CORRELATION_MAX}
        )
    except ParameterError:
        # Not valid Unicode (a lone surrogate): every stored id is, so none equals it.
        return []
    return [transaction_row(r) for r in found]


PROJECTED_TIMESTAMP_SQL = "SELECT engine_timestamp FROM transactions ORDER BY engine_timestamp DESC LIMIT 1"
"""The newest change in the read model. The read model's own process answers it from its projector's
memory when it can (projections._process): the same rows, without the query."""


def projected_timestamp(client: ClickHouseClient) -> int:
    """Engine timestamp of the newest change in the read model (0 when empty). Read through the sorting
    key (the last granule of each part), not max() over the column: every History answer and every
    consistency round asks, and max() read all of it (2.4-20 ms at 2M changes, growing; this ~2 ms)."""
    found = client.query_rows(PROJECTED_TIMESTAMP_SQL)
    return to_int(found[0][0]) if found else 0


def transaction_row(r: Sequence[object]) -> TransactionRow:
    """A TransactionRow from the columns TRANSACTION_COLUMNS-style queries select, in that order."""
    return TransactionRow(
        engine_timestamp=to_int(r[0]),
        change=to_str(r[1]),
        debit_account_id=to_int(r[2]),
        credit_account_id=to_int(r[3]),
        amount=to_int(r[4]),
        transfer_id=to_int(r[5]),
        pending_id=to_int(r[6]),
        ledger=to_int(r[7]),
        code=to_int(r[8]),
        chain_sequence=to_int(r[9]),
        transaction_id=to_str(r[10]),
        transaction_type=to_str(r[11]),
        source=to_str(r[12]),
        correlation_id=to_str(r[13]),
        description=to_str(r[14]),
        labels=to_labels(r[15]),
        currency=to_str(r[16]),
        leg_index=to_int(r[17]),
    )
