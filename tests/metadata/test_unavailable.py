"""The shared store goes away under a running façade (its server connections are terminated, as in a
PostgreSQL restart or fail-over): writes are refused UNAVAILABLE / METADATA_UNAVAILABLE, never with the
database's text and never acknowledged; once the pool has reconnected, a retry of the same key commits
exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import psycopg

from facade.api.errors import error_info
from ledger_testkit.postgres import PostgresServer
from tests.api.conftest import credit, open_api

POOL_SIZE = 2
ATTEMPTS_MAX = 50
"""Each pooled connection that was cut fails once, then is replaced; admission may also turn a retry
away (RESOURCE_EXHAUSTED) while the loop catches up with logging the failures."""
RETRY_PAUSE_SECONDS = 0.2


def describe(error: grpc.aio.AioRpcError) -> str:
    info = error_info(error)
    return f"{error.code().name} {info.reason if info else ''} {error.details()}"


async def test_a_lost_store_connection_refuses_then_the_retry_commits_once(
    tmp_path: Path, postgres: PostgresServer, postgres_dsn: str
) -> None:
    api = await open_api(tmp_path, metadata_backend="postgres", metadata_dsn=postgres_dsn, metadata_pool_size=POOL_SIZE)
    try:
        alice = await api.account("alice")
        database = psycopg.conninfo.conninfo_to_dict(postgres_dsn)["dbname"]
        with psycopg.connect(postgres.dsn(), autocommit=True) as admin:
            cursor = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s", (database,)
            )
            row = cursor.fetchone()
            assert row is not None and row[0] >= 1
        refusals: list[str] = []
        for _ in range(ATTEMPTS_MAX):
            try:
                posted = await api.post("after-cut", credit(alice, 7))
                break
            except grpc.aio.AioRpcError as error:
                refusals.append(describe(error))
                await asyncio.sleep(RETRY_PAUSE_SECONDS)
        else:
            raise AssertionError(f"still refused after {ATTEMPTS_MAX} attempts: {refusals}")
        # The cut was seen (not slept through): UNAVAILABLE with the reason, never the database's text.
        assert refusals[0].startswith("UNAVAILABLE METADATA_UNAVAILABLE metadata store unavailable (error id ")
        for refused in refusals:
            assert refused.startswith(("UNAVAILABLE METADATA_UNAVAILABLE ", "RESOURCE_EXHAUSTED ")), refused
            assert "psycopg" not in refused and "terminat" not in refused
        assert not posted.deduplicated
        assert await api.available(alice) == 7
        again = await api.post("after-cut", credit(alice, 7))
        assert again.deduplicated and again.committed_at_ns == posted.committed_at_ns
        assert await api.available(alice) == 7
    finally:
        await api.channel.close()
        await api.server.stop()
