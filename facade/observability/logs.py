"""Structured JSON logs: one event per line, with the request, correlation and trace ids bound.

Ids are bound per request with `bind_request(...)` (structlog contextvars, so they follow the request
across awaits) and appear on every line logged while it is handled. Field names are stable and
low-cardinality fields (level, logger, service) suit Loki labels; ids stay in the line body.
"""

from __future__ import annotations

import contextvars
import logging
import sys

import structlog
from opentelemetry import trace


def _add_trace_ids(_logger: object, _method: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event["trace_id"] = format(context.trace_id, "032x")
        event["span_id"] = format(context.span_id, "016x")
    return event


def configure_logging(level: str = "INFO", json: bool = True, service: str = "ledger") -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_trace_ids,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)


_request_ids: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar("ledger_request_ids", default=("", ""))
"""The bound request and correlation ids as one value: read per forwarded call (facade.api.forward), where
structlog's get_contextvars() would build a dict of every bound field."""


def bind_request(request_id: str, correlation_id: str = "", method: str = "") -> None:
    structlog.contextvars.bind_contextvars(
        request_id=request_id, correlation_id=correlation_id or None, method=method or None
    )
    _request_ids.set((request_id, correlation_id))


def clear_request() -> None:
    structlog.contextvars.unbind_contextvars("request_id", "correlation_id", "method")
    _request_ids.set(("", ""))


def request_ids() -> tuple[str, str]:
    """The request and correlation ids `bind_request` bound in this context ("" for none)."""
    return _request_ids.get()


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
