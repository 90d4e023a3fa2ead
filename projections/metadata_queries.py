"""Queries by metadata: transactions (and the accounts they touched) whose labels, source, correlation id,
time and amount match a filter, cursor-paged. Run unchanged on chDB and on a server.

Every value is a bound parameter. The statement's text is chosen from constant fragments by which
filters are present; a label filter adds one `labels[{label_key_N:String}] = {label_value_N:String}`
per pair, N a counter below LABELS_FILTER_MAX, so no caller text ever reaches the SQL.

Speed over millions of rows (scripts/bench_label_filter.py): `transactions` is ordered by engine
timestamp, so pages are read in order and stop at the page's end. Labels go through the label index
`transaction_labels` (projections.schema): one row per label of every change, carrying the change's
columns, ordered by key, value, engine timestamp, so one pair's page is a few consecutive granules read
from the cursor on; with several pairs the rarest drives and the others are checked on the rows. A
correlation id and a source use bloom filters, a time range the primary key. An amount range has no
index (amounts are spread over every granule): it costs a scan of the rows until the page is full.
ListAccounts reads the same rows (each change is an entry on its debit and its credit account) and
groups them by account.

Paging: the order is the table's own engine timestamp (unique per change; account id for accounts),
the cursor is the last key returned, sealed with a fingerprint of the filter so a token cannot be
replayed with another filter. Opaque to callers (base64url of a small JSON document).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
from dataclasses import dataclass, field

from projections.accounts import account_labels_conditions
from projections.client import ClickHouseClient, Parameters
from projections.queries import TIMESTAMP_MAX, TransactionRow, to_int, to_labels, to_str, transaction_row
from projections.schema import ACCOUNTS_TABLE, LABELS_TABLE

__all__ = [
    "LABELS_FILTER_MAX",
    "PAGE_SIZE_DEFAULT",
    "PAGE_SIZE_MAX",
    "AccountRow",
    "AccountsPage",
    "InvalidPageTokenError",
    "TransactionFilter",
    "TransactionsPage",
    "list_accounts",
    "list_transactions",
]

LABELS_FILTER_MAX = 16
"""As many labels as a transaction may carry: a filter with more can match nothing."""
PAGE_SIZE_DEFAULT = 100
PAGE_SIZE_MAX = 1000
PAGE_TOKEN_LENGTH_MAX = 512
LABEL_COUNT_MAX = 100_000
"""Rows counted per label pair to find the rarest of several (a bounded read of the label index)."""
U128_MAX = (1 << 128) - 1
_TOKEN_VERSION = 1
_FINGERPRINT_HEX_DIGITS = 16


class InvalidPageTokenError(ValueError):
    """A page token that is not one of ours, or was issued for another filter or listing."""


@dataclass(frozen=True, slots=True)
class TransactionFilter:
    """Every filter given must match; empty / 0 / None is not filtered."""

    labels: tuple[tuple[str, str], ...] = ()
    """Sorted key/value pairs, at most LABELS_FILTER_MAX."""
    source: str = ""
    correlation_id: str = ""
    timestamp_from: int = 0
    timestamp_to: int = 0
    """Exclusive; 0 = unbounded."""
    amount_min: int | None = None
    amount_max: int | None = None
    client_id: str | None = None
    """Only this client's transactions (callers without ledger.admin); None = every client's."""
    account_labels: tuple[tuple[str, str], ...] = ()
    """ListAccounts only: sorted pairs the account's own labels must all carry (projections.accounts)."""

    def __post_init__(self) -> None:
        assert len(self.labels) <= LABELS_FILTER_MAX
        assert len(self.account_labels) <= LABELS_FILTER_MAX
        assert list(self.account_labels) == sorted(self.account_labels)
        assert list(self.labels) == sorted(self.labels)
        assert 0 <= self.timestamp_from <= TIMESTAMP_MAX and 0 <= self.timestamp_to <= TIMESTAMP_MAX
        assert self.amount_min is None or 0 <= self.amount_min <= U128_MAX
        assert self.amount_max is None or 0 <= self.amount_max <= U128_MAX

    def filters_transactions(self) -> bool:
        """Whether any filter on the transactions is given (the client restriction is not one)."""
        return bool(
            self.labels
            or self.source
            or self.correlation_id
            or self.timestamp_from
            or self.timestamp_to
            or self.amount_min is not None
            or self.amount_max is not None
        )

    def fingerprint(self, listing: str) -> str:
        canonical = json.dumps([listing, *(str(getattr(self, name)) for name in self.__slots__)])
        return hashlib.sha256(canonical.encode()).hexdigest()[:_FINGERPRINT_HEX_DIGITS]


def _label_conditions(query: TransactionFilter, parameters: dict[str, int | str]) -> list[str]:
    conditions: list[str] = []
    for index, (key, value) in enumerate(query.labels):
        assert index < LABELS_FILTER_MAX
        parameters[f"label_key_{index}"], parameters[f"label_value_{index}"] = key, value
        conditions.append(f"labels[{{label_key_{index}:String}}] = {{label_value_{index}:String}}")
        if not value:  # A missing key reads as '': only a present key may match an empty value.
            conditions.append(f"mapContains(labels, {{label_key_{index}:String}})")
    return conditions


def _conditions(query: TransactionFilter, parameters: dict[str, int | str]) -> list[str]:
    """The WHERE conditions of `query`, constant text only; the values go into `parameters`."""
    conditions = _label_conditions(query, parameters)
    if query.source:
        parameters["source"] = query.source
        conditions.append("source = {source:String}")
    if query.correlation_id:
        parameters["correlation_id"] = query.correlation_id
        conditions.append("correlation_id = {correlation_id:String}")
    if query.timestamp_from:
        parameters["timestamp_from"] = query.timestamp_from
        conditions.append("engine_timestamp >= {timestamp_from:UInt64}")
    if query.timestamp_to:
        parameters["timestamp_to"] = query.timestamp_to
        conditions.append("engine_timestamp < {timestamp_to:UInt64}")
    if query.amount_min is not None:
        parameters["amount_min"] = query.amount_min
        conditions.append("amount >= {amount_min:UInt128}")
    if query.amount_max is not None:
        parameters["amount_max"] = query.amount_max
        conditions.append("amount <= {amount_max:UInt128}")
    if query.client_id is not None:
        parameters["client_id"] = query.client_id
        conditions.append("client_id = {client_id:String}")
    return conditions


def _token(listing: str, query: TransactionFilter, after: int) -> str:
    document = {"v": _TOKEN_VERSION, "l": listing, "a": str(after), "f": query.fingerprint(listing)}
    return base64.urlsafe_b64encode(json.dumps(document, separators=(",", ":")).encode()).decode().rstrip("=")


def _after(listing: str, query: TransactionFilter, token: str) -> int | None:
    """The key after which the page starts: None for the first page."""
    if not token:
        return None
    if len(token) > PAGE_TOKEN_LENGTH_MAX:
        raise InvalidPageTokenError("page_token is too long")
    try:
        document = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        valid = (
            isinstance(document, dict)
            and document.get("v") == _TOKEN_VERSION
            and document.get("l") == listing
            and isinstance(document.get("a"), str)
            and document["a"].isdigit()
        )
    except (ValueError, binascii.Error, UnicodeDecodeError):
        valid = False
    if not valid:
        raise InvalidPageTokenError("page_token is not a page token of this listing")
    if document.get("f") != query.fingerprint(listing):
        raise InvalidPageTokenError("page_token was issued for another filter: repeat the filter it came with")
    after = int(document["a"])
    if not 0 <= after <= U128_MAX:
        raise InvalidPageTokenError("page_token is out of range")
    return after


def _page_size(page_size: int) -> int:
    assert 0 <= page_size <= PAGE_SIZE_MAX, "the edges refuse larger pages"
    return page_size or PAGE_SIZE_DEFAULT


@dataclass(frozen=True, slots=True)
class TransactionsPage:
    transactions: list[TransactionRow]
    next_page_token: str
    """Empty on the last page."""


_TRANSACTION_COLUMNS = (
    "engine_timestamp, change, debit_account_id, credit_account_id, amount, transfer_id, pending_id, ledger, code, "
    "chain_sequence, transaction_id, transaction_type, source, correlation_id, description, labels, currency, "
    "leg_index"
)


def list_transactions(
    client: ClickHouseClient, query: TransactionFilter, *, page_size: int = 0, page_token: str = ""
) -> TransactionsPage:
    """One page of the changes matching `query`, oldest first. Raises InvalidPageTokenError.

    Without labels: `transactions` in its own order. With labels: the label index's range of one pair
    (the rarest, by a bounded count), the other pairs checked on the rows' labels."""
    size = _page_size(page_size)
    after = _after("transactions", query, page_token)
    parameters: dict[str, int | str] = {"limit": size + 1}
    table, conditions = _source(client, query, parameters)
    if after is not None:
        parameters["after"] = after
        conditions.append("engine_timestamp > {after:UInt64}")
    where = " AND ".join(conditions) or "1"
    sql = f"SELECT {_TRANSACTION_COLUMNS} FROM {table} WHERE {where} ORDER BY engine_timestamp LIMIT {{limit:UInt32}}"
    found = client.query_rows(sql, _frozen(parameters))
    assert len(found) <= size + 1
    more = len(found) > size
    rows: list[TransactionRow] = []
    for row in map(transaction_row, found[:size]):
        # Both tables are ReplacingMergeTrees: a row inserted twice and not yet merged away is shown once
        # (not by LIMIT 1 BY in the query, which would give up reading in order and stopping early).
        if not rows or rows[-1].engine_timestamp != row.engine_timestamp:
            rows.append(row)
    token = _token("transactions", query, rows[-1].engine_timestamp) if more else ""
    assert all(a.engine_timestamp < b.engine_timestamp for a, b in itertools.pairwise(rows))
    return TransactionsPage(rows, token)


def _source(
    client: ClickHouseClient, query: TransactionFilter, parameters: dict[str, int | str]
) -> tuple[str, list[str]]:
    """The table to read and its WHERE conditions: `transactions`, or with labels the label index's range
    of one pair (the rarest, by a bounded count) with the other pairs checked on the rows' labels."""
    if not query.labels:
        return "transactions", _conditions(query, parameters)
    driver = _rarest_pair(client, query.labels)
    parameters["driver_key"], parameters["driver_value"] = driver
    others = tuple(pair for pair in query.labels if pair != driver)
    conditions = ["label_key = {driver_key:String}", "label_value = {driver_value:String}"]
    return LABELS_TABLE, conditions + _conditions(_with_labels(query, others), parameters)


def _with_labels(query: TransactionFilter, labels: tuple[tuple[str, str], ...]) -> TransactionFilter:
    return TransactionFilter(
        labels=labels,
        source=query.source,
        correlation_id=query.correlation_id,
        timestamp_from=query.timestamp_from,
        timestamp_to=query.timestamp_to,
        amount_min=query.amount_min,
        amount_max=query.amount_max,
        client_id=query.client_id,
        account_labels=query.account_labels,
    )


def _rarest_pair(client: ClickHouseClient, labels: tuple[tuple[str, str], ...]) -> tuple[str, str]:
    """The pair whose label-index range is shortest, each counted up to LABEL_COUNT_MAX rows (so a
    common label costs a bounded read): the page is then read from the smallest range."""
    if len(labels) == 1:
        return labels[0]
    counts: list[tuple[int, tuple[str, str]]] = []
    for key, value in labels:
        found = client.query_rows(_LABEL_COUNT, {"key": key, "value": value, "count_max": LABEL_COUNT_MAX})
        counts.append((to_int(found[0][0]), (key, value)))
    assert len(counts) == len(labels) <= LABELS_FILTER_MAX
    return min(counts)[1]


_LABEL_COUNT = (
    f"SELECT count() FROM (SELECT 1 FROM {LABELS_TABLE} WHERE label_key = {{key:String}} "
    "AND label_value = {value:String} LIMIT {count_max:UInt32})"
)


@dataclass(frozen=True, slots=True)
class AccountRow:
    account_id: int
    currency: str
    entries: int
    timestamp_first: int
    timestamp_last: int
    labels: dict[str, str] = field(default_factory=dict)
    """The account's own labels (empty when the read model does not hold the account or the caller may
    not see its attributes: another client's account, for a caller without ledger.admin)."""
    external_reference: str = ""


@dataclass(frozen=True, slots=True)
class AccountsPage:
    accounts: list[AccountRow] = field(default_factory=list)
    next_page_token: str = ""


def _owned_accounts(query: TransactionFilter, parameters: dict[str, int | str]) -> str:
    """The accounts whose own labels match (and, for a caller without ledger.admin, the caller's own)."""
    conditions = account_labels_conditions(query.account_labels, parameters)
    if query.client_id is not None:
        parameters["account_client_id"] = query.client_id
        conditions.append("client_id = {account_client_id:String}")
    return f"SELECT account_id FROM {ACCOUNTS_TABLE} WHERE {' AND '.join(conditions) or '1'}"


def list_accounts(
    client: ClickHouseClient, query: TransactionFilter, *, page_size: int = 0, page_token: str = ""
) -> AccountsPage:
    """One page of the accounts matching `query`, by account id.

    Without account labels: the accounts with an entry matching the transaction filter. With account
    labels: the accounts carrying them (the caller's own, without ledger.admin), and when a transaction
    filter is given too, only those with an entry matching it. Each row carries the account's own labels
    and reference when the caller may see them."""
    size = _page_size(page_size)
    after = _after("accounts", query, page_token)
    if query.account_labels and not query.filters_transactions():
        rows = _accounts_by_labels(client, query, limit=size + 1, after=after or 0)
    else:
        rows = _accounts_by_entries(client, query, limit=size + 1, after=after or 0)
    assert len(rows) <= size + 1
    more = len(rows) > size
    rows = _with_attributes(client, query, rows[:size])
    token = _token("accounts", query, rows[-1].account_id) if more else ""
    assert all(a.account_id < b.account_id for a, b in itertools.pairwise(rows))
    return AccountsPage(rows, token)


def _accounts_by_entries(
    client: ClickHouseClient, query: TransactionFilter, *, limit: int, after: int
) -> list[AccountRow]:
    parameters: dict[str, int | str] = {"limit": limit, "after": after}
    table, conditions = _source(client, query, parameters)
    where = " AND ".join(conditions) or "1"
    owned = f" AND account_id IN ({_owned_accounts(query, parameters)})" if query.account_labels else ""
    # Each matching change is one entry on each of its two accounts (as in `entries`), read from the same
    # table ListTransactions reads, so labels use the label index here too.
    sql = (
        "SELECT account_id, any(currency), count(), min(engine_timestamp), max(engine_timestamp) FROM ("
        "SELECT arrayJoin([debit_account_id, credit_account_id]) AS account_id, currency, engine_timestamp "
        f"FROM {table} WHERE {where}) WHERE account_id > {{after:UInt128}}{owned} "
        "GROUP BY account_id ORDER BY account_id LIMIT {limit:UInt32}"
    )
    return [
        AccountRow(to_int(r[0]), to_str(r[1]), to_int(r[2]), to_int(r[3]), to_int(r[4]))
        for r in client.query_rows(sql, _frozen(parameters))
    ]


def _accounts_by_labels(
    client: ClickHouseClient, query: TransactionFilter, *, limit: int, after: int
) -> list[AccountRow]:
    """The accounts carrying the labels, from `accounts` in its own order (duplicates not merged yet shown
    once), with their entries counted (the caller's client's only, without ledger.admin)."""
    parameters: dict[str, int | str] = {"limit": limit, "after": after}
    sql = (
        f"SELECT account_id, currency FROM {ACCOUNTS_TABLE} WHERE account_id IN ({_owned_accounts(query, parameters)}) "
        "AND account_id > {after:UInt128} ORDER BY account_id LIMIT 1 BY account_id LIMIT {limit:UInt32}"
    )
    found = [(to_int(r[0]), to_str(r[1])) for r in client.query_rows(sql, _frozen(parameters))]
    if not found:
        return []
    counted: dict[str, int | str] = {"ids": ",".join(str(account_id) for account_id, _ in found)}
    client_condition = ""
    if query.client_id is not None:
        counted["client_id"] = query.client_id
        client_condition = " AND client_id = {client_id:String}"
    stats = {
        to_int(r[0]): (to_int(r[1]), to_int(r[2]), to_int(r[3]))
        for r in client.query_rows(
            "SELECT account_id, count(), min(engine_timestamp), max(engine_timestamp) FROM entries "
            f"WHERE account_id IN ({_IDS}){client_condition} GROUP BY account_id",
            _frozen(counted),
        )
    }
    return [AccountRow(account_id, currency, *stats.get(account_id, (0, 0, 0))) for account_id, currency in found]


_IDS = "SELECT toUInt128(arrayJoin(splitByChar(',', {ids:String})))"
"""A page's account ids, bound as one string of decimal integers."""


def _with_attributes(client: ClickHouseClient, query: TransactionFilter, rows: list[AccountRow]) -> list[AccountRow]:
    """`rows` with each account's own labels and reference, for the accounts the caller may see."""
    if not rows:
        return rows
    parameters: dict[str, int | str] = {"ids": ",".join(str(row.account_id) for row in rows)}
    client_condition = ""
    if query.client_id is not None:
        parameters["client_id"] = query.client_id
        client_condition = " AND client_id = {client_id:String}"
    found = client.query_rows(
        f"SELECT account_id, labels, external_reference FROM {ACCOUNTS_TABLE} WHERE account_id IN ({_IDS})"
        f"{client_condition} LIMIT 1 BY account_id",
        _frozen(parameters),
    )
    attributes = {to_int(r[0]): (to_labels(r[1]), to_str(r[2])) for r in found}
    assert len(attributes) <= len(rows)
    return [
        AccountRow(
            row.account_id,
            row.currency,
            row.entries,
            row.timestamp_first,
            row.timestamp_last,
            *attributes.get(row.account_id, ({}, "")),
        )
        for row in rows
    ]


def _frozen(parameters: dict[str, int | str]) -> Parameters:
    return dict(parameters)
