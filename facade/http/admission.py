"""Admission at the JSON gateway's door: refuse what cannot be served before reading or parsing it.

An ASGI middleware in front of the routes, so a refusal costs a header lookup, not a body:
- a body larger than `body_bytes_max` is refused with 413 REQUEST_TOO_LARGE from its Content-Length,
  before a byte of it is read (a body without Content-Length is read up to the limit, then refused);
- a write (POST under /v1/transactions) that the write queue cannot take in time is refused with 429
  WRITE_QUEUE_FULL and Retry-After (the expected wait) before its body is read or parsed: the check is
  LedgerService.admit for one transfer, the least a write costs (the route checks the real count once
  it is parsed);
- a write beyond `concurrent_writes_max` in progress is refused with 429 before its body is read: the
  event loop's backlog stays bounded, so what is admitted is answered in time;
- a write beyond the service's adaptive write limit (facade.write_limit, shared with gRPC: single writes
  and :batch requests in their own lanes) is refused with 429 TOO_MANY_REQUESTS and Retry-After (the retry
  pace), before its body is read; an admitted write's latency from here feeds the limit;
- the caller's deadline is the `X-Request-Timeout-Ms` header (how long the client will wait, as gRPC's
  deadline), on reads and writes: admission needs it to finish in time, queued work is dropped once it
  has passed, so nothing is committed for a client that gave up, and a read is cut off (504). Routes
  read it from `request_deadline` and hand it to the operation.

Large bodies are parsed off the event loop by the routes themselves (facade.http.gateway.parse_batch).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facade.domain.errors import ErrorKind, LedgerError
from facade.service import LedgerService
from facade.write_limit import Lane, too_busy

__all__ = ["REQUEST_TIMEOUT_HEADER", "AdmissionMiddleware", "request_deadline"]

REQUEST_TIMEOUT_HEADER = "x-request-timeout-ms"
REQUEST_TIMEOUT_MS_MAX = 3_600_000
"""A longer announced timeout is a client's mistake (or a wish to pin queue space): refused."""
WRITE_PATH_PREFIX = "/v1/transactions"
BULK_PATH_SUFFIX = ":batch"
"""POST /v1/transactions:batch: the bulk lane of the write limit (facade.write_limit)."""
CONCURRENCY_RETRY_AFTER_MS = 100
"""Retry hint when refused for concurrency: a write in progress is answered within its wait bound."""

request_deadline: ContextVar[float | None] = ContextVar("request_deadline", default=None)
"""The current HTTP request's deadline (time.monotonic()), or None when the client announced none."""


def _too_large(body_bytes_max: int) -> LedgerError:
    return LedgerError(
        ErrorKind.INVALID,
        "REQUEST_TOO_LARGE",
        f"the request body exceeds {body_bytes_max} bytes",
        {"body_bytes_max": str(body_bytes_max)},
    )


def _deadline(headers: Headers) -> float | LedgerError | None:
    """The caller's deadline (time.monotonic()) from X-Request-Timeout-Ms; None without one; the error
    for a malformed one."""
    timeout_text = headers.get(REQUEST_TIMEOUT_HEADER)
    if timeout_text is None:
        return None
    if not timeout_text.isdigit() or not 0 < int(timeout_text) <= REQUEST_TIMEOUT_MS_MAX:
        return LedgerError(
            ErrorKind.INVALID,
            "INVALID_TIMEOUT",
            f"X-Request-Timeout-Ms must be whole milliseconds, 1 to {REQUEST_TIMEOUT_MS_MAX}",
            {"field": "X-Request-Timeout-Ms"},
        )
    return time.monotonic() + int(timeout_text) / 1000


class AdmissionMiddleware:
    """`refuse` renders a LedgerError as the gateway's error response (same body as every other error)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        service: LedgerService,
        body_bytes_max: int,
        concurrent_writes_max: int,
        refuse: Callable[[LedgerError], Response],
    ) -> None:
        assert body_bytes_max > 0 and concurrent_writes_max >= 0
        self.app = app
        self.service = service
        self.body_bytes_max = body_bytes_max
        self.concurrent_writes_max = concurrent_writes_max
        """0: no limit."""
        self.writes_in_progress = 0
        self.refuse = refuse

    async def _respond(self, scope: Scope, receive: Receive, send: Send, error: LedgerError, status: int) -> None:
        response = self.refuse(error)
        response.status_code = status
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self._read(scope, receive, send)
            return
        headers = Headers(scope=scope)
        length_text = headers.get("content-length")
        if length_text is not None and length_text.isdigit() and int(length_text) > self.body_bytes_max:
            await self._respond(scope, receive, send, _too_large(self.body_bytes_max), 413)
            return
        deadline = _deadline(headers)
        if isinstance(deadline, LedgerError):
            await self._respond(scope, receive, send, deadline, 400)
            return
        write = scope["path"].startswith(WRITE_PATH_PREFIX)
        lane = Lane.BULK if scope["path"].endswith(BULK_PATH_SUFFIX) else Lane.INTERACTIVE
        limit = self.service.write_limit
        started = time.perf_counter()
        if write:
            try:
                if 0 < self.concurrent_writes_max <= self.writes_in_progress:
                    raise LedgerError(
                        ErrorKind.EXHAUSTED,
                        "TOO_MANY_REQUESTS",
                        f"{self.writes_in_progress} writes in progress on this gateway",
                        {"retry_after_ms": str(CONCURRENCY_RETRY_AFTER_MS)},
                    )
                self.service.admit(1, deadline)
                # The adaptive limit shared with gRPC (facade.write_limit): admitted writes stay fast.
                if not limit.acquire(lane):
                    raise too_busy(lane, limit.in_flight[lane], self.service.committer.retry_after_seconds())
            except LedgerError as error:
                await self._respond(scope, receive, send, error, 429)
                return
            self.writes_in_progress += 1
        try:
            await self._admitted(scope, receive, send, deadline, length_text)
        finally:
            if write:
                self.writes_in_progress -= 1
                limit.release(lane, time.perf_counter() - started)
                assert self.writes_in_progress >= 0

    async def _read(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A read (no body): only the caller's deadline, which the operation is cut off at (as over gRPC)."""
        deadline = _deadline(Headers(scope=scope))
        if isinstance(deadline, LedgerError):
            await self._respond(scope, receive, send, deadline, 400)
            return
        token = request_deadline.set(deadline)
        try:
            await self.app(scope, receive, send)
        finally:
            request_deadline.reset(token)

    async def _admitted(
        self, scope: Scope, receive: Receive, send: Send, deadline: float | None, length_text: str | None
    ) -> None:
        if length_text is None:
            # No announced length (chunked): read up to the limit before the route sees a byte.
            chunks: list[bytes] = []
            size = 0
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    break  # The client went away; the route will see the disconnect.
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.body_bytes_max:
                    await self._respond(scope, receive, send, _too_large(self.body_bytes_max), 413)
                    return
                chunks.append(chunk)
                more = message.get("more_body", False)
            buffered: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

            async def replay() -> Message:
                return buffered.pop() if buffered else await receive()

            receive = replay
        token = request_deadline.set(deadline)
        try:
            await self.app(scope, receive, send)
        finally:
            request_deadline.reset(token)
