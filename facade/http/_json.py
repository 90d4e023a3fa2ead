"""Strict JSON request bodies for the gateway.

Python's json module (what FastAPI uses) is lenient where a ledger must not be: with duplicate keys the
last one wins (`"amount":"1","amount":"999"` would post 999 while a reviewer or another parser reads 1),
`\\ud800` escapes give strings no UTF-8 encoder accepts (they failed later, as a 500), NaN and Infinity
are accepted, and invalid UTF-8 bytes surface as an untyped error. `parse_body` refuses each of these
with a `MalformedRequest` (HTTP 400) naming a machine-readable reason, before any model sees the value.

`StrictJsonRoute` makes every route of a router parse bodies this way (FastAPI calls `request.json()`),
and refuses query parameters the route does not declare (UNKNOWN_QUERY_PARAMETER): as the request models
forbid unknown fields, a misspelt `page_size` must not silently fall back to the default.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = [
    "JSON_DEPTH_MAX",
    "REASON_DUPLICATE_KEY",
    "REASON_INVALID_UNICODE",
    "REASON_MALFORMED_JSON",
    "REASON_UNKNOWN_QUERY_PARAMETER",
    "MalformedRequest",
    "StrictJsonRoute",
    "parse_body",
]

REASON_MALFORMED_JSON = "MALFORMED_JSON"
REASON_DUPLICATE_KEY = "DUPLICATE_KEY"
REASON_INVALID_UNICODE = "INVALID_UNICODE"
REASON_UNKNOWN_QUERY_PARAMETER = "UNKNOWN_QUERY_PARAMETER"
DEPENDANTS_MAX = 64
"""Bound on the walk over a route's dependency tree (the gateway's routes have two or three)."""
JSON_DEPTH_MAX = 32
"""Deepest nesting a body may have: the request models nest at most 4 levels."""
_FIELD_TEXT_MAX = 64
"""Longest key quoted back in an error (the caller's text, truncated)."""


class MalformedRequest(StarletteHTTPException):
    """A body that is not one well-formed JSON document, or an undeclared query parameter: HTTP 400
    with `reason`."""

    def __init__(self, reason: str, message: str, field: str = "") -> None:
        super().__init__(status_code=400, detail=message)
        self.reason = reason
        self.message = message
        self.field = field


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _DuplicateKeyError(key)
        found[key] = value
    return found


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _quoted(text: str) -> str:
    """The caller's text, safe to echo: truncated, and lone surrogates replaced."""
    shortened = text[:_FIELD_TEXT_MAX]
    return shortened.encode("utf-8", "replace").decode("utf-8")


def _check_strings(document: Any) -> None:
    """Every key and string encodes as UTF-8 (no lone surrogates) and nesting is bounded."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > JSON_DEPTH_MAX:
            raise MalformedRequest(REASON_MALFORMED_JSON, f"the body nests deeper than {JSON_DEPTH_MAX} levels")
        if isinstance(value, str):
            texts: list[str] = [value]
        elif isinstance(value, dict):
            texts = list(value)
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            texts = []
            stack.extend((item, depth + 1) for item in value)
        else:
            continue
        for text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:
                raise MalformedRequest(
                    REASON_INVALID_UNICODE,
                    f"a string holds a lone surrogate ({_quoted(text)!r}): not valid Unicode",
                ) from error


def parse_body(body: bytes) -> Any:
    """The JSON document in `body`, or MalformedRequest."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise MalformedRequest(REASON_MALFORMED_JSON, f"the body is not UTF-8 (byte {error.start})") from error
    try:
        document = json.loads(text, object_pairs_hook=_unique_object, parse_constant=_refuse_constant)
    except _DuplicateKeyError as error:
        raise MalformedRequest(
            REASON_DUPLICATE_KEY, f"duplicate key {_quoted(error.key)!r} in a JSON object", _quoted(error.key)
        ) from error
    except json.JSONDecodeError as error:
        raise MalformedRequest(
            REASON_MALFORMED_JSON, f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}"
        ) from error
    except RecursionError as error:
        raise MalformedRequest(REASON_MALFORMED_JSON, "the body nests too deeply") from error
    except ValueError as error:  # NaN/Infinity, or an integer literal too long to convert.
        raise MalformedRequest(REASON_MALFORMED_JSON, "invalid JSON: a number out of range or not JSON") from error
    _check_strings(document)
    return document


class _StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_body(await self.body())
        return self._json


def _query_names(dependant: Dependant) -> frozenset[str]:
    """The query parameter names a route declares, its dependencies' included."""
    names: set[str] = set()
    pending = [dependant]
    for _ in range(DEPENDANTS_MAX):
        if not pending:
            return frozenset(names)
        current = pending.pop()
        names.update(param.alias for param in current.query_params)
        pending.extend(current.dependencies)
    raise AssertionError(f"more than {DEPENDANTS_MAX} dependants")


class StrictJsonRoute(APIRoute):
    """An APIRoute whose request bodies go through `parse_body` and whose query names are checked."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        declared = _query_names(self.dependant)

        async def strict(request: Request) -> Response:
            for name in request.query_params:
                if name not in declared:
                    raise MalformedRequest(
                        REASON_UNKNOWN_QUERY_PARAMETER,
                        f"unknown query parameter {_quoted(name)!r}",
                        _quoted(name),
                    )
            return await handler(_StrictJsonRequest(request.scope, request.receive))

        return strict
