"""projections.accounts on chDB: accounts projected once whatever the repeats, every attribute (labels with
quotes, backslashes, tabs, newlines and map syntax) read back exactly, the held-ids check, and ListAccounts
by account labels with the ownership rule and paging."""

from __future__ import annotations

from projections import metadata_queries as mq
from projections.accounts import ProjectedAccount, held_accounts, project_accounts
from projections.client import ChdbClient
from projections.queries import to_labels
from projections.schema import create_tables

AWKWARD = "it's \"q\" \\ back\\\\slash\ttab\nline {'k':'v'}"


def account(account_id: int, client: str = "client-a", **labels: str) -> ProjectedAccount:
    return ProjectedAccount(
        account_id=account_id,
        client_id=client,
        currency="USD",
        account_type=1 + account_id % 2,
        external_reference=f"ref\t{account_id}",
        owner=AWKWARD,
        labels=labels,
        created_timestamp=1_700_000_000_000_000_000 + account_id,
    )


def test_accounts_are_projected_once_and_read_back_exactly(client: ChdbClient) -> None:
    create_tables(client)
    accounts = [account(7, note=AWKWARD, tier="gold"), account(2**128 - 1, tier="gold"), account(5, "client-b")]
    assert project_accounts(client, accounts) == 3
    assert project_accounts(client, [*accounts, accounts[0]]) == 0  # Repeats (and a repeat within) insert nothing.
    assert held_accounts(client, [7, 8, 2**128 - 1]) == {7, 2**128 - 1}
    rows = client.query_rows(
        "SELECT account_id, client_id, account_type, external_reference, owner, labels, created_timestamp, "
        "toUnixTimestamp64Nano(created_time) FROM accounts ORDER BY account_id"
    )
    assert len(rows) == 3
    seven = rows[1]
    assert seven[:5] == [7, "client-a", "OVERDRAFT_ALLOWED", "ref\t7", AWKWARD]
    assert to_labels(seven[5]) == {"note": AWKWARD, "tier": "gold"}
    assert seven[6] == seven[7] == 1_700_000_000_000_000_007


def test_list_accounts_by_account_labels(client: ChdbClient) -> None:
    create_tables(client)
    project_accounts(client, [account(n, tier="gold" if n % 2 else "silver") for n in range(1, 21)])
    project_accounts(client, [account(101, "client-b", tier="gold", note=AWKWARD)])
    admin = mq.TransactionFilter(account_labels=(("tier", "gold"),))
    found = mq.list_accounts(client, admin, page_size=100)
    assert [a.account_id for a in found.accounts] == [*range(1, 21, 2), 101]
    assert found.accounts[-1].labels == {"tier": "gold", "note": AWKWARD} and found.accounts[0].entries == 0
    own = mq.TransactionFilter(account_labels=(("tier", "gold"),), client_id="client-a")
    assert [a.account_id for a in mq.list_accounts(client, own, page_size=100).accounts] == list(range(1, 21, 2))
    quoted = mq.TransactionFilter(account_labels=(("note", AWKWARD), ("tier", "gold")))
    assert [a.account_id for a in mq.list_accounts(client, quoted).accounts] == [101]
    paged, token = [], ""
    for _ in range(20):
        page = mq.list_accounts(client, admin, page_size=3, page_token=token)
        paged += [a.account_id for a in page.accounts]
        token = page.next_page_token
        if not token:
            break
    assert paged == [a.account_id for a in found.accounts]
