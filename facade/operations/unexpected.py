"""Errors nothing translated, for every edge: a reason and an error id, never the exception's text."""

from __future__ import annotations

import os

from facade.domain.errors import ErrorKind, LedgerError
from facade.engine.protocol import EngineUnavailableError
from facade.metadata import MetadataStoreError
from facade.observability.logs import get_logger

__all__ = ["REASON_INTERNAL", "REASON_MALFORMED_REQUEST", "REASON_METADATA_UNAVAILABLE", "unexpected_error"]

REASON_INTERNAL = "INTERNAL"
REASON_METADATA_UNAVAILABLE = "METADATA_UNAVAILABLE"
REASON_MALFORMED_REQUEST = "MALFORMED_REQUEST"
ERROR_ID_BYTES = 8

log = get_logger("ledger.errors")


def unexpected_error(error: Exception, *, edge: str, operation: str) -> LedgerError:
    """The error a caller sees for an exception nothing translated: a reason and an error id, never the
    exception's text (it may quote SQL, file paths or a database's message). The detail is logged with
    the id, so an operator can find it from the caller's report."""
    error_id = os.urandom(ERROR_ID_BYTES).hex()
    log.error("unexpected error", error_id=error_id, edge=edge, operation=operation, exc_info=error)
    metadata = {"error_id": error_id}
    if isinstance(error, EngineUnavailableError):  # Reads of a stopped engine, say: its fault, not its text.
        message = f"engine unavailable (error id {error_id})"
        return LedgerError(ErrorKind.UNAVAILABLE, error.fault.value, message, metadata)
    if isinstance(error, MetadataStoreError):  # Shared store unreachable: nothing acknowledged, retry.
        message = f"metadata store unavailable (error id {error_id})"
        return LedgerError(ErrorKind.UNAVAILABLE, REASON_METADATA_UNAVAILABLE, message, metadata)
    return LedgerError(ErrorKind.INTERNAL, REASON_INTERNAL, f"internal error (error id {error_id})", metadata)
