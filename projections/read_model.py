"""The read model inside the service: the ClickHouse client behind ledger.v1.History, and (by default)
the projector that feeds it from the engine's change feed.

One client, one thread: every ClickHouse call (projector inserts and History queries alike) runs on a
single-thread executor. chDB sessions are not safe to share across threads, and the event loop must
never block on a query; one thread gives both, and ClickHouse does the parallel work inside a query.

Where the projector runs:
- embedded default (chDB): supervised by the service (`clickhouse.project_in_service`), because chDB
  opens its directory in one process only; the service is the read model's only writer. With
  `clickhouse.projector_process` (the default) chDB, the projector and the queries live in a child
  process (projections._process) so projection never competes with writes for the interpreter;
  otherwise on this thread in the service's own process;
- ClickHouse server: in its own process (`ledger project`), with `project_in_service=false` on every
  façade, which then only query.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from facade.background import single_thread_executor
from facade.settings import ClickHouseSettings
from projections._process import ProjectionProcess, RemoteClient, RemoteProjector
from projections.client import ClickHouseClient, open_client
from projections.projector import ProjectionSink, Projector
from projections.queries import projected_timestamp

T = TypeVar("T")


class ReadModel:
    def __init__(self, client: ClickHouseClient, executor: ThreadPoolExecutor) -> None:
        self._client = client
        self._executor = executor
        self.projector: ProjectionSink | None = None
        self.process: ProjectionProcess | None = None
        """The child that owns chDB (clickhouse.projector_process), else None."""

    @classmethod
    async def open(cls, settings: ClickHouseSettings) -> ReadModel:
        """The read model, with its projector when this process projects (`project_in_service`).
        Change capture into `projector` is the composition root's to start (facade.changes.into_read_model):
        build it with `on_client_thread`, since resuming asks ClickHouse where it stands."""
        executor = single_thread_executor("clickhouse")
        loop = asyncio.get_running_loop()
        if settings.backend == "chdb" and settings.projector_process:
            process = ProjectionProcess(settings)
            await loop.run_in_executor(executor, process.start)
            model = cls(RemoteClient(process, settings.database), executor)
            model.process = process
            if settings.project_in_service:
                model.projector = RemoteProjector(process, executor)
            return model
        client = await loop.run_in_executor(executor, open_client, settings)
        model = cls(client, executor)
        if settings.project_in_service:
            # Projector() creates the tables and reads their high-water marks: ClickHouse calls.
            model.projector = await loop.run_in_executor(executor, lambda: Projector(client, executor=executor))
        return model

    async def on_client_thread(self, function: Callable[[], T]) -> T:
        """Runs `function()` on the client's thread (anything that calls the projector synchronously)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)

    async def query(self, function: Callable[[ClickHouseClient], T]) -> T:
        """Runs `function(client)` on the client's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, self._client)

    async def query_in_model(self, function: Callable[..., T], *arguments: Any) -> T:
        """function(client, *arguments) where the read model is: in its own process when it has one
        (work that reads many rows stays off the service's interpreter; `function` module-level,
        arguments and result picklable), else on the client's thread like `query`."""
        loop = asyncio.get_running_loop()
        if isinstance(self._client, RemoteClient):
            remote = self._client
            return await loop.run_in_executor(self._executor, lambda: remote.call(function, *arguments))
        client = self._client
        return await loop.run_in_executor(self._executor, lambda: function(client, *arguments))

    async def projected_until(self) -> int:
        return await self.query(projected_timestamp)

    async def ping(self) -> None:
        """Raises when ClickHouse does not answer (readiness)."""
        await self.query(lambda client: client.query_rows("SELECT 1"))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.get_running_loop().run_in_executor(self._executor, self._client.close)
        self._executor.shutdown(wait=True)
