"""A front's settings (token secrets included) reach it over the private relay socket, never through a
file (facade.fronts): nothing secret is left on disk if the engine's process is killed. Real front process,
real gRPC on loopback."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pydantic import SecretStr

from facade.api import _frames
from facade.front_process import fetch_settings
from facade.settings import Settings
from tests.api.conftest import credit, make_settings
from tests.api.test_fronts import relay_answer, serving_api

JWT_SECRET = "a-test-secret-of-at-least-thirty-two-bytes!"
"""Not the dev mode's built-in secret: a front that authenticates tokens signed with it got it from here."""


async def _asked(path: str) -> _frames.Decoded:
    """The engine's answer to a SETTINGS request (a front's first frame) on the real relay socket."""
    return await relay_answer(path, _frames.encode_index(_frames.FrameKind.SETTINGS, 7))


async def test_a_front_gets_its_settings_over_the_relay_socket_and_none_touch_the_disk(tmp_path: Path) -> None:
    base = make_settings(tmp_path, front_processes=1, http_port=0)
    settings = base.model_copy(update={"auth": base.auth.model_copy(update={"jwt_secret": SecretStr(JWT_SECRET)})})
    async with serving_api(settings) as api:
        fronts = api.server.fronts
        assert fronts is not None
        directory = Path(fronts.socket_path).parent
        assert [entry.name for entry in directory.iterdir()] == ["engine.sock"]  # No settings file.
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(fronts.socket_path).st_mode) == 0o600
        # The front authenticates with the engine's secret: a token signed with it is accepted.
        account = await api.account("alice")
        posted = await api.post("s-1", credit(account, 5))
        assert posted.idempotency_key == "s-1"
        answer = await _asked(fronts.socket_path)
        assert isinstance(answer, tuple) and answer[:2] == (_frames.FrameKind.SETTINGS, 7)
        given = Settings.model_validate_json(answer[2])
        assert given.auth.jwt_secret.get_secret_value() == JWT_SECRET
        assert (given.api.port, given.api.front_processes) == (api.server.port, 0)
    assert not directory.exists()


async def test_a_front_that_cannot_reach_the_engine_gets_no_settings(tmp_path: Path) -> None:
    assert await fetch_settings(str(tmp_path / "nothing.sock"), 0, 0.0) is None  # The front exits 1.
