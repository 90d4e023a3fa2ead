"""Façades sharing one PostgreSQL store start together on a fresh deployment (compose starts both at
once): each finds the store and the engine unmarked and writes a marker; the store takes the first,
and the other façade joins it, so both serve one instance. A façade of another name is refused. The
interleaving is forced, not hoped for: each store waits at its marker write for the other's step."""

from __future__ import annotations

import asyncio
from pathlib import Path

from facade.consistency import StartupConsistencyError, StartupReport, verify_startup
from facade.engine.embedded import EmbeddedEngine
from facade.metadata import PostgresMetadataStore

WAIT_SECONDS = 30.0


class GatedStore(PostgresMetadataStore):
    """A real store whose marker write signals `arrived`, waits for `proceed`, then signals `written`."""

    arrived: asyncio.Event | None = None
    proceed: asyncio.Event | None = None
    written: asyncio.Event | None = None

    async def put_instance_marker(self, name: str, instance_id: int) -> None:
        if self.arrived is not None:
            self.arrived.set()
        if self.proceed is not None:
            await asyncio.wait_for(self.proceed.wait(), WAIT_SECONDS)
        await super().put_instance_marker(name, instance_id)
        if self.written is not None:
            self.written.set()


async def start_together(tmp_path: Path, dsn: str, names: tuple[str, str]) -> list[StartupReport | BaseException]:
    engine = await EmbeddedEngine.open(tmp_path / "engine")
    first, late = await GatedStore.open(dsn), await GatedStore.open(dsn)
    assert isinstance(first, GatedStore) and isinstance(late, GatedStore)
    # The late façade has read both markers (absent) when it reaches its write; only then does the
    # first write its own, and the late one writes after that.
    late_at_write, first_written = asyncio.Event(), asyncio.Event()
    first.proceed, first.written = late_at_write, first_written
    late.arrived, late.proceed = late_at_write, first_written
    try:
        return await asyncio.gather(
            *(
                verify_startup(engine, store, instance_name=name, store_path=store.location, checkpoint_paths=[])
                for store, name in zip((first, late), names, strict=True)
            ),
            return_exceptions=True,
        )
    finally:
        await first.close()
        await late.close()
        await engine.close()


async def test_facades_of_one_deployment_starting_together_share_the_first_marker(
    tmp_path: Path, postgres_dsn: str
) -> None:
    reports = await start_together(tmp_path, postgres_dsn, ("deploy", "deploy"))
    assert all(isinstance(r, StartupReport) for r in reports), reports
    first, late = (r for r in reports if isinstance(r, StartupReport))
    assert first.marker == late.marker and first.created and late.created
    store = await PostgresMetadataStore.open(postgres_dsn)
    try:
        assert await store.instance_marker() == ("deploy", first.marker.instance_id)
    finally:
        await store.close()
    # Started again, each finds the engine's marker equal to the store's.
    again = await start_together(tmp_path, postgres_dsn, ("deploy", "deploy"))
    assert [r.marker for r in again if isinstance(r, StartupReport)] == [first.marker] * 2


async def test_a_facade_of_another_name_starting_together_is_refused(tmp_path: Path, postgres_dsn: str) -> None:
    reports = await start_together(tmp_path, postgres_dsn, ("deploy", "other"))
    assert isinstance(reports[0], StartupReport)
    assert isinstance(reports[1], StartupConsistencyError)
    assert "façades sharing a store use one consistency.instance_name" in str(reports[1])
