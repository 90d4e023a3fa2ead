"""Fixtures for the engine conformance suite: the same tests on every backend.

`engine` runs each test on the embedded engine (fresh data directory) and, when `TB_ADDRESSES` is set,
on a real TigerBeetle cluster (`TB_CLUSTER_ID`, default 0). A real cluster cannot be reset between
tests, so tests never use fixed ids: `Ids` maps the small symbolic ids of the tables onto fresh
random u128 ids, and ledgers/codes that queries filter on are random too.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from facade.engine.embedded import EmbeddedEngine
from facade.engine.protocol import Engine
from facade.engine.types import U128_MAX, Account, Transfer

TB_SKIP_REASON = (
    "no TigerBeetle cluster: start one (`tigerbeetle format --cluster=0 --replica=0 --replica-count=1 "
    "--development 0_0.tigerbeetle && tigerbeetle start --addresses=3000 --development 0_0.tigerbeetle`) "
    "and run with TB_ADDRESSES=3000"
)

SYMBOLIC_BITS = 16

BACKENDS = [
    "embedded",
    # The embedded engine with its append pipeline on (engine.append_pipeline), every batch's header step on
    # the journal's header thread: the same semantics, whatever the write path.
    "embedded-pipelined",
    pytest.param("tigerbeetle", marks=pytest.mark.skipif(not os.environ.get("TB_ADDRESSES"), reason=TB_SKIP_REASON)),
]


@pytest.fixture(params=BACKENDS)
async def engine(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Engine]:
    backend: Engine
    if request.param == "embedded":
        backend = await EmbeddedEngine.open(tmp_path / "engine")
    elif request.param == "embedded-pipelined":
        backend = await EmbeddedEngine.open(tmp_path / "engine", append_pipeline=True)
        monkeypatch.setattr(backend, "_work_waiting", lambda: True)  # Overlap even a lone batch.
    else:
        from facade.engine.tigerbeetle import TigerBeetleEngine

        backend = TigerBeetleEngine(
            cluster_id=int(os.environ.get("TB_CLUSTER_ID", "0")), addresses=os.environ["TB_ADDRESSES"]
        )
    try:
        yield backend
    finally:
        await backend.close()


def embedded_only(engine: Engine, reason: str) -> None:
    if engine.name != "embedded":
        pytest.skip(f"embedded engine only: {reason}")


class Ids:
    """Symbolic ids (small ints in test tables) → fresh random ids; 0 and 2^128-1 stay as they are,
    because they are the reserved values under test."""

    def __init__(self) -> None:
        self.base = random.getrandbits(111) << SYMBOLIC_BITS

    def __call__(self, symbolic: int) -> int:
        if symbolic in (0, U128_MAX):
            return symbolic
        assert 0 < symbolic < 1 << SYMBOLIC_BITS, symbolic
        return self.base + symbolic

    def account(self, a: Account) -> Account:
        return replace(a, id=self(a.id))

    def transfer(self, t: Transfer) -> Transfer:
        return replace(
            t,
            id=self(t.id),
            debit_account_id=self(t.debit_account_id),
            credit_account_id=self(t.credit_account_id),
            pending_id=self(t.pending_id),
        )


@pytest.fixture
def ids() -> Ids:
    return Ids()
