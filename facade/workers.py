"""`ledger serve --workers N`: N server processes on one gRPC port (SO_REUSEPORT), for the TigerBeetle
backend. One Python process is bound by its interpreter; the kernel spreads new connections over the
workers' sockets, and each worker is a complete façade over the shared cluster and the shared metadata
store, so a retry through any worker sees every worker's outcome.

Refused (a clear message, exit status 2) unless the engine is TigerBeetle (the embedded engine is
single-writer: one process owns its journal), the metadata store is shared (PostgreSQL: per-worker
SQLite files would not see each other's idempotency records) and the port is fixed (port 0 would give
each worker its own port).

Worker 0 is the façade as configured (JSON gateway, ops port, read model, change capture); it starts
first and writes the instance marker, and the others start once its port answers. Workers 1..N-1 serve
gRPC only (and Kafka ingestion, which any number of façades may run): the HTTP ports and chDB cannot
be shared, and change capture is one publisher per cluster. The supervisor forwards SIGINT/SIGTERM to
every worker; when one worker exits, it stops the others and exits with that worker's status.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

from facade.settings import Settings

__all__ = ["WORKERS_MAX", "serve_workers", "workers_refusal"]

WORKERS_MAX = 64
"""Worker processes of one `ledger serve`: each holds a metadata pool and an engine client."""
FIRST_WORKER_WAIT_SECONDS = 60.0
"""How long the first worker may take to recover and bind before the supervisor gives up."""
STOP_WAIT_SECONDS = 30.0
PORT_PROBE_SECONDS = 0.1


def workers_refusal(settings: Settings, workers: int) -> str:
    """Why `workers` processes cannot serve with these settings; "" when they can."""
    if not 1 <= workers <= WORKERS_MAX:
        return f"--workers must be 1..{WORKERS_MAX}"
    if workers == 1:
        return ""
    if settings.engine.backend != "tigerbeetle":
        return (
            f"--workers {workers} needs the TigerBeetle backend (LEDGER_ENGINE__BACKEND=tigerbeetle): the embedded "
            "engine is single-writer, one process owns its journal"
        )
    if settings.api.metadata_backend != "postgres":
        return (
            f"--workers {workers} needs the shared metadata store (LEDGER_API__METADATA_BACKEND=postgres and "
            "LEDGER_API__METADATA_DSN): with a SQLite file per worker a retry through another worker would not "
            "see the first one's idempotency records"
        )
    if settings.api.port == 0:
        return f"--workers {workers} needs a fixed LEDGER_API__PORT: the workers share one port"
    return ""


def _worker_command(index: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "facade.cli", "serve", "--worker-of", f"{index}/{workers}"]


def _worker_env(index: int) -> dict[str, str]:
    env = os.environ | {"LEDGER_API__GRPC_REUSE_PORT": "true"}
    if index > 0:  # gRPC only: the HTTP ports, chDB and change capture belong to worker 0 (docstring).
        env |= {
            "LEDGER_API__HTTP_PORT": "-1",
            "LEDGER_OBSERVABILITY__METRICS_PORT": "-1",
            "LEDGER_CLICKHOUSE__SERVE_HISTORY": "false",
            "LEDGER_KAFKA__CHANGE_CAPTURE_ENABLED": "false",
        }
    return env


def _port_answers(host: str, port: int) -> bool:
    target = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # A wildcard bind: probed on loopback.
    with contextlib.suppress(OSError), socket.create_connection((target, port), timeout=PORT_PROBE_SECONDS):
        return True
    return False


def serve_workers(settings: Settings, workers: int) -> int:
    """Runs `workers` worker processes until a signal or until one exits; returns the exit status."""
    assert not workers_refusal(settings, workers) and workers > 1
    processes: list[subprocess.Popen[bytes]] = []
    signalled = False
    """Stopped by SIGINT/SIGTERM (a clean exit), rather than by a worker's exit (a failure)."""

    def forward(signal_number: int) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal_number)

    def on_signal(signal_number: int, _frame: FrameType | None) -> None:
        nonlocal signalled
        signalled = True
        forward(signal_number)

    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, on_signal)
    processes.append(subprocess.Popen(_worker_command(0, workers), env=_worker_env(0)))
    deadline = time.monotonic() + FIRST_WORKER_WAIT_SECONDS
    while not _port_answers(settings.api.host, settings.api.port):
        if processes[0].poll() is not None or signalled or time.monotonic() > deadline:
            forward(signal.SIGTERM)
            _reap(processes)
            return 0 if signalled else _exit_status(processes[0].returncode) or 1
        time.sleep(PORT_PROBE_SECONDS)
    processes.extend(subprocess.Popen(_worker_command(i, workers), env=_worker_env(i)) for i in range(1, workers))
    while all(process.poll() is None for process in processes):
        time.sleep(PORT_PROBE_SECONDS)
    exited = next(process for process in processes if process.returncode is not None)
    forward(signal.SIGTERM)  # No half-sized service behind the port: the others stop too.
    _reap(processes)
    assert all(process.returncode is not None for process in processes)
    return 0 if signalled else _exit_status(exited.returncode) or 1


def _reap(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        try:
            process.wait(STOP_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _exit_status(returncode: int | None) -> int:
    """A worker's status as a shell reports it: 128 + N for a worker killed by signal N."""
    assert returncode is not None
    return 128 - returncode if returncode < 0 else returncode
