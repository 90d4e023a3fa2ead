"""The adversarial suite's server: the real service (embedded engine, chDB read model, JSON gateway) on
loopback ports, run on its own event loop in a thread, so synchronous clients (schemathesis' requests
session, a blocking gRPC channel) can hammer it from the test thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from facade.app import RunningServer, start
from facade.auth import SCOPES_ALL, issue_token
from facade.settings import Settings
from tests.api.conftest import make_settings

START_SECONDS = 60.0
"""Most a start or stop may take before the fixture gives up (a bound, not a performance assertion)."""


@dataclass
class Served:
    settings: Settings
    server: RunningServer

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def token(self, client_id: str = "fuzz-client") -> str:
        return issue_token(self.settings.auth, client_id, SCOPES_ALL)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory: Path = tmp_path_factory.mktemp("adversarial")
    settings = make_settings(directory, history=True, http_port=0)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="adversarial-server", daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(start(settings), loop).result(START_SECONDS)
    try:
        yield Served(settings, server)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(START_SECONDS)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(START_SECONDS)
        loop.close()
