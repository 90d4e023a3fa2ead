"""Domain refusals and the engine status → refusal table.

The rest of what this module held lives by concern: ids (facade.domain.ids), caller input validation
(facade.domain.validation), currencies and accounts (facade.domain.accounts), transactions → transfers
(facade.domain.transactions).
"""

from __future__ import annotations

import json

import grpc

from facade.engine.types import CreateTransferStatus

ERROR_DOMAIN = "ledger.v1"


class DomainError(Exception):
    """A request the ledger refuses: a gRPC status plus a machine-readable reason."""

    def __init__(
        self, code: grpc.StatusCode, reason: str, message: str, metadata: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = metadata or {}

    def to_json(self) -> str:
        return json.dumps([self.code.name, self.reason, self.message, self.metadata], separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> DomainError:
        code, reason, message, metadata = json.loads(text)
        return cls(grpc.StatusCode[code], reason, message, metadata)


def invalid(reason: str, message: str, **metadata: str) -> DomainError:
    return DomainError(grpc.StatusCode.INVALID_ARGUMENT, reason, message, metadata)


# ------------------------------------------------------------------------------------------------
# Engine results → gRPC statuses.

_C = grpc.StatusCode
_S = CreateTransferStatus

# Every CreateTransferStatus a transaction can fail with, and what the client is told. Statuses the
# mapping above makes impossible (zero ids, reserved flags, ...) would mean a bug here: INTERNAL.
TRANSFER_STATUS_ERRORS: dict[CreateTransferStatus, tuple[grpc.StatusCode, str]] = {
    _S.EXCEEDS_CREDITS: (_C.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS"),
    _S.EXCEEDS_DEBITS: (_C.FAILED_PRECONDITION, "CREDIT_LIMIT_EXCEEDED"),
    _S.DEBIT_ACCOUNT_NOT_FOUND: (_C.NOT_FOUND, "ACCOUNT_NOT_FOUND"),
    _S.CREDIT_ACCOUNT_NOT_FOUND: (_C.NOT_FOUND, "ACCOUNT_NOT_FOUND"),
    _S.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER: (_C.FAILED_PRECONDITION, "CURRENCY_MISMATCH"),
    _S.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS: (_C.FAILED_PRECONDITION, "CURRENCY_MISMATCH"),
    _S.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER: (_C.FAILED_PRECONDITION, "CURRENCY_MISMATCH"),
    _S.ACCOUNTS_MUST_BE_DIFFERENT: (_C.INVALID_ARGUMENT, "SAME_ACCOUNT"),
    _S.DEBIT_ACCOUNT_ALREADY_CLOSED: (_C.FAILED_PRECONDITION, "ACCOUNT_CLOSED"),
    _S.CREDIT_ACCOUNT_ALREADY_CLOSED: (_C.FAILED_PRECONDITION, "ACCOUNT_CLOSED"),
    _S.PENDING_TRANSFER_NOT_FOUND: (_C.NOT_FOUND, "AUTHORIZATION_NOT_FOUND"),
    _S.PENDING_TRANSFER_NOT_PENDING: (_C.FAILED_PRECONDITION, "NOT_AN_AUTHORIZATION"),
    _S.PENDING_TRANSFER_EXPIRED: (_C.FAILED_PRECONDITION, "AUTHORIZATION_EXPIRED"),
    _S.PENDING_TRANSFER_ALREADY_POSTED: (_C.FAILED_PRECONDITION, "AUTHORIZATION_ALREADY_CAPTURED"),
    _S.PENDING_TRANSFER_ALREADY_VOIDED: (_C.FAILED_PRECONDITION, "AUTHORIZATION_ALREADY_VOIDED"),
    _S.EXCEEDS_PENDING_TRANSFER_AMOUNT: (_C.INVALID_ARGUMENT, "CAPTURE_EXCEEDS_AUTHORIZATION"),
    _S.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT: (_C.INVALID_ARGUMENT, "VOID_AMOUNT_MISMATCH"),
    _S.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID: (_C.INVALID_ARGUMENT, "AUTHORIZATION_MISMATCH"),
    _S.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID: (_C.INVALID_ARGUMENT, "AUTHORIZATION_MISMATCH"),
    _S.PENDING_TRANSFER_HAS_DIFFERENT_CODE: (_C.INVALID_ARGUMENT, "AUTHORIZATION_MISMATCH"),
    _S.OVERFLOWS_DEBITS_PENDING: (_C.FAILED_PRECONDITION, "BALANCE_OVERFLOW"),
    _S.OVERFLOWS_CREDITS_PENDING: (_C.FAILED_PRECONDITION, "BALANCE_OVERFLOW"),
    _S.OVERFLOWS_DEBITS_POSTED: (_C.FAILED_PRECONDITION, "BALANCE_OVERFLOW"),
    _S.OVERFLOWS_CREDITS_POSTED: (_C.FAILED_PRECONDITION, "BALANCE_OVERFLOW"),
    _S.OVERFLOWS_DEBITS: (_C.FAILED_PRECONDITION, "BALANCE_OVERFLOW"),
    _S.OVERFLOWS_CREDITS: (_C.FAILED_PRECONDITION, "BALANCE_OVERFLOW"),
    _S.OVERFLOWS_TIMEOUT: (_C.INVALID_ARGUMENT, "AUTHORIZATION_TIMEOUT_TOO_LONG"),
    _S.ID_ALREADY_FAILED: (_C.ALREADY_EXISTS, "IDEMPOTENCY_KEY_FAILED"),
    **{
        status: (_C.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
        for status in _S
        if status.name.startswith("EXISTS_WITH_DIFFERENT_")
    },
}


def transfer_status_error(status: CreateTransferStatus, leg_index: int) -> DomainError:
    code, reason = TRANSFER_STATUS_ERRORS.get(status, (_C.INTERNAL, "INTERNAL_MAPPING_ERROR"))
    return DomainError(
        code,
        reason,
        f"leg {leg_index}: {status.name.lower()}",
        {"leg": str(leg_index), "engine_status": status.name},
    )
