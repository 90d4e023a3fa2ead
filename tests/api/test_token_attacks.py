"""Every token attack, on both edges of a real service over loopback: gRPC and the JSON gateway, a read
(GetBalance) and a write (PostTransaction), in dev mode (built-in secret) and in enforce mode (a
configured secret). Each server also trusts a JWKS file (an RSA and an EC key). A refused write must
leave the balance untouched; an accepted one moves exactly one unit.

The expected outcome is the machine-readable reason (UNAUTHENTICATED/401), and for claim errors the
claim's name in the error metadata; no message may carry a library's exception text.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr

from facade.api.errors import error_info
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.app import start
from facade.auth import DEV_SECRET, SCOPES_ALL
from facade.settings import AuthSettings
from tests.api.conftest import Api, credit, make_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")

ENFORCE_SECRET = "enforce-mode-secret-0123456789abcdef-xyz"
ISSUER, AUDIENCE = "ledger-service", "ledger"
LEAKED_LIBRARY_TEXTS = ("segments", "padding", "Signature verification", "must be an integer", "Traceback", "Error(")


def _private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class Keys:
    rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey
    attacker: rsa.RSAPrivateKey
    secret: str

    def rsa_public_pem(self) -> bytes:
        return self.rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def jwks(*entries: tuple[str, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey]) -> dict[str, Any]:
    """A JWK Set of the public halves, each with its kid."""
    keys = []
    for kid, key in entries:
        if isinstance(key, rsa.RSAPrivateKey):
            public = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        else:
            public = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        keys.append({**public, "kid": kid, "use": "sig"})
    return {"keys": keys}


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "client-a",
        "scope": "ledger.read ledger.write",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
    }
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not MISSING}


MISSING: Any = object()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_hs256(header: dict[str, Any], payload: dict[str, Any], key: bytes) -> str:
    """An HS256 token built by hand: PyJWT refuses to HMAC with a PEM key, an attacker does not."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def unsigned(header: dict[str, Any], payload: dict[str, Any]) -> str:
    """An `alg: none` token: header.payload. and no signature."""
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}."


def hs(keys: Keys, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), keys.secret, algorithm="HS256")


def rs(keys: Keys, kid: str = "rsa-1", **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), _private_pem(keys.rsa_key), algorithm="RS256", headers={"kid": kid})


Token = Callable[[Keys], str]


@dataclass(frozen=True)
class Attack:
    name: str
    token: Token
    reason: str
    """"" = accepted."""
    claim: str = ""
    enforce_reason: str | None = None
    """The reason in enforce mode, when it differs from dev mode."""


NOW = int(time.time())
ATTACKS = [
    Attack("valid HS256", hs, ""),
    Attack("valid RS256 from the JWKS", rs, ""),
    Attack(
        "valid ES256 from the JWKS",
        lambda k: jwt.encode(claims(), _private_pem(k.ec_key), algorithm="ES256", headers={"kid": "ec-1"}),
        "",
    ),
    Attack("expired within the clock skew", lambda k: hs(k, exp=int(time.time()) - 10, iat=NOW - 60), ""),
    Attack("aud as a list holding ours", lambda k: hs(k, aud=["other", AUDIENCE]), ""),
    Attack(
        "signed with the built-in dev secret",
        lambda _k: jwt.encode(claims(), DEV_SECRET, algorithm="HS256"),
        "",
        enforce_reason="INVALID_TOKEN",
    ),
    Attack("exp as a string", lambda k: hs(k, exp=str(NOW + 600)), "TOKEN_CLAIM_INVALID", "exp"),
    Attack("exp = 1e300", lambda k: hs(k, exp=1e300), "TOKEN_CLAIM_INVALID", "exp"),
    Attack("exp = 10**400", lambda k: hs(k, exp=10**400), "TOKEN_CLAIM_INVALID", "exp"),
    Attack("exp = NaN", lambda k: hs(k, exp=float("nan")), "TOKEN_CLAIM_INVALID", "exp"),
    Attack("exp = true", lambda k: hs(k, exp=True), "TOKEN_CLAIM_INVALID", "exp"),
    Attack("exp ten years ahead", lambda k: hs(k, exp=NOW + 10 * 365 * 86_400), "TOKEN_CLAIM_INVALID", "exp"),
    Attack("missing exp", lambda k: hs(k, exp=MISSING), "TOKEN_CLAIM_INVALID", "exp"),
    Attack("empty sub", lambda k: hs(k, sub=""), "TOKEN_CLAIM_INVALID", "sub"),
    Attack("blank sub", lambda k: hs(k, sub="   "), "TOKEN_CLAIM_INVALID", "sub"),
    Attack("missing sub", lambda k: hs(k, sub=MISSING), "TOKEN_CLAIM_INVALID", "sub"),
    Attack("sub a number", lambda k: hs(k, sub=42), "TOKEN_CLAIM_INVALID", "sub"),
    Attack("sub with a newline", lambda k: hs(k, sub="client-a\nadmin"), "TOKEN_CLAIM_INVALID", "sub"),
    Attack("scope a list", lambda k: hs(k, scope=["ledger.write"]), "TOKEN_CLAIM_INVALID", "scope"),
    Attack("expired", lambda k: hs(k, exp=NOW - 120, iat=NOW - 600), "TOKEN_EXPIRED", "exp"),
    Attack("future nbf", lambda k: hs(k, nbf=int(time.time()) + 300), "TOKEN_NOT_YET_VALID", "nbf"),
    Attack("nbf as a string", lambda k: hs(k, nbf=str(NOW)), "TOKEN_CLAIM_INVALID", "nbf"),
    Attack("future iat beyond the skew", lambda k: hs(k, iat=int(time.time()) + 300), "TOKEN_NOT_YET_VALID", "iat"),
    Attack("wrong iss", lambda k: hs(k, iss="evil"), "TOKEN_CLAIM_INVALID", "iss"),
    Attack("missing iss", lambda k: hs(k, iss=MISSING), "TOKEN_CLAIM_INVALID", "iss"),
    Attack("wrong aud", lambda k: hs(k, aud="other"), "TOKEN_CLAIM_INVALID", "aud"),
    Attack("missing aud", lambda k: hs(k, aud=MISSING), "TOKEN_CLAIM_INVALID", "aud"),
    Attack("alg none", lambda _k: unsigned({"alg": "none", "typ": "JWT"}, claims()), "INVALID_TOKEN"),
    Attack(
        "alg none by hand, with a signature",
        lambda k: raw_hs256({"alg": "none", "typ": "JWT"}, claims(), k.secret.encode()),
        "INVALID_TOKEN",
    ),
    Attack("wrong HMAC key", lambda _k: jwt.encode(claims(), "x" * 40, algorithm="HS256"), "INVALID_TOKEN"),
    Attack(
        "RS256 with another key under a known kid",
        lambda k: jwt.encode(claims(), _private_pem(k.attacker), algorithm="RS256", headers={"kid": "rsa-1"}),
        "INVALID_TOKEN",
    ),
    Attack(
        "HS/RS confusion: HS256 keyed with the RSA public key",
        lambda k: raw_hs256({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims(), k.rsa_public_pem()),
        "INVALID_TOKEN",
    ),
    Attack(
        "ES256 under an RSA kid",
        lambda k: jwt.encode(claims(), _private_pem(k.ec_key), algorithm="ES256", headers={"kid": "rsa-1"}),
        "INVALID_TOKEN",
    ),
    Attack(
        "RS256 without a kid",
        lambda k: jwt.encode(claims(), _private_pem(k.rsa_key), algorithm="RS256"),
        "INVALID_TOKEN",
    ),
    Attack("unknown kid", lambda k: rs(k, kid="rsa-9"), "TOKEN_KEY_UNKNOWN"),
    Attack("garbage", lambda _k: "garbage", "INVALID_TOKEN"),
    Attack("two segments", lambda _k: "eyJhbGciOiJIUzI1NiJ9.e30", "INVALID_TOKEN"),
    Attack("bad base64", lambda _k: "!!!.@@@.###", "INVALID_TOKEN"),
    Attack("header not an object", lambda _k: f"{b64(b'[]')}.{b64(b'{}')}.{b64(b'x')}", "INVALID_TOKEN"),
    Attack("huge token", lambda k: hs(k, pad="x" * 3500), "INVALID_TOKEN"),
]


@dataclass
class Target:
    mode: str
    api: Api
    http: httpx.AsyncClient
    keys: Keys
    account: str
    credited: int = 0


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        rsa_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec_key=ec.generate_private_key(ec.SECP256R1()),
        attacker=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        secret=ENFORCE_SECRET,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["dev", "enforce"])
async def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, keys: Keys
) -> AsyncIterator[Target]:
    mode: str = request.param
    directory: Path = tmp_path_factory.mktemp(f"attacks-{mode}")
    (directory / "jwks.json").write_text(json.dumps(jwks(("rsa-1", keys.rsa_key), ("ec-1", keys.ec_key))))
    settings = make_settings(directory, http_port=0)
    settings.auth = AuthSettings(
        mode="enforce" if mode == "enforce" else "dev",
        jwt_secret=SecretStr(ENFORCE_SECRET if mode == "enforce" else ""),
        jwks_file=directory / "jwks.json",
    )
    server = await start(settings)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    api = Api(settings, server, channel, rpc.LedgerStub(channel))
    # The HS256 tokens of the table are signed with the secret the server trusts.
    keys = Keys(keys.rsa_key, keys.ec_key, keys.attacker, ENFORCE_SECRET if mode == "enforce" else DEV_SECRET)
    admin = (("authorization", f"Bearer {jwt.encode(claims(scope=' '.join(SCOPES_ALL)), keys.secret)}"),)
    account = await api.stub.CreateAccount(
        pb.CreateAccountRequest(currency="USD", external_reference="victim", type=pb.ACCOUNT_TYPE_NO_OVERDRAFT),
        metadata=admin,
    )
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.server.http_port}", timeout=30)
    try:
        yield Target(mode, api, client, keys, str(account.account_id))
    finally:
        await client.aclose()
        await api.channel.close()
        await api.server.stop()


async def _grpc_call(target: Target, token: str, write: bool, key: str) -> tuple[str, dict[str, str], str]:
    """("" or the reason, the error metadata, the message)."""
    metadata = (("authorization", f"Bearer {token}"),)
    try:
        if write:
            request = pb.PostTransactionRequest(idempotency_key=key, legs=[credit(target.account, 1)])
            await target.api.stub.PostTransaction(request, metadata=metadata)
        else:
            await target.api.stub.GetBalance(pb.GetBalanceRequest(account_id=target.account), metadata=metadata)
    except grpc.aio.AioRpcError as error:
        failure = error
    else:
        return "", {}, ""
    assert failure.code() == grpc.StatusCode.UNAUTHENTICATED, failure
    info = error_info(failure)
    assert info is not None
    return info.reason, dict(info.metadata), failure.details() or ""


async def _http_call(target: Target, token: str, write: bool, key: str) -> tuple[str, dict[str, str], str]:
    headers = {"Authorization": f"Bearer {token}"}
    if write:
        body = {
            "idempotency_key": key,
            "legs": [{"type": "LEG_TYPE_CREDIT", "account_id": target.account, "amount": "1", "currency": "USD"}],
        }
        response = await target.http.post("/v1/transactions", json=body, headers=headers)
    else:
        response = await target.http.get(f"/v1/accounts/{target.account}/balance", headers=headers)
    if response.status_code == (201 if write else 200):  # Accepted: a posted transaction is created.
        return "", {}, ""
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    payload = response.json()
    assert payload["code"] == "UNAUTHENTICATED"
    return payload["reason"], payload["metadata"], payload["message"]


@pytest.mark.parametrize("attack", ATTACKS, ids=[attack.name for attack in ATTACKS])
async def test_token_attack(target: Target, attack: Attack) -> None:
    expected = attack.reason if target.mode == "dev" or attack.enforce_reason is None else attack.enforce_reason
    token = attack.token(target.keys)
    for edge, call in (("grpc", _grpc_call), ("http", _http_call)):
        for write in (False, True):
            key = f"{attack.name}-{edge}-{write}"
            reason, metadata, message = await call(target, token, write, key)
            where = f"{attack.name} on {edge} {'write' if write else 'read'}"
            assert reason == expected, f"{where}: {reason or 'accepted'}, expected {expected or 'accepted'}"
            if expected and attack.claim and expected.startswith("TOKEN_CLAIM"):
                assert metadata.get("claim") == attack.claim, where
            assert not any(text in message for text in LEAKED_LIBRARY_TEXTS), f"{where}: {message!r}"
            target.credited += 1 if write and not expected else 0
            assert await target.api.available(target.account) == target.credited, f"{where}: balance moved"
