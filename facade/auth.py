"""Authentication and authorization for every API.

Credentials, in the `authorization` header (gRPC metadata or HTTP):
- `Bearer <JWT>`: verified strictly by facade/_token.py: algorithms pinned per key type (HS* with the
  shared secret, RS/PS/ES/EdDSA with the JWKS key its `kid` names, never `none`), `exp` required and a
  number within `jwt_lifetime_seconds_max`, `nbf`/`iat` type-checked and not in the future beyond the
  clock skew, a non-empty string `sub` (the client id), `iss`/`aud` equal to the settings' when set,
  `scope` a space-separated string of scopes.
- `ApiKey <key_id>.<secret>`: only SHA-256(secret) is configured; compared in constant time.

Scopes: ledger.read (reads), ledger.write (posting), ledger.admin (account administration and
cross-client reads). No or bad credentials → UNAUTHENTICATED with a reason (MISSING_CREDENTIALS,
INVALID_TOKEN, TOKEN_EXPIRED, TOKEN_NOT_YET_VALID, TOKEN_CLAIM_INVALID + metadata.claim,
TOKEN_KEY_UNKNOWN, INVALID_API_KEY); missing scope → PERMISSION_DENIED. gRPC health checks are open
(load balancers probe them without credentials); everything else, reflection included, needs credentials.

Verified tokens are cached (the exact `authorization` value → principal and deadline, at most
`TOKEN_CACHE_ENTRIES_MAX` entries of at most `TOKEN_CACHED_CHARS_MAX` characters): a client sends the same
token on every call, and signature verification plus claim parsing would otherwise be most of a small
RPC's cost. Only a token that passed every rule is cached, under its exact bytes: any other token (the
same subject included) is verified on its own. An entry lives until the token's `exp` or
`TOKEN_CACHE_SECONDS_MAX`, whichever is first, and no longer than the key set it was verified with: every
reload of the key set empties the cache (a key removed stops verifying its tokens at once). Past that the
token is verified again, so the cache changes no outcome.

Local use: in `dev` mode a built-in signing secret is used when none is configured, so that
`ledger dev-token` prints a working token on a fresh machine. Anyone can sign with it: the service warns
at start (`guard_dev_mode`) and refuses to listen on anything but loopback with it. `enforce` mode refuses
to start without a configured secret or key set.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import ipaddress
import sys
import time
from dataclasses import dataclass

import jwt

from facade._token import JwksKeys, TokenReason, TokenRejectedError, TokenVerifier
from facade.domain.errors import ErrorKind, LedgerError
from facade.observability.logs import get_logger
from facade.settings import AuthSettings

SCOPE_READ = "ledger.read"
SCOPE_WRITE = "ledger.write"
SCOPE_ADMIN = "ledger.admin"
SCOPE_AUDIT = "ledger.audit"
"""Compliance staff: audit evidence (checkpoints and proofs; issue 12), nothing else."""
SCOPES_ALL = frozenset({SCOPE_READ, SCOPE_WRITE, SCOPE_ADMIN, SCOPE_AUDIT})
DEV_SECRET = "ledger-dev-secret-not-for-production-use-0123456789"
TOKEN_TTL_SECONDS_DEFAULT = 24 * 3600
CLOCK_LEEWAY_SECONDS = 30
"""The default clock skew (auth.jwt_clock_skew_seconds)."""
TOKEN_CACHE_ENTRIES_MAX = 10_000
TOKEN_CACHE_SECONDS_MAX = 60.0
TOKEN_CACHED_CHARS_MAX = 4096
"""Longer `authorization` values are verified on every call, not cached (bounds the cache's memory: a
JWT is a few hundred characters, RS256 with a kid under 1,000)."""
JWT_SECRET_BYTES_MIN = 32
"""RFC 7518 §3.2: an HS256 key has at least 256 bits."""

_SERVICE = "/ledger.v1.Ledger/"
_HISTORY = "/ledger.v1.History/"
METHOD_SCOPES: dict[str, str] = {
    _SERVICE + "CreateAccount": SCOPE_ADMIN,
    _SERVICE + "GetAccount": SCOPE_READ,
    _SERVICE + "ListAccounts": SCOPE_READ,
    _SERVICE + "GetBalance": SCOPE_READ,
    _SERVICE + "PostTransaction": SCOPE_WRITE,
    _SERVICE + "PostTransactions": SCOPE_WRITE,
    _SERVICE + "StreamTransactions": SCOPE_WRITE,
    _SERVICE + "CaptureTransaction": SCOPE_WRITE,
    _SERVICE + "VoidTransaction": SCOPE_WRITE,
    _SERVICE + "GetTransaction": SCOPE_READ,
    _SERVICE + "ListAccountEntries": SCOPE_READ,
    # The read model: an owned account's history is a read; cross-client views are administration.
    _HISTORY + "GetStatement": SCOPE_READ,
    _HISTORY + "GetBalanceAsOf": SCOPE_READ,
    _HISTORY + "GetDailyTotals": SCOPE_ADMIN,
    _HISTORY + "ListTransactionsByCorrelation": SCOPE_ADMIN,
    _HISTORY + "Reconcile": SCOPE_ADMIN,
    # By metadata: ledger.read lists its own client's transactions, ledger.admin every client's.
    _HISTORY + "ListTransactions": SCOPE_READ,
    _HISTORY + "ListAccounts": SCOPE_READ,
    _HISTORY + "GetCheckpoint": SCOPE_AUDIT,
    _HISTORY + "GetInclusionProof": SCOPE_AUDIT,
    _HISTORY + "GetConsistencyProof": SCOPE_AUDIT,
}
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
REFLECTION_PREFIX = "/grpc.reflection."

log = get_logger("ledger.auth")


@dataclass(frozen=True, slots=True)
class Principal:
    client_id: str
    scopes: frozenset[str]


class AuthError(LedgerError):
    """A caller refused before any operation runs: kind UNAUTHENTICATED or PERMISSION_DENIED. The gRPC
    edge's interceptor (facade.api.auth_interceptor) and the JSON gateway render it like any LedgerError."""


class InsecureStartError(RuntimeError):
    """The configuration would expose the service unsafely; `ledger serve` exits non-zero with this text."""


current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("current_principal")


def uses_builtin_secret(settings: AuthSettings) -> bool:
    return settings.mode == "dev" and not settings.jwt_secret.get_secret_value()


def signing_secret(settings: AuthSettings) -> str:
    secret = settings.jwt_secret.get_secret_value()
    if secret:
        return secret
    if settings.mode == "dev":
        return DEV_SECRET
    raise RuntimeError("auth.mode=enforce needs LEDGER_AUTH__JWT_SECRET")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # Any other name may resolve to anything: not provably loopback.


def guard_dev_mode(settings: AuthSettings, hosts: list[str]) -> None:
    """With the built-in secret (written in this file) anyone can sign an admin token: say so loudly,
    and refuse to listen anywhere but on loopback."""
    if not uses_builtin_secret(settings):
        return
    exposed = [host for host in hosts if not is_loopback(host)]
    warning = (
        "auth.mode=dev with the built-in signing secret: anyone can sign tokens with every scope. "
        "Set LEDGER_AUTH__JWT_SECRET (or LEDGER_AUTH__MODE=enforce) before exposing this service."
    )
    log.warning("insecure_dev_auth", detail=warning, hosts=hosts)
    print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    if exposed:
        raise InsecureStartError(
            f"refusing to listen on {', '.join(exposed)} with auth.mode=dev and the built-in signing secret; "
            "bind 127.0.0.1, or set LEDGER_AUTH__JWT_SECRET / LEDGER_AUTH__MODE=enforce"
        )


def issue_token(
    settings: AuthSettings, client_id: str, scopes: frozenset[str], ttl_seconds: int = TOKEN_TTL_SECONDS_DEFAULT
) -> str:
    now = int(time.time())
    claims = {
        "sub": client_id,
        "scope": " ".join(sorted(scopes)),
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "exp": now + ttl_seconds,
    }
    return jwt.encode(claims, signing_secret(settings), algorithm="HS256")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _shared_secret(settings: AuthSettings, keys: JwksKeys) -> bytes | None:
    configured = settings.jwt_secret.get_secret_value()
    if configured:
        if len(configured.encode()) < JWT_SECRET_BYTES_MIN:
            raise RuntimeError(f"auth.jwt_secret must be at least {JWT_SECRET_BYTES_MIN} bytes")
        return configured.encode()
    if settings.mode == "dev":
        return DEV_SECRET.encode()
    if not keys.configured:
        raise RuntimeError(
            "auth.mode=enforce needs LEDGER_AUTH__JWT_SECRET or a key set (LEDGER_AUTH__JWKS_FILE / _JWKS_URL)"
        )
    return None  # Enforce mode with a key set only: HS* tokens are refused.


def _unauthenticated(rejected: TokenRejectedError) -> AuthError:
    metadata = {"claim": rejected.claim} if rejected.claim else {}
    return AuthError(ErrorKind.UNAUTHENTICATED, rejected.reason.value, rejected.message, metadata)


class Authenticator:
    """`authenticate` never blocks (memory only); `authenticate_async`, used by both edges, also reloads
    the key set (off the event loop) when it is due or a token names an unknown key."""

    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        algorithms = frozenset(settings.jwt_algorithms)
        self._keys = JwksKeys(
            file=settings.jwks_file,
            url=settings.jwks_url,
            algorithms=algorithms,
            refresh_seconds_min=settings.jwks_refresh_seconds_min,
            lifespan_seconds=settings.jwks_lifespan_seconds,
        )
        secret = _shared_secret(settings, self._keys)
        if self._keys.configured:
            self._keys.load()  # At start: a key set that cannot be read refuses the start (JwksError).
        self._verifier = TokenVerifier(
            secret=secret,
            keys=self._keys,
            algorithms=algorithms,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            skew_seconds=settings.jwt_clock_skew_seconds,
            lifetime_seconds_max=settings.jwt_lifetime_seconds_max,
        )
        self._api_keys = {key.key_id: key for key in settings.api_keys}
        self._verified: dict[str, tuple[Principal, float]] = {}
        """The exact `authorization` value of a verified Bearer token → (principal, valid until: time.time())."""
        self._reload_lock = asyncio.Lock()

    def cached(self, authorization: str | None) -> Principal | None:
        """The principal `authorization` was verified as, while its cache entry holds and the key set is not
        due a reload; else None, and the caller asks `authenticate_async` (the gRPC edge's common call: no
        coroutine, no parsing)."""
        if authorization is None or self._keys.reload_due(kid_missed=False):
            return None
        entry = self._verified.get(authorization)
        if entry is None or time.time() >= entry[1]:
            return None
        return entry[0]

    async def authenticate_async(self, authorization: str | None) -> Principal:
        if self._keys.reload_due(kid_missed=False):
            await self._reload(kid_missed=False)
        try:
            return self.authenticate(authorization)
        except AuthError as error:
            if error.reason != TokenReason.TOKEN_KEY_UNKNOWN or not self._keys.reload_due(kid_missed=True):
                raise
        await self._reload(kid_missed=True)
        return self.authenticate(authorization)

    async def _reload(self, *, kid_missed: bool) -> None:
        async with self._reload_lock:
            if not self._keys.reload_due(kid_missed=kid_missed):
                return  # Another call reloaded while this one waited.
            try:
                await asyncio.to_thread(self._keys.load)
            except Exception as error:  # Keep the last good keys; the operator sees why.
                log.error("jwks_reload_failed", error=str(error))
            else:
                # No token stays verified past the key set it was verified with: a removed key's tokens stop now.
                # (Here, on the event loop, after the new keys are in: nothing verified with the old ones is left.)
                self._verified.clear()

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthError(ErrorKind.UNAUTHENTICATED, "MISSING_CREDENTIALS", "authorization header required")
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() == "bearer" and credential:
            return self._jwt(authorization, credential.strip())
        if scheme.lower() == "apikey" and credential:
            return self._api_key(credential.strip())
        raise AuthError(ErrorKind.UNAUTHENTICATED, "UNSUPPORTED_CREDENTIALS", "use 'Bearer <jwt>' or 'ApiKey <key>'")

    def _jwt(self, authorization: str, token: str) -> Principal:
        """`token` (the credential of `authorization`) verified, or its cached principal while it holds."""
        now = time.time()
        cached = self._verified.get(authorization)
        if cached is not None:
            principal, valid_until = cached
            if now < valid_until:
                return principal
            del self._verified[authorization]
        try:
            verified = self._verifier.verify(token, now)
        except TokenRejectedError as rejected:
            raise _unauthenticated(rejected) from None  # Our message only; no library text.
        principal = Principal(verified.subject, verified.scopes)
        # Never past exp: between exp and exp + skew the token is verified on every call.
        valid_until = min(verified.expires_at, now + TOKEN_CACHE_SECONDS_MAX)
        if valid_until > now and len(authorization) <= TOKEN_CACHED_CHARS_MAX:
            while len(self._verified) >= TOKEN_CACHE_ENTRIES_MAX:
                del self._verified[next(iter(self._verified))]  # The oldest entry.
            self._verified[authorization] = (principal, valid_until)
        assert len(self._verified) <= TOKEN_CACHE_ENTRIES_MAX
        return principal

    def _api_key(self, credential: str) -> Principal:
        key_id, _, secret = credential.partition(".")
        key = self._api_keys.get(key_id)
        # Hash even for unknown ids, so timing does not reveal which key ids exist.
        digest = hash_secret(secret)
        if key is None or not hmac.compare_digest(digest, key.secret_sha256):
            raise AuthError(ErrorKind.UNAUTHENTICATED, "INVALID_API_KEY", "invalid API key")
        return Principal(key.client_id, frozenset(key.scopes))

    def authorize(self, principal: Principal, scope: str) -> None:
        if scope not in principal.scopes and SCOPE_ADMIN not in principal.scopes:
            raise AuthError(ErrorKind.PERMISSION_DENIED, "MISSING_SCOPE", f"requires scope {scope}")
