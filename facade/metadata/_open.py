"""Opens the metadata store the settings name: SQLite per façade (the default) or shared PostgreSQL."""

from __future__ import annotations

from facade.engine.embedded import EmbeddedEngine
from facade.engine.protocol import Engine
from facade.metadata._journal import JournalMetadataStore
from facade.metadata._postgres import PostgresMetadataStore, describe_dsn
from facade.metadata._protocol import MetadataStore
from facade.metadata_store import MetadataStore as SqliteMetadataStore
from facade.settings import ApiSettings

__all__ = ["metadata_location", "open_metadata_store"]


async def open_metadata_store(settings: ApiSettings, engine: Engine | None = None) -> MetadataStore:
    """`engine`: the engine the store serves. On the embedded engine with the per-façade backend,
    transaction metadata lives in the engine's journal (JournalMetadataStore), accounts in SQLite."""
    if settings.metadata_backend == "postgres":
        return await PostgresMetadataStore.open(
            settings.metadata_dsn.get_secret_value(), pool_size=settings.metadata_pool_size
        )
    if isinstance(engine, EmbeddedEngine):
        return await JournalMetadataStore.open(settings.metadata_db, engine)
    return await SqliteMetadataStore.open(settings.metadata_db)


def metadata_location(settings: ApiSettings) -> str:
    """Where the store is, for messages (never a password)."""
    if settings.metadata_backend == "postgres":
        return describe_dsn(settings.metadata_dsn.get_secret_value())
    return str(settings.metadata_db)
