"""Domain errors without transport: what the ledger refuses, and why, in words every edge can render.

    LedgerError(kind, reason, message, metadata)
        kind      ErrorKind: the class of failure (invalid, not found, conflict, ...). Each edge owns one
                  small table from kind to its own answer: facade.api.status (gRPC code + google.rpc
                  details), facade.http.errors (HTTP status), facade.kafka.ingest (the result record).
        reason    the machine-readable reason clients branch on (INSUFFICIENT_FUNDS, ...), identical on
                  every edge (google.rpc.ErrorInfo.reason over gRPC, `reason` in the JSON body and in the
                  Kafka result's headers).
        message   for people; never an exception's or a database's text.
        metadata  string pairs (which leg, which field, retry_after_ms, ...).

The engine-status table (TRANSFER_STATUS_ERRORS) turns each CreateTransferStatus a transaction can fail
with into its kind and reason. Nothing here imports a transport (grpc, fastapi, confluent_kafka).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping

from facade.engine.types import CreateTransferStatus

__all__ = [
    "ERROR_DOMAIN",
    "TRANSFER_STATUS_ERRORS",
    "ErrorKind",
    "LedgerError",
    "invalid",
    "transfer_status_error",
]

ERROR_DOMAIN = "ledger.v1"
"""google.rpc.ErrorInfo.domain of every error the ledger gives."""


class ErrorKind(enum.Enum):
    """The class of a failure. The value is the status name the failure had before kinds existed: it is
    what failed transactions' records hold (LedgerError.to_json), so records written by any version read
    back the same; it is also the `code` the JSON gateway and the batch item errors show."""

    INVALID = "INVALID_ARGUMENT"
    """The request itself is wrong; the same request will always fail."""
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "ALREADY_EXISTS"
    """A key or reference already used for something else."""
    PRECONDITION = "FAILED_PRECONDITION"
    """Valid, but the ledger's state refuses it (insufficient funds, already captured, ...)."""
    EXHAUSTED = "RESOURCE_EXHAUSTED"
    """Overloaded: retry after metadata.retry_after_ms."""
    UNAVAILABLE = "UNAVAILABLE"
    """The engine or a store cannot serve now; nothing acknowledged, retry."""
    DEADLINE = "DEADLINE_EXCEEDED"
    """The caller's deadline passed before the work was done; it was not done."""
    INTERNAL = "INTERNAL"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    """No credentials, or credentials that do not check out."""
    PERMISSION_DENIED = "PERMISSION_DENIED"
    """Credentials without the scope, or acting for a client they may not act for."""


class LedgerError(Exception):
    """A request the ledger refuses: a kind plus a machine-readable reason (see the module docstring)."""

    def __init__(self, kind: ErrorKind, reason: str, message: str, metadata: Mapping[str, str] | None = None) -> None:
        assert isinstance(kind, ErrorKind), kind
        assert reason
        super().__init__(message)
        self.kind = kind
        self.reason = reason
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})

    def __repr__(self) -> str:
        return f"LedgerError({self.kind.name}, {self.reason!r}, {self.message!r}, {self.metadata!r})"

    def to_json(self) -> str:
        """The durable form of a refused transaction's answer (metadata store): the kind's status name
        first, as records have always held it."""
        return json.dumps([self.kind.value, self.reason, self.message, self.metadata], separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> LedgerError:
        name, reason, message, metadata = json.loads(text)
        return cls(ErrorKind(name), reason, message, metadata)


def invalid(reason: str, message: str, **metadata: str) -> LedgerError:
    return LedgerError(ErrorKind.INVALID, reason, message, metadata)


# ------------------------------------------------------------------------------------------------
# Engine results → kinds and reasons.

_K = ErrorKind
_S = CreateTransferStatus

# Every CreateTransferStatus a transaction can fail with, and what the client is told. Statuses the
# mapping makes impossible (zero ids, reserved flags, ...) would mean a bug there: INTERNAL.
TRANSFER_STATUS_ERRORS: dict[CreateTransferStatus, tuple[ErrorKind, str]] = {
    _S.EXCEEDS_CREDITS: (_K.PRECONDITION, "INSUFFICIENT_FUNDS"),
    _S.EXCEEDS_DEBITS: (_K.PRECONDITION, "CREDIT_LIMIT_EXCEEDED"),
    _S.DEBIT_ACCOUNT_NOT_FOUND: (_K.NOT_FOUND, "ACCOUNT_NOT_FOUND"),
    _S.CREDIT_ACCOUNT_NOT_FOUND: (_K.NOT_FOUND, "ACCOUNT_NOT_FOUND"),
    _S.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER: (_K.PRECONDITION, "CURRENCY_MISMATCH"),
    _S.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS: (_K.PRECONDITION, "CURRENCY_MISMATCH"),
    _S.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER: (_K.PRECONDITION, "CURRENCY_MISMATCH"),
    _S.ACCOUNTS_MUST_BE_DIFFERENT: (_K.INVALID, "SAME_ACCOUNT"),
    _S.DEBIT_ACCOUNT_ALREADY_CLOSED: (_K.PRECONDITION, "ACCOUNT_CLOSED"),
    _S.CREDIT_ACCOUNT_ALREADY_CLOSED: (_K.PRECONDITION, "ACCOUNT_CLOSED"),
    _S.PENDING_TRANSFER_NOT_FOUND: (_K.NOT_FOUND, "AUTHORIZATION_NOT_FOUND"),
    _S.PENDING_TRANSFER_NOT_PENDING: (_K.PRECONDITION, "NOT_AN_AUTHORIZATION"),
    _S.PENDING_TRANSFER_EXPIRED: (_K.PRECONDITION, "AUTHORIZATION_EXPIRED"),
    _S.PENDING_TRANSFER_ALREADY_POSTED: (_K.PRECONDITION, "AUTHORIZATION_ALREADY_CAPTURED"),
    _S.PENDING_TRANSFER_ALREADY_VOIDED: (_K.PRECONDITION, "AUTHORIZATION_ALREADY_VOIDED"),
    _S.EXCEEDS_PENDING_TRANSFER_AMOUNT: (_K.INVALID, "CAPTURE_EXCEEDS_AUTHORIZATION"),
    _S.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT: (_K.INVALID, "VOID_AMOUNT_MISMATCH"),
    _S.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID: (_K.INVALID, "AUTHORIZATION_MISMATCH"),
    _S.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID: (_K.INVALID, "AUTHORIZATION_MISMATCH"),
    _S.PENDING_TRANSFER_HAS_DIFFERENT_CODE: (_K.INVALID, "AUTHORIZATION_MISMATCH"),
    _S.OVERFLOWS_DEBITS_PENDING: (_K.PRECONDITION, "BALANCE_OVERFLOW"),
    _S.OVERFLOWS_CREDITS_PENDING: (_K.PRECONDITION, "BALANCE_OVERFLOW"),
    _S.OVERFLOWS_DEBITS_POSTED: (_K.PRECONDITION, "BALANCE_OVERFLOW"),
    _S.OVERFLOWS_CREDITS_POSTED: (_K.PRECONDITION, "BALANCE_OVERFLOW"),
    _S.OVERFLOWS_DEBITS: (_K.PRECONDITION, "BALANCE_OVERFLOW"),
    _S.OVERFLOWS_CREDITS: (_K.PRECONDITION, "BALANCE_OVERFLOW"),
    _S.OVERFLOWS_TIMEOUT: (_K.INVALID, "AUTHORIZATION_TIMEOUT_TOO_LONG"),
    _S.ID_ALREADY_FAILED: (_K.CONFLICT, "IDEMPOTENCY_KEY_FAILED"),
    **{
        status: (_K.CONFLICT, "IDEMPOTENCY_KEY_REUSED")
        for status in _S
        if status.name.startswith("EXISTS_WITH_DIFFERENT_")
    },
}


def transfer_status_error(status: CreateTransferStatus, leg_index: int) -> LedgerError:
    assert status != CreateTransferStatus.CREATED
    assert leg_index >= 0
    kind, reason = TRANSFER_STATUS_ERRORS.get(status, (_K.INTERNAL, "INTERNAL_MAPPING_ERROR"))
    return LedgerError(
        kind,
        reason,
        f"leg {leg_index}: {status.name.lower()}",
        {"leg": str(leg_index), "engine_status": status.name},
    )
