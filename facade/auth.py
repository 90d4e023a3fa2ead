"""Authentication and authorization for every API.

Credentials, in the `authorization` header (gRPC metadata or HTTP):
- `Bearer <JWT>`: HS256, verified with PyJWT; `exp`, `iss` and `aud` are required and checked; `sub`
  is the client id and `scope` a space-separated list of scopes.
- `ApiKey <key_id>.<secret>`: only SHA-256(secret) is configured; compared in constant time.

Scopes: ledger.read (reads), ledger.write (posting), ledger.admin (account administration and
cross-client reads). No or bad credentials → UNAUTHENTICATED; missing scope → PERMISSION_DENIED.
gRPC health checks are open (load balancers probe them without credentials); everything else,
reflection included, needs credentials.

Verified tokens are cached (token → principal and expiry, at most `TOKEN_CACHE_ENTRIES_MAX`): a
client sends the same token on every call, and HMAC verification plus claim parsing would otherwise
be most of a small RPC's cost. A cached token is still checked against its `exp` on every call; the
cache holds nothing a token does not carry itself, so it changes no outcome.

Local use: in `dev` mode a built-in signing secret is used when none is configured, so that
`ledger dev-token` prints a working token on a fresh machine. `enforce` mode refuses to start without
a configured secret.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import jwt

from facade.settings import AuthSettings

SCOPE_READ = "ledger.read"
SCOPE_WRITE = "ledger.write"
SCOPE_ADMIN = "ledger.admin"
SCOPES_ALL = frozenset({SCOPE_READ, SCOPE_WRITE, SCOPE_ADMIN})
DEV_SECRET = "ledger-dev-secret-not-for-production-use-0123456789"
TOKEN_TTL_SECONDS_DEFAULT = 24 * 3600
CLOCK_LEEWAY_SECONDS = 30
TOKEN_CACHE_ENTRIES_MAX = 10_000

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
}
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
REFLECTION_PREFIX = "/grpc.reflection."


@dataclass(frozen=True, slots=True)
class Principal:
    client_id: str
    scopes: frozenset[str]


class AuthError(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("current_principal")


def signing_secret(settings: AuthSettings) -> str:
    secret = settings.jwt_secret.get_secret_value()
    if secret:
        return secret
    if settings.mode == "dev":
        return DEV_SECRET
    raise RuntimeError("auth.mode=enforce needs LEDGER_AUTH__JWT_SECRET")


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


class Authenticator:
    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        self._secret = signing_secret(settings)
        self._api_keys = {key.key_id: key for key in settings.api_keys}
        self._verified: dict[str, tuple[Principal, float]] = {}  # token → (principal, exp + leeway)

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIALS", "authorization header required")
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() == "bearer" and credential:
            return self._jwt(credential.strip())
        if scheme.lower() == "apikey" and credential:
            return self._api_key(credential.strip())
        raise AuthError(
            grpc.StatusCode.UNAUTHENTICATED, "UNSUPPORTED_CREDENTIALS", "use 'Bearer <jwt>' or 'ApiKey <key>'"
        )

    def _jwt(self, token: str) -> Principal:
        cached = self._verified.get(token)
        if cached is not None:
            principal, expires_at = cached
            if time.time() < expires_at:
                return principal
            del self._verified[token]
        principal, expires_at = self._verify_jwt(token)
        if len(self._verified) >= TOKEN_CACHE_ENTRIES_MAX:
            self._verified.clear()  # Simple and bounded: the next calls verify again.
        self._verified[token] = (principal, expires_at)
        return principal

    def _verify_jwt(self, token: str) -> tuple[Principal, float]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                audience=self._settings.jwt_audience,
                issuer=self._settings.jwt_issuer,
                leeway=CLOCK_LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as error:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED", "token expired") from error
        except jwt.InvalidTokenError as error:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN", f"invalid token: {error}") from error
        scopes = frozenset(str(claims.get("scope", "")).split())
        return Principal(str(claims["sub"]), scopes), float(claims["exp"]) + CLOCK_LEEWAY_SECONDS

    def _api_key(self, credential: str) -> Principal:
        key_id, _, secret = credential.partition(".")
        key = self._api_keys.get(key_id)
        # Hash even for unknown ids, so timing does not reveal which key ids exist.
        digest = hash_secret(secret)
        if key is None or not hmac.compare_digest(digest, key.secret_sha256):
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "INVALID_API_KEY", "invalid API key")
        return Principal(key.client_id, frozenset(key.scopes))

    def authorize(self, principal: Principal, scope: str) -> None:
        if scope not in principal.scopes and SCOPE_ADMIN not in principal.scopes:
            raise AuthError(grpc.StatusCode.PERMISSION_DENIED, "MISSING_SCOPE", f"requires scope {scope}")


def _metadata_value(metadata: Any, key: str) -> str | None:
    for item_key, value in metadata or ():
        if item_key == key:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call; the servicer reads the caller from `current_principal`."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        scope = METHOD_SCOPES.get(method, SCOPE_READ if method.startswith(REFLECTION_PREFIX) else SCOPE_ADMIN)
        try:
            principal = self._authenticator.authenticate(
                _metadata_value(handler_call_details.invocation_metadata, "authorization")
            )
            self._authenticator.authorize(principal, scope)
        except AuthError as error:
            return _rejecting_handler(handler, error)
        return _with_principal(handler, principal)


# grpcio's stubs model method handlers as synchronous callables; under grpc.aio they are coroutines
# and async generators, so the wrappers below handle them as Any.


def _rejecting_handler(handler: Any, error: AuthError) -> Any:
    from facade.api.errors import abort_details

    async def reject_unary(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort_details(context, error.code, error.reason, error.message)

    async def reject_stream(_requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort_details(context, error.code, error.reason, error.message)
        yield  # pragma: no cover - makes this an async generator

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            reject_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(
            reject_stream, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            reject_stream, handler.request_deserializer, handler.response_serializer
        )
    return grpc.stream_unary_rpc_method_handler(reject_unary, handler.request_deserializer, handler.response_serializer)


def _with_principal(handler: Any, principal: Principal) -> Any:
    if handler.unary_unary:
        inner_unary: Any = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            current_principal.set(principal)
            return await inner_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
    if handler.stream_stream:
        inner_stream: Any = handler.stream_stream

        async def stream(request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            current_principal.set(principal)
            async for response in inner_stream(request_iterator, context):
                yield response

        return grpc.stream_stream_rpc_method_handler(stream, handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream:
        inner_unary_stream: Any = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            current_principal.set(principal)
            async for response in inner_unary_stream(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    return handler
