"""No SQL from strings: arbitrary Unicode and integers through every read-model query over real chDB.

Transfers are projected with hostile correlation ids (quotes, backslashes, a literal `\\n` next to a
real newline, NUL, tabs, ClickHouse placeholder syntax, emoji); then hypothesis feeds arbitrary text
(lone surrogates included) and arbitrary u64/u128 values through the correlation lookup, statement,
balance as of, daily totals and reconciliation. Every answer must be clean (no exception) and exact:
a correlation id finds precisely the transfers stored under that very string, never a look-alike.
"""

from __future__ import annotations

from pathlib import Path

import clickhouse_connect.driver.binding as clickhouse_binding
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facade.changes.into_read_model import change_capture
from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import ChangeEventsFilter, Transfer
from projections import queries
from projections.client import ChdbClient, ParameterError, bind_parameters, escaped_text
from projections.projector import Projector
from projections.reconcile import reconcile
from tests.projections.conftest import CODE, LEDGER, Metadata, Workload, drain

HOSTILE_IDS = (
    "a\nb",
    "a\\nb",
    "q'\\",
    "q\\'",
    "'; DROP TABLE transactions; --",
    "tab\there",
    "nul\0byte",
    "\\",
    "\\\\",
    "\\N",
    "{correlation_id:String}",
    '`back`tick"',
    "cr\rlf\r\n",
    "ünïcode 😀 \u202e",
)
"""Stored correlation ids: pairs that an unescaped parameter would confuse (`a\\nb` read as `a<newline>b`)."""
TEXT_EXAMPLES_MAX = 300
NUMBER_EXAMPLES_MAX = 60
U64_MAX = (1 << 64) - 1
U128_MAX = (1 << 128) - 1

# Every code point, lone surrogates (category Cs) drawn often on purpose: a str may hold them even though
# no UTF-8 text (so no stored id) can, and hypothesis' default alphabet almost never does.
any_text = st.text(st.one_of(st.characters(exclude_categories=()), st.integers(0xD800, 0xDFFF).map(chr)), max_size=40)
near_stored = st.sampled_from(HOSTILE_IDS).flatmap(
    lambda stored: st.sampled_from(
        [stored, stored + "\\", "\\" + stored, stored.replace("\\", "\\\\"), stored.replace("\n", "\\n"), stored[:-1]]
    )
)


async def _project_hostile(
    tmp_path: Path, engine: EmbeddedEngine, client: ChdbClient, metadata: Metadata
) -> dict[str, set[int]]:
    """One credit per hostile id (two for the first), projected; the transfer ids stored under each id."""
    workload = Workload(engine, metadata)
    expected: dict[str, set[int]] = {}
    for correlation_id in (*HOSTILE_IDS, HOSTILE_IDS[0]):
        transfer_id = workload._id()
        workload._describe(transfer_id, "transfer", correlation_id)
        await workload.post(
            [Transfer(id=transfer_id, debit_account_id=1, credit_account_id=2, amount=10, ledger=LEDGER, code=CODE)]
        )
        expected.setdefault(correlation_id, set()).add(transfer_id)
    await drain(change_capture(engine, Projector(client), tmp_path / "cp.json", metadata))
    return expected


def test_parameters_are_escaped_once_for_both_backends() -> None:
    """The server path sends exactly chDB's text: clickhouse-connect passes a BoundValue through."""
    bound = bind_parameters({"s": "a\\nb'\t\n", "n": U128_MAX})
    assert bound["s"].text == "a\\\\nb\\'\\t\\n" and bound["n"].text == str(U128_MAX)
    _, sent = clickhouse_binding.bind_query("SELECT {s:String}, {n:UInt128}", bound)
    assert sent == {"param_s": "a\\\\nb\\'\\t\\n", "param_n": str(U128_MAX)}
    with pytest.raises(ParameterError):
        escaped_text("lone \ud800 surrogate")
    with pytest.raises(ParameterError):
        bind_parameters({"n": -1})


async def test_every_query_answers_exactly_for_arbitrary_input(
    tmp_path: Path, engine: EmbeddedEngine, client: ChdbClient, metadata: Metadata
) -> None:
    expected = await _project_hostile(tmp_path, engine, client, metadata)
    events = await engine.get_change_events(ChangeEventsFilter())
    end = events[-1].timestamp + 1
    tried = {"text": 0, "numbers": 0, "surrogates": 0}

    for correlation_id, transfer_ids in expected.items():
        found = queries.transactions_by_correlation_id(client, correlation_id)
        assert {row.transfer_id for row in found} == transfer_ids, correlation_id
        assert all(row.correlation_id == correlation_id for row in found)

    @settings(
        max_examples=TEXT_EXAMPLES_MAX,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(correlation_id=st.one_of(any_text, near_stored).filter(bool))
    def correlation_lookups(correlation_id: str) -> None:
        tried["text"] += 1
        tried["surrogates"] += any(0xD800 <= ord(c) <= 0xDFFF for c in correlation_id)
        found = queries.transactions_by_correlation_id(client, correlation_id)
        assert {row.transfer_id for row in found} == expected.get(correlation_id, set())
        assert all(row.correlation_id == correlation_id for row in found)

    correlation_lookups()

    @settings(max_examples=NUMBER_EXAMPLES_MAX, deadline=None, database=None)
    @given(
        account_id=st.one_of(st.integers(0, U128_MAX), st.sampled_from([1, 2, 3])),
        timestamp_a=st.one_of(st.integers(0, U64_MAX), st.integers(0, end)),
        timestamp_b=st.one_of(st.integers(0, U64_MAX), st.integers(0, end)),
    )
    def numeric_queries(account_id: int, timestamp_a: int, timestamp_b: int) -> None:
        tried["numbers"] += 1
        low, high = sorted((timestamp_a, timestamp_b))
        statement = queries.statement(client, account_id, low, high)
        assert all(low <= line.engine_timestamp < high for line in statement.lines)
        balance = queries.balance_as_of(client, account_id, high)
        if account_id not in (1, 2):
            assert statement.lines == [] and balance == queries.ZERO_BALANCE
        totals = queries.daily_totals(client, low, high)
        assert sum(t.transactions for t in totals) == sum(1 for e in events if low <= e.timestamp < high)

    numeric_queries()

    print(f"\nread-model queries: {tried}")
    report = await reconcile(engine, client)
    assert report.ok and report.drifts == [], report
    assert tried["text"] >= TEXT_EXAMPLES_MAX // 2 and tried["numbers"] >= NUMBER_EXAMPLES_MAX // 2
    assert tried["surrogates"] > 0, tried
