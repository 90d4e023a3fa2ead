"""The JSON gateway's errors: a LedgerError as an HTTP status and a JSON body.

One table (HTTP_STATUS) gives each ErrorKind its HTTP status. The body is {"code", "reason", "message",
"metadata"}: `code` is the status name the gRPC API gives for the same failure (the kind's value) and
`reason` the same machine-readable reason. PRECONDITION is 422, not 409: the request is valid but the
ledger's state refuses it (INSUFFICIENT_FUNDS, AUTHORIZATION_ALREADY_CAPTURED, ...), and 409 stays
CONFLICT alone (IDEMPOTENCY_KEY_REUSED, ACCOUNT_REFERENCE_REUSED), so a client that looks at the status
only can still tell "retry later / fix the state" from "you reused a key". EXHAUSTED is 429 with
Retry-After (whole seconds, rounded up); UNAUTHENTICATED carries WWW-Authenticate.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi.responses import JSONResponse

from facade.domain.errors import ErrorKind, LedgerError

__all__ = ["HTTP_STATUS", "error_body", "error_response", "http_error_response"]

HTTP_STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID: 400,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.PRECONDITION: 422,
    ErrorKind.EXHAUSTED: 429,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.DEADLINE: 504,
    ErrorKind.INTERNAL: 500,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.PERMISSION_DENIED: 403,
}
assert set(HTTP_STATUS) == set(ErrorKind)
_MILLISECONDS_PER_SECOND = 1000


def error_body(error: LedgerError) -> dict[str, Any]:
    return {"code": error.kind.value, "reason": error.reason, "message": error.message, "metadata": error.metadata}


def error_response(error: LedgerError) -> JSONResponse:
    headers: dict[str, str] = {}
    retry_after_ms = error.metadata.get("retry_after_ms", "")
    if error.kind == ErrorKind.EXHAUSTED and retry_after_ms.isdigit():
        headers["Retry-After"] = str(max(1, math.ceil(int(retry_after_ms) / _MILLISECONDS_PER_SECOND)))
    if error.kind == ErrorKind.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = 'Bearer realm="ledger"'
    return JSONResponse(error_body(error), status_code=HTTP_STATUS[error.kind], headers=headers)


def http_error_response(status: int, code: str, reason: str, message: str) -> JSONResponse:
    """An answer about HTTP itself (no such route, method not allowed), which no ledger operation gives:
    the same body, with the gRPC status name a transcoder would give (`code`)."""
    assert 400 <= status <= 599
    body = {"code": code, "reason": reason, "message": message, "metadata": {}}
    return JSONResponse(body, status_code=status)
