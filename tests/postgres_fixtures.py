"""pytest fixtures over the throwaway PostgreSQL of ledger_testkit.postgres (binaries, start-up, rules
there): one cluster per session, a fresh database per test, and the metadata-store backend matrix."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ledger_testkit.postgres import PostgresServer, start_postgres

METADATA_BACKENDS = ("sqlite", "postgres")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_dsn(postgres: PostgresServer) -> str:
    """A fresh database on the session's PostgreSQL."""
    return postgres.create_database()


@pytest.fixture(params=METADATA_BACKENDS)
def metadata_backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """ApiSettings fields of each metadata store backend: the same test runs on both."""
    if request.param == "sqlite":
        return {}
    dsn: str = request.getfixturevalue("postgres_dsn")
    return {"metadata_backend": "postgres", "metadata_dsn": dsn}
