"""A front's settings (token secrets included) reach it over the private relay socket, never through a
file (facade.fronts): nothing secret is left on disk if the engine's process is killed. Real front process,
real gRPC on loopback."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import grpc
from pydantic import SecretStr

from facade.api import _frames
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.app import start
from facade.front_process import fetch_settings
from facade.settings import Settings
from tests.api.conftest import Api, credit, make_settings
from tests.api.test_fronts import READY_WAIT_ROUNDS_MAX, _wait_ready

JWT_SECRET = "a-test-secret-of-at-least-thirty-two-bytes!"
"""Not the dev mode's built-in secret: a front that authenticates tokens signed with it got it from here."""


async def _asked(path: str) -> _frames.Decoded:
    """The engine's answer to a SETTINGS request (a front's first frame) on the real relay socket."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(_frames.encode_index(_frames.FrameKind.SETTINGS, 7))
        await writer.drain()
        frames = _frames.FrameReader()
        for _ in range(READY_WAIT_ROUNDS_MAX):
            data = await reader.read(65_536)
            assert data, "the relay closed the connection"
            if decoded := frames.feed(data):
                [answer] = decoded
                return answer
    finally:
        writer.close()
    raise AssertionError("no answer")


async def test_a_front_gets_its_settings_over_the_relay_socket_and_none_touch_the_disk(tmp_path: Path) -> None:
    base = make_settings(tmp_path, front_processes=1, http_port=0)
    settings = base.model_copy(update={"auth": base.auth.model_copy(update={"jwt_secret": SecretStr(JWT_SECRET)})})
    server = await start(settings)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    api = Api(settings, server, channel, rpc.LedgerStub(channel))
    try:
        assert server.fronts is not None
        await _wait_ready(server)
        directory = Path(server.fronts.socket_path).parent
        assert [entry.name for entry in directory.iterdir()] == ["engine.sock"]  # No settings file.
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(server.fronts.socket_path).st_mode) == 0o600
        # The front authenticates with the engine's secret: a token signed with it is accepted.
        account = await api.account("alice")
        posted = await api.post("s-1", credit(account, 5))
        assert posted.idempotency_key == "s-1"
        answer = await _asked(server.fronts.socket_path)
        assert isinstance(answer, tuple) and answer[:2] == (_frames.FrameKind.SETTINGS, 7)
        given = Settings.model_validate_json(answer[2])
        assert given.auth.jwt_secret.get_secret_value() == JWT_SECRET
        assert (given.api.port, given.api.front_processes) == (server.port, 0)
    finally:
        await channel.close()
        await server.stop()
    assert not directory.exists()


async def test_a_front_that_cannot_reach_the_engine_gets_no_settings(tmp_path: Path) -> None:
    assert await fetch_settings(str(tmp_path / "nothing.sock"), 0, 0.0) is None  # The front exits 1.
