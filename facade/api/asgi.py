"""Runs an ASGI app (the JSON gateway, the ops endpoints) with uvicorn inside the service's own event
loop, next to the grpc.aio server: one process, one loop, one shutdown sequence.

With `TlsFiles` the server speaks TLS only (a plaintext request fails the handshake), and with a client
CA it requires a client certificate from that CA (CERT_REQUIRED), exactly as the gRPC port does.

uvicorn's `Server.serve` installs its own SIGINT/SIGTERM handlers; the service owns signals (it drains
gRPC, the write queue and background tasks in order), so this subclass leaves them alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

STARTUP_TIMEOUT_SECONDS = 10.0
SHUTDOWN_TIMEOUT_SECONDS = 5


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    """Set: a client certificate signed by this CA is required (mTLS)."""


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
    async def start(cls, app: object, host: str, port: int, name: str, *, tls: TlsFiles | None = None) -> AsgiServer:
        tls_options: dict[str, object] = {}
        if tls is not None:
            tls_options = {"ssl_certfile": str(tls.cert_file), "ssl_keyfile": str(tls.key_file)}
            if tls.client_ca_file is not None:
                tls_options |= {"ssl_ca_certs": str(tls.client_ca_file), "ssl_cert_reqs": ssl.CERT_REQUIRED}
        config = uvicorn.Config(
            app,  # type: ignore[arg-type]  # Any ASGI application.
            host=host,
            port=port,
            log_config=None,  # The service's structured logging, not uvicorn's.
            access_log=False,  # Requests are logged and measured by the app itself.
            lifespan="off",
            timeout_graceful_shutdown=SHUTDOWN_TIMEOUT_SECONDS,
            **tls_options,  # type: ignore[arg-type]  # Typed per option above.
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
