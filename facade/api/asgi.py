"""Runs an ASGI app (the JSON gateway, the ops endpoints) with uvicorn inside the service's own event
loop, next to the grpc.aio server: one process, one loop, one shutdown sequence.

uvicorn's `Server.serve` installs its own SIGINT/SIGTERM handlers; the service owns signals (it drains
gRPC, the write queue and background tasks in order), so this subclass leaves them alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator

import uvicorn

STARTUP_TIMEOUT_SECONDS = 10.0
SHUTDOWN_TIMEOUT_SECONDS = 5


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class AsgiServer:
    """A started uvicorn server; `port` is the bound port (useful with port 0)."""

    def __init__(self, server: uvicorn.Server, task: asyncio.Task[None], port: int) -> None:
        self._server = server
        self._task = task
        self.port = port

    @classmethod
    async def start(cls, app: object, host: str, port: int, name: str) -> AsgiServer:
        config = uvicorn.Config(
            app,  # type: ignore[arg-type]  # Any ASGI application.
            host=host,
            port=port,
            log_config=None,  # The service's structured logging, not uvicorn's.
            access_log=False,  # Requests are logged and measured by the app itself.
            lifespan="off",
            timeout_graceful_shutdown=SHUTDOWN_TIMEOUT_SECONDS,
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve(), name=name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_TIMEOUT_SECONDS
        while not server.started:
            if task.done():
                task.result()  # Raises the startup error (e.g. the port is taken).
                raise RuntimeError(f"{name}: uvicorn exited during startup")
            if loop.time() > deadline:
                server.should_exit = True
                raise TimeoutError(f"{name}: not listening after {STARTUP_TIMEOUT_SECONDS} s")
            await asyncio.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        return cls(server, task, int(bound))

    async def stop(self) -> None:
        self._server.should_exit = True
        await self._task
