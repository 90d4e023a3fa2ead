"""Queries by metadata on chDB (projections.metadata_queries): the label index agrees with the labels of
`transactions` (also for a read model created before the index: backfilled once), hostile label text is
bound, never SQL, and pages are complete."""

from __future__ import annotations

from pathlib import Path

import pytest

from facade.engine.embedded import EmbeddedEngine
from projections import metadata_queries as mq
from projections.client import ChdbClient
from projections.schema import LABELS_TABLE, create_tables
from tests.projections.conftest import Metadata, Workload
from tests.projections.test_queries import project

ROUNDS = 3


def every_page(client: ChdbClient, query: mq.TransactionFilter, size: int) -> list[int]:
    found, token = [], ""
    while True:
        page = mq.list_transactions(client, query, page_size=size, page_token=token)
        found += [row.transfer_id for row in page.transactions]
        token = page.next_page_token
        if not token:
            return found


async def test_label_index_matches_the_labels_and_is_backfilled(
    tmp_path: Path, engine: EmbeddedEngine, client: ChdbClient, metadata: Metadata, workload: Workload
) -> None:
    for number in range(ROUNDS):
        await workload.round(number)
    await project(tmp_path, engine, client, metadata)
    described = sorted(metadata.by_transfer)
    order = str(described[4])
    # The workload's labels: {"order": <transfer id>, "we'ird\tkey": "va\\lue"} (quotes, tab, backslash).
    hostile = mq.TransactionFilter(labels=(("we'ird\tkey", "va\\lue"),))
    everything = every_page(client, hostile, 1000)
    assert everything and every_page(client, hostile, 2) == everything
    by_order = mq.TransactionFilter(labels=tuple(sorted({"order": order, "we'ird\tkey": "va\\lue"}.items())))
    assert every_page(client, by_order, 10) == [int(order)]
    assert every_page(client, mq.TransactionFilter(labels=(("order", "' OR 1=1 --"),)), 10) == []

    # A read model from before the label index: the index is rebuilt from `transactions` once.
    client.command(f"DROP TABLE {LABELS_TABLE}_feed")
    client.command(f"DROP TABLE {LABELS_TABLE}")
    create_tables(client)
    assert every_page(client, hostile, 3) == everything
    assert every_page(client, by_order, 10) == [int(order)]
    create_tables(client)  # Once: a second start does not index the changes again.
    count = client.query_rows(f"SELECT count() FROM {LABELS_TABLE}")[0][0]
    assert int(str(count)) == 2 * len(everything)


def test_a_page_token_is_bound_to_its_filter_and_listing(client: ChdbClient) -> None:
    create_tables(client)
    query = mq.TransactionFilter(source="pos")
    token = mq._token("transactions", query, 42)
    assert mq.list_transactions(client, query, page_token=token).transactions == []
    for bad_query, bad_token in (
        (mq.TransactionFilter(source="web"), token),
        (query, mq._token("accounts", query, 42)),
        (query, token[:-2]),
        (query, "x" * (mq.PAGE_TOKEN_LENGTH_MAX + 1)),
    ):
        with pytest.raises(mq.InvalidPageTokenError):
            mq.list_transactions(client, bad_query, page_token=bad_token)
