"""Disk full under the real gRPC service: the engine's journal on a small tmpfs. Writes answer
UNAVAILABLE with the reason, reads keep answering, writes resume without a restart, nothing is lost."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from facade.api.errors import error_info
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.app import start
from facade.engine import embedded
from tests._tmpfs import small_tmpfs

from .conftest import Api, credit, make_settings

FILESYSTEM_SIZE = "256k"
BALLAST_SIZE = 96 * 1024
POSTS_MAX = 2_000  # The file system is full long before this.


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path, FILESYSTEM_SIZE) as mountpoint:
        yield mountpoint


async def test_disk_full_keeps_reads_and_writes_resume_without_restart(
    small_filesystem: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ballast = small_filesystem / "ballast"
    ballast.write_bytes(bytes(BALLAST_SIZE))
    settings = make_settings(tmp_path)
    settings.engine.data_dir = small_filesystem / "engine"  # Only the journal is on the small disk.
    server = await start(settings)
    api = Api(settings, server, channel := grpc.aio.insecure_channel(f"127.0.0.1:{server.port}"), None)
    api.stub = rpc.LedgerStub(channel)
    try:
        alice = await api.account("alice")
        acknowledged = 0
        refused: grpc.aio.AioRpcError | None = None
        for index in range(POSTS_MAX):
            try:
                await api.post(f"p{index}", credit(alice, 1))
            except grpc.aio.AioRpcError as error:
                refused = error
                break
            acknowledged += 1
        assert refused is not None, "the file system never filled"
        assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused
        info = error_info(refused)
        assert info is not None and info.reason == "STORAGE_FULL", refused.details()
        assert "/" not in (refused.details() or ""), "no file path or OS error text for the caller"
        # Reads keep answering, with exactly what was acknowledged.
        assert await api.available(alice) == acknowledged
        account = await api.stub.GetAccount(pb.GetAccountRequest(account_id=alice), metadata=api.auth())
        assert account.account_id == alice
        # Space returns: the refused post (same idempotency key) goes through, no restart.
        monkeypatch.setattr(embedded, "WRITE_RETRY_INTERVAL_SECONDS", 0.0)
        ballast.unlink()
        await api.post(f"p{acknowledged}", credit(alice, 1))
        await api.post("after", credit(alice, 1))
        assert await api.available(alice) == acknowledged + 2
        await api.restart()
        assert await api.available(alice) == acknowledged + 2
    finally:
        await api.channel.close()
        await api.server.stop()
