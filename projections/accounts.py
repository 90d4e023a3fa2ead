"""Accounts in the read model: each customer account's own attributes (owner client, currency, type,
external reference, labels = CreateAccountRequest.metadata, the engine's creation timestamp), so that
analysts and ListAccounts (`account_labels`) can find accounts by their labels.

The table `accounts` is fed by projections.account_feed from the metadata store (the accounts' system of
record): each account as the service creates it, and at start a catch-up of every account the table does
not hold yet. An account's attributes never change after creation, so a row is written once;
`ReplacingMergeTree` keyed by account id folds the rare duplicate (the live hand-off and the catch-up
racing for one account), and `project_accounts` inserts only the ids the table does not hold.

Every value is a bound parameter or TabSeparated data escaped here: no caller text reaches the SQL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from facade.engine.types import U128_MAX
from projections.client import ClickHouseClient
from projections.queries import to_int
from projections.schema import ACCOUNTS_COLUMNS, ACCOUNTS_TABLE

__all__ = [
    "ACCOUNTS_BATCH_MAX",
    "ACCOUNT_TYPES",
    "ProjectedAccount",
    "account_labels_conditions",
    "held_accounts",
    "project_accounts",
]

ACCOUNT_TYPES: Mapping[int, str] = {1: "NO_OVERDRAFT", 2: "OVERDRAFT_ALLOWED"}
"""ledger.v1.AccountType without its prefix, values identical."""
ACCOUNTS_BATCH_MAX = 1000
"""Accounts per insert (and per catch-up page): the id list of one `held_accounts` query stays small."""
ACCOUNT_LABELS_FILTER_MAX = 16
"""As many labels as an account may carry (facade.domain.validation): a filter with more can match nothing."""

_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"})
_QUOTED_ESCAPES = str.maketrans({"\\": "\\\\", "'": "\\'", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"})


@dataclass(frozen=True, slots=True)
class ProjectedAccount:
    """One account as the read model holds it."""

    account_id: int
    client_id: str
    currency: str
    account_type: int
    """ledger.v1.AccountType: 1 NO_OVERDRAFT, 2 OVERDRAFT_ALLOWED."""
    external_reference: str
    owner: str
    labels: Mapping[str, str] = field(default_factory=dict)
    created_timestamp: int = 0
    """The engine's timestamp of the account (ns since the Unix epoch)."""

    def __post_init__(self) -> None:
        assert 0 < self.account_id <= U128_MAX
        assert self.account_type in ACCOUNT_TYPES
        assert self.created_timestamp >= 0

    def row(self) -> str:
        """The TabSeparated row (ACCOUNTS_COLUMNS order); every string escaped, so no attribute can leave
        its column (a map's keys and values are quoted strings inside braces)."""
        labels = ",".join(
            f"'{key.translate(_QUOTED_ESCAPES)}':'{value.translate(_QUOTED_ESCAPES)}'"
            for key, value in sorted(self.labels.items())
        )
        texts = (self.client_id, self.currency)
        row = "\t".join(
            (
                str(self.account_id),
                *(text.translate(_TSV_ESCAPES) for text in texts),
                ACCOUNT_TYPES[self.account_type],
                self.external_reference.translate(_TSV_ESCAPES),
                self.owner.translate(_TSV_ESCAPES),
                "{" + labels + "}",
                str(self.created_timestamp),
            )
        )
        assert row.count("\t") == len(ACCOUNTS_COLUMNS) - 1 and "\n" not in row
        return row


_HELD = (
    f"SELECT DISTINCT account_id FROM {ACCOUNTS_TABLE} WHERE account_id IN "
    "(SELECT toUInt128(arrayJoin(splitByChar(',', {ids:String}))))"
)


def held_accounts(client: ClickHouseClient, account_ids: Sequence[int]) -> set[int]:
    """The ids among `account_ids` the table holds (one query; the ids travel as one bound string of
    decimal integers)."""
    assert 0 < len(account_ids) <= ACCOUNTS_BATCH_MAX
    assert all(0 < account_id <= U128_MAX for account_id in account_ids)
    held = {to_int(row[0]) for row in client.query_rows(_HELD, {"ids": ",".join(map(str, account_ids))})}
    assert held <= set(account_ids)
    return held


def project_accounts(client: ClickHouseClient, accounts: Sequence[ProjectedAccount]) -> int:
    """Inserts the accounts the table does not hold yet; returns how many were inserted. Idempotent."""
    assert len(accounts) <= ACCOUNTS_BATCH_MAX
    if not accounts:
        return 0
    unique = {account.account_id: account for account in accounts}
    held = held_accounts(client, list(unique))
    rows = [account.row() for account_id, account in unique.items() if account_id not in held]
    if rows:
        client.insert_tsv(ACCOUNTS_TABLE, [name for name, _ in ACCOUNTS_COLUMNS], "\n".join(rows) + "\n")
    assert len(rows) <= len(unique)
    return len(rows)


def account_labels_conditions(labels: Sequence[tuple[str, str]], parameters: dict[str, int | str]) -> list[str]:
    """WHERE conditions on `accounts.labels`, one pair each (every pair must match), constant text only:
    the keys and values go into `parameters` as account_label_key_N / account_label_value_N."""
    assert len(labels) <= ACCOUNT_LABELS_FILTER_MAX
    conditions: list[str] = []
    for index, (key, value) in enumerate(labels):
        assert index < ACCOUNT_LABELS_FILTER_MAX
        parameters[f"account_label_key_{index}"] = key
        parameters[f"account_label_value_{index}"] = value
        conditions.append(f"labels[{{account_label_key_{index}:String}}] = {{account_label_value_{index}:String}}")
        if not value:  # A missing key reads as '': only a present key may match an empty value.
            conditions.append(f"mapContains(labels, {{account_label_key_{index}:String}})")
    return conditions
