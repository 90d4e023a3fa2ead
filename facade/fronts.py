"""Front processes (`api.front_processes` = N > 0): N processes serve the gRPC port in front of the
engine's process, which runs everything else. `ledger serve` runs 2 on the embedded engine when the
setting is not given (facade.settings.settings_served, SERVE_FRONT_PROCESSES_DEFAULT says why).

Why: one event loop ran grpc.aio (its accept path, the HTTP/2 framing), the interceptors, the
operations, the group commit and change capture; single-transaction writes saturated that loop (~1
core) while the host's other core idled, and under overload most of a caller's wait was grpc.aio's accept
path on it. A front runs the gRPC edge (TLS, authentication, observability, the request guard, health,
reflection: facade.api.edge over facade.api.forward's handlers) and forwards each call as one small frame
to the engine's process (facade.api.relay), which runs the same servicer and operation as before and
answers with the response's bytes or the LedgerError: the answers are the single-process service's.

The engine's process stays the only writer of the journal and holds all ledger state; a front holds
none, so a dead front loses nothing acknowledged. Supervision rule: a front that exits is restarted
(after FRONT_RESTART_DELAY_SECONDS: its callers reconnect to the others meanwhile, the kernel spreads new
connections over the fronts still listening). A front that dies FRONT_START_FAILURES_MAX times in a row
without ever serving is a configuration fault (a bad TLS file, a port another user holds) that restarts
cannot mend: the service stops (`gave_up`), rather than stay up unready forever.

The engine's process does not serve the public gRPC port itself: the kernel would give it a share of the
connections and their calls would load the very loop the fronts relieve. It holds the port number,
bound without listening (SO_REUSEPORT, so fronts can join it; a socket that does not listen gets no
connections), so api.port=0 still picks one port for all fronts and no other service takes it meanwhile.

The relay endpoint is a Unix socket (not a network port) in a directory this process creates private
(tempfile.mkdtemp: mode 0700; the socket 0600): other users cannot reach it. A front asks for its
settings (token secrets included) over that socket as its first frame (facade.front_process): nothing
secret is written to disk, so nothing is left behind when this process is killed. `/readyz` is false
until every front serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path, PurePath

from pydantic import SecretBytes, SecretStr

from facade.api.relay import RelayServer
from facade.observability.logs import get_logger
from facade.settings import Settings

__all__ = [
    "FRONT_RESTART_DELAY_SECONDS",
    "FRONT_SERVING_WAIT_SECONDS",
    "FRONT_START_FAILURES_MAX",
    "Fronts",
    "reserve_port",
]

FRONT_RESTART_DELAY_SECONDS = 0.5
"""Between a front's exit and its restart: a crash loop costs at most two starts a second."""
FRONT_START_FAILURES_MAX = 3
"""A front that exits this many times in a row without ever serving stops the service."""
FRONT_STOP_WAIT_SECONDS = 10.0
"""How long stopping waits for a front to drain (its gRPC grace period is 5 s) before killing it."""
FRONT_SERVING_WAIT_SECONDS = 60.0
"""How long starting waits for every front to serve (one starts in ~1-2 s; a loaded host is slower)."""
FRONT_SERVING_POLL_SECONDS = 0.02
SOCKET_NAME = "engine.sock"

log = get_logger("ledger.fronts")


def _revealed(value: object) -> object:
    """JSON for what pydantic's python dump holds beyond JSON's types (secrets revealed: see _front_settings)."""
    if isinstance(value, SecretStr | SecretBytes):
        return value.get_secret_value()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"not serialisable for a front: {type(value).__name__}")


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """`host`:`port` (a free one when 0) bound with SO_REUSEPORT and not listening: the fronts' port."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    held = socket.socket(family, socket.SOCK_STREAM)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        held.bind((host.strip("[]") or "0.0.0.0", port))
    except OSError:
        held.close()
        raise
    bound = held.getsockname()[1]
    assert bound > 0 and (port == 0 or bound == port)
    return held, bound


class Fronts:
    """Spawns and supervises the front processes; they connect to `relay` on a private Unix socket."""

    def __init__(self, settings: Settings, relay: RelayServer, port: int) -> None:
        assert settings.api.front_processes > 0
        assert port > 0
        self._settings = settings
        self.relay = relay
        self._port = port
        self._count = settings.api.front_processes
        self._directory = Path(tempfile.mkdtemp(prefix="ledger-relay-"))  # Mode 0700: this user only.
        self.socket_path = str(self._directory / SOCKET_NAME)
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.gave_up = asyncio.Event()
        """Set when a front cannot start (FRONT_START_FAILURES_MAX): the service should stop."""

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes.values() if process.returncode is None]

    async def start(self) -> None:
        assert os.stat(self._directory).st_mode & 0o077 == 0
        self.relay.front_settings = self._front_settings()
        await self.relay.start(self.socket_path)
        os.chmod(self.socket_path, 0o600)
        for index in range(self._count):
            self._tasks.append(asyncio.create_task(self._supervise(index), name=f"front-{index}"))

    async def wait_serving(self) -> None:
        """Returns once every front serves, so that the service's start returns with the port serving as
        it does without fronts; RuntimeError when a front cannot start (`gave_up`) or not all serve in time."""
        for _ in range(int(FRONT_SERVING_WAIT_SECONDS / FRONT_SERVING_POLL_SECONDS)):
            if self.gave_up.is_set():
                raise RuntimeError("a front process cannot start (see its log)")
            if len(self.relay.serving) >= self._count:
                return
            await asyncio.sleep(FRONT_SERVING_POLL_SECONDS)
        serving = len(self.relay.serving)
        if serving < self._count:
            raise RuntimeError(
                f"{serving} of {self._count} front processes serving after {FRONT_SERVING_WAIT_SECONDS} s"
            )

    async def check(self) -> None:
        """Readiness: every front serves (its gRPC servers started and its relay connection open)."""
        serving = len(self.relay.serving)
        if serving < self._count:
            raise RuntimeError(f"{serving} of {self._count} front processes serving")

    def _front_settings(self) -> bytes:
        """The fronts' settings: this process's own (whether they came from the environment, a .env file or
        a caller of facade.app.start), with the port held here; as JSON in memory only, given to a front
        over the private relay socket (they hold the token secrets the fronts authenticate with)."""
        api = self._settings.api.model_copy(update={"port": self._port, "grpc_reuse_port": True, "front_processes": 0})
        front = self._settings.model_copy(update={"api": api})
        settings = json.dumps(front.model_dump(mode="python"), default=_revealed).encode()
        assert settings
        return settings

    async def _supervise(self, index: int) -> None:
        failures = 0
        while not self._stopping:
            hellos = self.relay.hellos.get(index, 0)
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "facade.front_process",
                self.socket_path,
                str(index),
            )
            self._processes[index] = process
            returncode = await process.wait()
            if self._stopping:
                return
            served = self.relay.hellos.get(index, 0) > hellos
            failures = 0 if served else failures + 1
            log.error("front process exited; restarting it", front=index, returncode=returncode, served=served)
            if failures >= FRONT_START_FAILURES_MAX:
                log.error("front process cannot start; stopping the service", front=index, failures=failures)
                self.gave_up.set()
                return
            await asyncio.sleep(FRONT_RESTART_DELAY_SECONDS)

    async def stop(self) -> None:
        """Each front drains (its gRPC grace period) while this process still answers its calls."""
        self._stopping = True
        self.relay.stopping = True
        running = [process for process in self._processes.values() if process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for process in running:
            try:
                await asyncio.wait_for(process.wait(), FRONT_STOP_WAIT_SECONDS)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.relay.close()
        shutil.rmtree(self._directory, ignore_errors=True)
