"""The ledger engine: a protocol (TigerBeetle's operations) with two backends.

- `embedded`: TigerBeetle's semantics in-process, durable through a checksummed, fsynced journal.
- `tigerbeetle`: a thin adapter over the official client, for production clusters.
"""

from __future__ import annotations

from facade.engine.protocol import Engine, EngineUnavailableError
from facade.settings import EngineSettings

__all__ = ["Engine", "EngineUnavailableError", "open_engine"]


async def open_engine(settings: EngineSettings) -> Engine:
    if settings.backend == "tigerbeetle":
        from facade.engine.tigerbeetle import TigerBeetleEngine

        return TigerBeetleEngine(
            cluster_id=settings.tb_cluster_id,
            addresses=settings.tb_addresses,
            limit_request_bytes=settings.tb_limit_request_bytes,
        )
    from facade.engine.embedded import EmbeddedEngine

    return await EmbeddedEngine.open(
        settings.data_dir, mirror_dir=settings.mirror_dir, append_pipeline=settings.append_pipeline
    )
