"""A fresh TigerBeetle replica for tests that cannot share a cluster, from a binary given in `TB_BINARY`.

Most TigerBeetle tests run on the cluster at `TB_ADDRESSES` (shared, never reset: they use fresh ids).
A few need a cluster of their own: Reconcile compares every account of the cluster, and evicting a
client session (by opening more sessions than a replica keeps) would disturb other users of a shared one.
Those format and start a single `--development` replica on a free loopback port, and stop it after.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

__all__ = ["needs_binary", "tigerbeetle_replica"]

LISTEN_WAIT_SECONDS = 60.0
"""Bound on waiting for a started replica to accept connections."""

needs_binary = pytest.mark.skipif(
    not os.environ.get("TB_BINARY"), reason="no TigerBeetle binary: run with TB_BINARY=/path/to/tigerbeetle"
)


async def _listening(port: int) -> None:
    deadline = asyncio.get_running_loop().time() + LISTEN_WAIT_SECONDS
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            assert asyncio.get_running_loop().time() < deadline, "the replica did not start listening"
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return


@asynccontextmanager
async def tigerbeetle_replica(directory: Path) -> AsyncIterator[str]:
    """A new single-replica `--development` cluster (id 0) on a free loopback port; yields its address."""
    binary = os.environ["TB_BINARY"]
    data_file = directory / "0_0.tigerbeetle"
    subprocess.run(
        [binary, "format", "--cluster=0", "--replica=0", "--replica-count=1", "--development", str(data_file)],
        check=True,
        capture_output=True,
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    replica = await asyncio.create_subprocess_exec(
        binary, "start", f"--addresses=127.0.0.1:{port}", "--development", str(data_file),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await _listening(port)
        yield f"127.0.0.1:{port}"
    finally:
        replica.terminate()
        await replica.wait()
        data_file.unlink()  # About 1 GiB, and pytest keeps the last runs' temporary directories.
