"""The compiled load generator (scripts/loadgen, Go) the benchmark scripts drive their clients with.

Why compiled: on this project's two shared cores the benchmark's Python clients cost the server under test
CPU it then waits for (bench_overload.py's four Python generators ~60% of one core, lagging 20-30 ms at
p99 on their own), and so measured themselves as much as the server. The generator speaks the same
requests (encoded with protowire, no generated code) at a fraction of the CPU.

Protocol: the generator connects, prints "ready", waits for a line on stdin (so several generators and
the script's own CPU accounting start together), runs, prints one line of JSON and keeps its connections
until its stdin closes (`started` closes it on leaving): the script measures the servers' processes first
(a PostgreSQL backend's CPU leaves /proc with the backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["LOADGEN_SOURCE", "Generator", "build_loadgen", "started"]

LOADGEN_SOURCE = Path(__file__).resolve().parent.parent / "scripts" / "loadgen"
LOADGEN_CACHE = Path.home() / ".cache" / "ledger-service"
BUILD_SECONDS_MAX = 600.0
"""The first build downloads grpc-go and pgx through the Go module proxy."""
READY_SECONDS_MAX = 120.0
"""Bound on a generator's start (its connections) and, beyond its run, on its result."""
EXIT_SECONDS_MAX = 10.0
"""A generator still running this long after its stdin closed is killed."""
RESULT_BYTES_MAX = 1 << 30
"""The result line's bound (a latency per call: ~20 bytes each)."""
SOURCE_FILES = ("go.mod", "go.sum", "main.go", "closed.go")


def build_loadgen() -> Path | None:
    """The generator's binary, built once per version of its source (~/.cache); None without `go`."""
    go = shutil.which("go")
    if go is None:
        return None
    digest = hashlib.sha256()
    for name in SOURCE_FILES:
        digest.update((LOADGEN_SOURCE / name).read_bytes())
    binary = LOADGEN_CACHE / f"loadgen-{digest.hexdigest()[:16]}"
    if not binary.exists():
        LOADGEN_CACHE.mkdir(parents=True, exist_ok=True)
        partial = binary.with_suffix(".partial")
        subprocess.run(
            [go, "build", "-trimpath", "-o", str(partial), "."],
            cwd=LOADGEN_SOURCE,
            check=True,
            timeout=BUILD_SECONDS_MAX,
            env=os.environ | {"GOFLAGS": "-mod=readonly -buildvcs=false"},
        )
        partial.replace(binary)
    return binary


class Generator:
    """One running generator process, connected and waiting for the start."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    async def start(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(b"go\n")
        await self._process.stdin.drain()

    async def result(self, timeout_seconds: float) -> Any:
        """The generator's JSON document (one line; it then waits for its stdin to close)."""
        assert self._process.stdout is not None
        output = await asyncio.wait_for(self._process.stdout.readline(), timeout_seconds + READY_SECONDS_MAX)
        assert output, f"load generator exited with {await self._process.wait()} and no result"
        return json.loads(output)


@contextlib.asynccontextmanager
async def started(binary: Path, commands: Sequence[Sequence[str]]) -> AsyncIterator[list[Generator]]:
    """Generator processes running `commands` (flags after the binary), each connected and ready."""
    processes: list[asyncio.subprocess.Process] = []
    try:
        for flags in commands:
            processes.append(
                await asyncio.create_subprocess_exec(
                    str(binary), *flags, stdin=subprocess.PIPE, stdout=subprocess.PIPE, limit=RESULT_BYTES_MAX
                )
            )
        for process in processes:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), READY_SECONDS_MAX)
            assert line == b"ready\n", f"load generator did not start: {line!r}"
        yield [Generator(process) for process in processes]
    finally:
        for process in processes:
            assert process.stdin is not None
            process.stdin.close()  # The generator's signal to close its connections and exit.
        for process in processes:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), EXIT_SECONDS_MAX)
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await process.wait()
