"""Strict JWT verification: which key, which algorithm, which claims — decided here, not by defaults.

PyJWT checks the signature only; every claim is checked by `TokenVerifier._claims` with exact types,
because PyJWT's own claim checks coerce (`int("9999999999")` made a string `exp` valid, and
`exp = 1e300` never expired).

Keys and algorithms are pinned per key type, so no token chooses how it is verified:
- HMAC algorithms (HS256, ...) verify against the shared secret only, never against a key-set key:
  an HS256 token signed with an RSA public key's PEM as the "secret" is just a wrong signature.
- Asymmetric algorithms verify against the key-set key its `kid` names, and only when that key's type
  (and curve) allows the algorithm and the key's own `alg`, when given, is that algorithm.
- `none` is never allowed (settings cannot name it).

The key set (JWKS) comes from a file or a URL (PyJWT's PyJWKClient). It is loaded at start (a key set
that cannot be read refuses the start) and reloaded when a token names an unknown `kid` (a file: when
it changed on disk; a URL: at most every `jwks_refresh_seconds_min`) and every `jwks_lifespan_seconds`
(so removed keys stop verifying). A reload that fails keeps the last good keys.

Rejections carry a `TokenReason` and a message written here, never a library's exception text.
"""

from __future__ import annotations

import enum
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = [
    "HMAC_ALGORITHMS",
    "TOKEN_BYTES_MAX",
    "JwksError",
    "JwksKeys",
    "PublicKey",
    "TokenReason",
    "TokenRejectedError",
    "TokenVerifier",
    "VerifiedToken",
    "parse_jwks",
]

TOKEN_BYTES_MAX = 4096
"""A token longer than this is refused before any decoding (ours are ~300 bytes)."""
CLIENT_ID_LENGTH_MAX = 128
SCOPE_LENGTH_MAX = 1024
AUDIENCES_MAX = 16
NUMERIC_DATE_MAX = 2**53
"""Largest NumericDate accepted in any claim: exactly representable as a float (year 285 million)."""
JWKS_BYTES_MAX = 1024 * 1024
JWKS_KEYS_MAX = 64
JWKS_FETCH_TIMEOUT_SECONDS = 5.0
RSA_KEY_BITS_MIN = 2048

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS = {"P-256": frozenset({"ES256"}), "P-384": frozenset({"ES384"}), "P-521": frozenset({"ES512"})}
_OKP_ALGORITHMS = {"Ed25519": frozenset({"EdDSA"})}


class TokenReason(enum.StrEnum):
    """Machine-readable reasons of a refused token (google.rpc.ErrorInfo reason / HTTP `reason`)."""

    INVALID_TOKEN = "INVALID_TOKEN"
    """Malformed, too large, a disallowed algorithm, or a signature that does not verify."""
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    TOKEN_NOT_YET_VALID = "TOKEN_NOT_YET_VALID"
    """`nbf` or `iat` later than now plus the allowed clock skew."""
    TOKEN_CLAIM_INVALID = "TOKEN_CLAIM_INVALID"
    """A required claim is missing, of the wrong type, out of range, or not the configured value."""
    TOKEN_KEY_UNKNOWN = "TOKEN_KEY_UNKNOWN"
    """The `kid` names no key of the key set (also after reloading it)."""


class TokenRejectedError(Exception):
    def __init__(self, reason: TokenReason, message: str, *, claim: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.claim = claim


class JwksError(Exception):
    """The key set cannot be read or holds no usable key (a configuration error)."""


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    subject: str
    scopes: frozenset[str]
    expires_at: float
    """`exp`, seconds since the epoch."""


@dataclass(frozen=True, slots=True)
class PublicKey:
    kid: str
    algorithms: frozenset[str]
    """The algorithms this key verifies: its type's (and curve's), or only its own `alg`."""
    key: Any
    """A `cryptography` public key object (never bytes: it cannot be mistaken for an HMAC secret)."""


def _key_algorithms(raw: dict[str, Any]) -> frozenset[str]:
    kty = raw.get("kty")
    if kty == "RSA":
        return _RSA_ALGORITHMS
    if kty == "EC":
        return _EC_ALGORITHMS.get(str(raw.get("crv")), frozenset())
    if kty == "OKP":
        return _OKP_ALGORITHMS.get(str(raw.get("crv")), frozenset())
    return frozenset()  # "oct" included: shared secrets do not belong in a published key set.


def _public_key(raw: object, allowed: frozenset[str]) -> PublicKey | None:
    """One JWKS entry as a verification key, or None when it cannot verify any allowed algorithm."""
    if not isinstance(raw, dict):
        return None
    kid = raw.get("kid")
    if not isinstance(kid, str) or not kid or "d" in raw or raw.get("use", "sig") != "sig":
        return None  # No kid to select it by, private material, or an encryption key.
    algorithms = _key_algorithms(raw) & allowed
    declared = raw.get("alg")
    if declared is not None:
        algorithms = algorithms & {declared} if isinstance(declared, str) else frozenset()
    if not algorithms:
        return None
    try:
        key = jwt.PyJWK(raw, algorithm=min(algorithms)).key
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < RSA_KEY_BITS_MIN:
        return None
    return PublicKey(kid, algorithms, key)


def parse_jwks(document: object, allowed: frozenset[str]) -> dict[str, PublicKey]:
    """kid → key for every usable key; raises JwksError when the document is not a key set or has none."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError("not a JWK Set (a JSON object with a 'keys' list)")
    entries: list[object] = document["keys"]
    if len(entries) > JWKS_KEYS_MAX:
        raise JwksError(f"{len(entries)} keys; at most {JWKS_KEYS_MAX}")
    keys: dict[str, PublicKey] = {}
    for entry in entries:
        key = _public_key(entry, allowed)
        if key is not None and key.kid not in keys:
            keys[key.kid] = key
    if not keys:
        raise JwksError("no usable signing key (each needs a kid, a public RSA/EC/OKP key and an allowed alg)")
    return keys


class JwksKeys:
    """The key set of a JWKS file or URL (or none). `load` blocks: call it off the event loop once serving."""

    def __init__(
        self,
        *,
        file: Path | None,
        url: str,
        algorithms: frozenset[str],
        refresh_seconds_min: float,
        lifespan_seconds: float,
    ) -> None:
        assert not (file is not None and url), "one key set source"
        self._file = file
        self._client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=JWKS_FETCH_TIMEOUT_SECONDS) if url else None
        self._algorithms = algorithms
        self._refresh_seconds_min = refresh_seconds_min
        self._lifespan_seconds = lifespan_seconds
        self._keys: dict[str, PublicKey] = {}
        self._file_version: tuple[int, int, int] | None = None
        self._loaded_at = -math.inf  # time.monotonic() of the last load attempt.

    @property
    def configured(self) -> bool:
        return self._file is not None or self._client is not None

    def get(self, kid: str) -> PublicKey | None:
        return self._keys.get(kid)

    def _version(self) -> tuple[int, int, int]:
        assert self._file is not None
        stat = os.stat(self._file)
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def _read(self) -> object:
        if self._client is not None:
            try:
                return self._client.fetch_data()
            except jwt.PyJWTError as error:
                raise JwksError(f"cannot fetch the key set from {self._client.uri}") from error
        assert self._file is not None
        try:
            with open(self._file, "rb") as file:
                data = file.read(JWKS_BYTES_MAX + 1)
        except OSError as error:
            raise JwksError(f"cannot read the key set {self._file}: {error.strerror}") from error
        if len(data) > JWKS_BYTES_MAX:
            raise JwksError(f"the key set {self._file} is larger than {JWKS_BYTES_MAX} bytes")
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as error:
            raise JwksError(f"the key set {self._file} is not JSON") from error

    def load(self) -> None:
        """Reads the key set; on failure raises JwksError and keeps the previous keys."""
        assert self.configured
        self._loaded_at = time.monotonic()
        version = None
        if self._file is not None:  # Before reading: a change during the read is seen by the next check.
            try:
                version = self._version()
            except OSError as error:
                raise JwksError(f"cannot read the key set {self._file}: {error.strerror}") from error
        # Recorded even when the content is bad: a broken file is re-read when it changes, not per call.
        self._file_version = version
        keys = parse_jwks(self._read(), self._algorithms)
        self._keys = keys
        assert self._keys

    def reload_due(self, *, kid_missed: bool) -> bool:
        """Whether a reload may help now: bounded so that tokens naming random kids cannot make the
        service re-read its key set on every call (a file only when it changed on disk)."""
        if not self.configured:
            return False
        elapsed = time.monotonic() - self._loaded_at
        if elapsed >= self._lifespan_seconds:
            return True
        if not kid_missed:
            return False
        if self._file is not None:
            try:
                return self._version() != self._file_version
            except OSError:
                return False
        return elapsed >= self._refresh_seconds_min


class TokenVerifier:
    def __init__(  # noqa: PLR0913  Keyword-only: each is one verification rule.
        self,
        *,
        secret: bytes | None,
        keys: JwksKeys,
        algorithms: frozenset[str],
        issuer: str,
        audience: str,
        skew_seconds: float,
        lifetime_seconds_max: float,
    ) -> None:
        assert "none" not in algorithms
        assert skew_seconds >= 0 and lifetime_seconds_max > 0
        self._secret = secret
        self._keys = keys
        self._algorithms = algorithms
        self._issuer = issuer
        self._audience = audience
        self._skew_seconds = skew_seconds
        self._lifetime_seconds_max = lifetime_seconds_max

    def verify(self, token: str, now: float) -> VerifiedToken:
        if len(token) > TOKEN_BYTES_MAX:
            raise TokenRejectedError(TokenReason.INVALID_TOKEN, f"token longer than {TOKEN_BYTES_MAX} bytes")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError) as error:
            raise TokenRejectedError(TokenReason.INVALID_TOKEN, "malformed token") from error
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._algorithms:
            raise TokenRejectedError(TokenReason.INVALID_TOKEN, "token algorithm not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenRejectedError(TokenReason.INVALID_TOKEN, "malformed token: kid must be a string")
        key: Any
        if algorithm in HMAC_ALGORITHMS:
            if self._secret is None:
                raise TokenRejectedError(TokenReason.INVALID_TOKEN, "token algorithm not allowed")
            key = self._secret
        else:
            if not kid:
                raise TokenRejectedError(TokenReason.INVALID_TOKEN, "token needs a kid for its algorithm")
            public = self._keys.get(kid)
            if public is None:
                raise TokenRejectedError(TokenReason.TOKEN_KEY_UNKNOWN, "token key id is not in the key set")
            if algorithm not in public.algorithms:
                raise TokenRejectedError(TokenReason.INVALID_TOKEN, "token algorithm does not match its key")
            key = public.key
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                # The signature only: every claim is checked below, with exact types.
                options={
                    "verify_signature": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                    "verify_sub": False,
                    "verify_jti": False,
                    "require": [],
                },
            )
        except (jwt.PyJWTError, ValueError, TypeError) as error:
            raise TokenRejectedError(TokenReason.INVALID_TOKEN, "token signature or encoding invalid") from error
        return self._claims(claims, now)

    def _claims(self, claims: dict[str, Any], now: float) -> VerifiedToken:
        skew = self._skew_seconds
        expires_at = _numeric_date(claims, "exp")
        assert expires_at is not None
        if expires_at <= now - skew:
            raise TokenRejectedError(TokenReason.TOKEN_EXPIRED, "token expired", claim="exp")
        if expires_at > now + skew + self._lifetime_seconds_max:
            raise TokenRejectedError(
                TokenReason.TOKEN_CLAIM_INVALID,
                f"claim exp is more than {int(self._lifetime_seconds_max)} s ahead",
                claim="exp",
            )
        not_before = _numeric_date(claims, "nbf", required=False)
        if not_before is not None and not_before > now + skew:
            raise TokenRejectedError(TokenReason.TOKEN_NOT_YET_VALID, "token not valid yet (nbf)", claim="nbf")
        issued_at = _numeric_date(claims, "iat", required=False)
        if issued_at is not None:
            if issued_at > now + skew:
                raise TokenRejectedError(
                    TokenReason.TOKEN_NOT_YET_VALID, "token issued in the future (iat)", claim="iat"
                )
            if expires_at - issued_at > self._lifetime_seconds_max:
                raise TokenRejectedError(
                    TokenReason.TOKEN_CLAIM_INVALID,
                    f"token lifetime exceeds {int(self._lifetime_seconds_max)} s",
                    claim="exp",
                )
        subject = claims.get("sub")
        if (
            not isinstance(subject, str)
            or not subject.strip()
            or len(subject) > CLIENT_ID_LENGTH_MAX
            or not subject.isprintable()
        ):
            raise TokenRejectedError(
                TokenReason.TOKEN_CLAIM_INVALID,
                f"claim sub must be a non-empty printable string of at most {CLIENT_ID_LENGTH_MAX} characters",
                claim="sub",
            )
        if self._issuer and claims.get("iss") != self._issuer:
            raise TokenRejectedError(
                TokenReason.TOKEN_CLAIM_INVALID, "claim iss is missing or not accepted", claim="iss"
            )
        if self._audience and not _has_audience(claims.get("aud"), self._audience):
            raise TokenRejectedError(
                TokenReason.TOKEN_CLAIM_INVALID, "claim aud is missing or not accepted", claim="aud"
            )
        scope = claims.get("scope", "")
        if not isinstance(scope, str) or len(scope) > SCOPE_LENGTH_MAX:
            raise TokenRejectedError(
                TokenReason.TOKEN_CLAIM_INVALID,
                f"claim scope must be a space-separated string of at most {SCOPE_LENGTH_MAX} characters",
                claim="scope",
            )
        verified = VerifiedToken(subject, frozenset(scope.split()), expires_at)
        assert verified.expires_at > now - skew
        return verified


def _numeric_date(claims: dict[str, Any], name: str, *, required: bool = True) -> float | None:
    """A NumericDate claim as float seconds; JSON numbers only (no strings, booleans, NaN or infinities)."""
    if name not in claims:
        if required:
            raise TokenRejectedError(TokenReason.TOKEN_CLAIM_INVALID, f"claim {name} is required", claim=name)
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        valid = False
    elif isinstance(value, int):
        valid = 0 <= value <= NUMERIC_DATE_MAX  # Compared as int: 10**400 must not overflow a float.
    else:
        valid = math.isfinite(value) and 0 <= value <= NUMERIC_DATE_MAX
    if not valid:
        raise TokenRejectedError(
            TokenReason.TOKEN_CLAIM_INVALID,
            f"claim {name} must be a number of seconds since the epoch, at most {NUMERIC_DATE_MAX}",
            claim=name,
        )
    return float(value)


def _has_audience(value: object, audience: str) -> bool:
    if isinstance(value, str):
        return value == audience
    if isinstance(value, list) and len(value) <= AUDIENCES_MAX and all(isinstance(v, str) for v in value):
        return audience in value
    return False
