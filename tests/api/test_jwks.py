"""Key rotation with a JWK Set: a real file replaced on disk, and a real HTTP endpoint on loopback read
through PyJWKClient. New kids are picked up on first use, removed keys stop verifying, a broken key set
keeps the last good keys, reloads are bounded, and a key set that cannot be read refuses the start."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

import facade.auth
from facade._token import JwksError
from facade.app import start
from facade.auth import Authenticator, AuthError
from facade.settings import AuthSettings
from tests.api.conftest import make_settings

Key = rsa.RSAPrivateKey


@pytest.fixture(scope="module")
def rsa_keys() -> list[Key]:
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]


def key_set(**keys: Key) -> dict[str, Any]:
    return {
        "keys": [
            {**jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid}
            for kid, key in keys.items()
        ]
    }


def token(key: Key, kid: str, subject: str = "client-a") -> str:
    now = int(time.time())
    claims = {"sub": subject, "iss": "ledger-service", "aud": "ledger", "iat": now, "exp": now + 300}
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return "Bearer " + jwt.encode(claims, pem, algorithm="RS256", headers={"kid": kid})


def replace(path: Path, document: object) -> None:
    """Atomically, as a deployment would (write, then rename over)."""
    staged = path.with_suffix(".tmp")
    staged.write_text(json.dumps(document) if not isinstance(document, str) else document)
    os.replace(staged, path)


async def reason(authenticator: Authenticator, authorization: str) -> str:
    try:
        await authenticator.authenticate_async(authorization)
    except AuthError as error:
        return error.reason
    return "OK"


async def test_file_rotation(tmp_path: Path, rsa_keys: list[Key]) -> None:
    first, second, stranger = rsa_keys
    path = tmp_path / "jwks.json"
    replace(path, key_set(**{"k-1": first}))
    authenticator = Authenticator(AuthSettings(mode="enforce", jwks_file=path))
    assert await reason(authenticator, token(first, "k-1")) == "OK"
    assert await reason(authenticator, token(second, "k-2")) == "TOKEN_KEY_UNKNOWN"
    # Enforce mode with a key set only: no shared secret, so no HMAC token verifies.
    hs256 = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, facade.auth.DEV_SECRET, algorithm="HS256")
    assert await reason(authenticator, f"Bearer {hs256}") == "INVALID_TOKEN"

    replace(path, key_set(**{"k-2": second}))  # Rotation: k-1 retired, k-2 published.
    assert await reason(authenticator, token(second, "k-2")) == "OK", "a new kid is picked up on first use"
    assert await reason(authenticator, token(first, "k-1", "fresh")) == "TOKEN_KEY_UNKNOWN", "k-1 retired"
    assert await reason(authenticator, token(stranger, "k-2", "forged")) == "INVALID_TOKEN"

    replace(path, "{not json")  # A broken key set keeps the last good keys.
    assert await reason(authenticator, token(second, "k-9")) == "TOKEN_KEY_UNKNOWN"
    assert await reason(authenticator, token(second, "k-2", "after-breakage")) == "OK"


async def test_private_keys_and_symmetric_keys_in_a_key_set_are_not_used(tmp_path: Path, rsa_keys: list[Key]) -> None:
    first = rsa_keys[0]
    private = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(first)), "kid": "private"}
    symmetric = {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA", "kid": "oct"}
    path = tmp_path / "jwks.json"
    replace(path, {"keys": [private, symmetric]})
    with pytest.raises(JwksError, match="no usable signing key"):
        Authenticator(AuthSettings(mode="enforce", jwks_file=path))


async def test_a_key_set_that_cannot_be_read_refuses_the_start(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    settings.auth = AuthSettings(mode="enforce", jwks_file=tmp_path / "missing.json")
    with pytest.raises(JwksError, match="cannot read the key set"):
        await start(settings)
    assert not (tmp_path / "engine").exists(), "refused before the engine opened"


def test_a_short_shared_secret_is_refused() -> None:
    with pytest.raises(RuntimeError, match="at least 32 bytes"):
        Authenticator(AuthSettings(mode="enforce", jwt_secret=SecretStr("short")))


async def test_the_token_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(facade.auth, "TOKEN_CACHE_ENTRIES_MAX", 8)
    settings = AuthSettings()
    authenticator = Authenticator(settings)
    for index in range(50):
        bearer = f"Bearer {facade.auth.issue_token(settings, f'client-{index}', frozenset())}"
        assert (await authenticator.authenticate_async(bearer)).client_id == f"client-{index}"
        assert len(authenticator._verified) <= 8


class _KeySetServer:
    """A JWKS endpoint on loopback whose document the test changes; counts fetches."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # Quiet.
                del format, args

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint(rsa_keys: list[Key]) -> Iterator[_KeySetServer]:
    server = _KeySetServer(key_set(**{"k-1": rsa_keys[0]}))
    try:
        yield server
    finally:
        server.close()


async def test_url_rotation(endpoint: _KeySetServer, rsa_keys: list[Key]) -> None:
    first, second, third = rsa_keys
    authenticator = Authenticator(AuthSettings(mode="enforce", jwks_url=endpoint.url, jwks_refresh_seconds_min=0))
    assert endpoint.fetches == 1, "loaded at start"
    assert await reason(authenticator, token(first, "k-1")) == "OK"
    endpoint.document = key_set(**{"k-2": second})
    assert await reason(authenticator, token(second, "k-2")) == "OK"
    assert await reason(authenticator, token(first, "k-1", "fresh")) == "TOKEN_KEY_UNKNOWN"
    assert await reason(authenticator, token(third, "k-3")) == "TOKEN_KEY_UNKNOWN"


async def test_url_refetches_are_bounded(endpoint: _KeySetServer, rsa_keys: list[Key]) -> None:
    """Tokens naming random kids do not make the service hammer the identity provider."""
    authenticator = Authenticator(AuthSettings(mode="enforce", jwks_url=endpoint.url, jwks_refresh_seconds_min=3600))
    for index in range(20):
        assert await reason(authenticator, token(rsa_keys[1], f"random-{index}")) == "TOKEN_KEY_UNKNOWN"
    assert endpoint.fetches == 1


async def test_the_cache_never_outlives_exp() -> None:
    """With no clock skew allowed, a token verified (and cached) a moment before its exp is refused
    right after it: the cache keeps no token past its own exp."""
    settings = AuthSettings(jwt_clock_skew_seconds=0)
    authenticator = Authenticator(settings)
    expires_at = int(time.time()) + 2
    claims = {"sub": "client-a", "iss": "ledger-service", "aud": "ledger", "exp": expires_at}
    bearer = f"Bearer {jwt.encode(claims, facade.auth.DEV_SECRET, algorithm='HS256')}"
    assert await reason(authenticator, bearer) == "OK"
    assert await reason(authenticator, bearer) == "OK"  # From the cache.
    await asyncio.sleep(max(0.0, expires_at - time.time()) + 0.05)
    assert await reason(authenticator, bearer) == "TOKEN_EXPIRED"


async def test_a_cached_token_stops_at_its_exp_on_the_edges_fast_path() -> None:
    """`cached` (the gRPC edge's path without a coroutine) answers a verified token until its exp and
    not after: past it the token goes through `authenticate_async` again and is refused."""
    settings = AuthSettings(jwt_clock_skew_seconds=0)
    authenticator = Authenticator(settings)
    expires_at = int(time.time()) + 2
    claims = {"sub": "client-a", "iss": "ledger-service", "aud": "ledger", "exp": expires_at}
    bearer = f"Bearer {jwt.encode(claims, facade.auth.DEV_SECRET, algorithm='HS256')}"
    assert authenticator.cached(bearer) is None, "never seen: verified first"
    assert await reason(authenticator, bearer) == "OK"
    cached = authenticator.cached(bearer)
    assert cached is not None and cached.client_id == "client-a"
    await asyncio.sleep(max(0.0, expires_at - time.time()) + 0.05)
    assert authenticator.cached(bearer) is None
    assert await reason(authenticator, bearer) == "TOKEN_EXPIRED"


async def test_a_token_with_a_cached_tokens_subject_is_verified_on_its_own() -> None:
    """The cache is keyed by the exact token: another token naming the same subject gets no credit from
    it (a forged signature, a wrong audience, an expired one are refused; other scopes are its own)."""
    settings = AuthSettings()
    authenticator = Authenticator(settings)
    now = int(time.time())
    claims = {"sub": "client-a", "iss": "ledger-service", "aud": "ledger", "exp": now + 300, "scope": "ledger.read"}
    good = f"Bearer {jwt.encode(claims, facade.auth.DEV_SECRET, algorithm='HS256')}"
    assert await reason(authenticator, good) == "OK"
    assert authenticator.cached(good) is not None
    forged = f"Bearer {jwt.encode(claims, 'another-secret-of-at-least-32-bytes!!', algorithm='HS256')}"
    wrong_audience = f"Bearer {jwt.encode({**claims, 'aud': 'elsewhere'}, facade.auth.DEV_SECRET, algorithm='HS256')}"
    expired = f"Bearer {jwt.encode({**claims, 'exp': now - 120}, facade.auth.DEV_SECRET, algorithm='HS256')}"
    for bearer, refused in (
        (forged, "INVALID_TOKEN"),
        (wrong_audience, "TOKEN_CLAIM_INVALID"),
        (expired, "TOKEN_EXPIRED"),
    ):
        assert authenticator.cached(bearer) is None
        assert await reason(authenticator, bearer) == refused
    admin = f"Bearer {jwt.encode({**claims, 'scope': 'ledger.admin'}, facade.auth.DEV_SECRET, algorithm='HS256')}"
    assert (await authenticator.authenticate_async(admin)).scopes == frozenset({"ledger.admin"})
    assert (await authenticator.authenticate_async(good)).scopes == frozenset({"ledger.read"})


async def test_a_cached_token_does_not_outlive_its_key(tmp_path: Path, rsa_keys: list[Key]) -> None:
    """The very token verified (and cached) with k-1 is refused once the key set that retired k-1 is
    loaded, well within TOKEN_CACHE_SECONDS_MAX: a reload empties the cache."""
    first, second, _ = rsa_keys
    path = tmp_path / "jwks.json"
    replace(path, key_set(**{"k-1": first}))
    authenticator = Authenticator(AuthSettings(mode="enforce", jwks_file=path))
    old = token(first, "k-1")
    assert await reason(authenticator, old) == "OK"
    assert authenticator.cached(old) is not None
    replace(path, key_set(**{"k-2": second}))  # k-1 retired; the next unknown kid reloads the file.
    assert await reason(authenticator, token(second, "k-2")) == "OK"
    assert authenticator.cached(old) is None
    assert await reason(authenticator, old) == "TOKEN_KEY_UNKNOWN"
