"""projected_timestamp reads the newest change through the sorting key: 0 on an empty read model, the
newest engine timestamp across parts written in any order (a replayed older batch lands in a newer part)."""

from __future__ import annotations

from projections import schema
from projections.client import ChdbClient
from projections.queries import projected_timestamp

INSERT = "INSERT INTO transactions (engine_timestamp, amount) SELECT {first:UInt64} + number, 1 FROM numbers(100)"


def test_newest_change_across_parts_and_zero_when_empty(client: ChdbClient) -> None:
    schema.create_tables(client)
    assert projected_timestamp(client) == 0
    for first in (1_000, 5_000, 2_000):  # Three parts; the last one inserted is not the newest.
        client.command(INSERT, {"first": first})
    assert projected_timestamp(client) == 5_099
    assert projected_timestamp(client) == client.query_rows("SELECT max(engine_timestamp) FROM transactions")[0][0]
