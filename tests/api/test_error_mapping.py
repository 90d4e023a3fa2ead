"""Every engine result code maps to a kind and a machine-readable reason, and every edge renders each kind
as it always has."""

from __future__ import annotations

import grpc
import pytest

from facade.api.errors import GRPC_CODE, status_details
from facade.domain.errors import TRANSFER_STATUS_ERRORS, ErrorKind, LedgerError, transfer_status_error
from facade.engine.types import CreateTransferStatus
from facade.http.errors import HTTP_STATUS

S = CreateTransferStatus
NOT_ERRORS = {S.CREATED, S.EXISTS, S.LINKED_EVENT_FAILED}
# Codes the domain mapping makes impossible (it never sends zero ids, reserved flags, imports, ...):
# seeing one means a bug in the mapping, reported as INTERNAL rather than blamed on the client.
IMPOSSIBLE = {
    S.LINKED_EVENT_CHAIN_OPEN, S.IMPORTED_EVENT_EXPECTED, S.IMPORTED_EVENT_NOT_EXPECTED, S.TIMESTAMP_MUST_BE_ZERO,
    S.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE, S.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE, S.RESERVED_FLAG,
    S.ID_MUST_NOT_BE_ZERO, S.ID_MUST_NOT_BE_INT_MAX, S.FLAGS_ARE_MUTUALLY_EXCLUSIVE,
    S.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO, S.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX, S.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO,
    S.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX, S.PENDING_ID_MUST_BE_ZERO, S.PENDING_ID_MUST_NOT_BE_ZERO,
    S.PENDING_ID_MUST_NOT_BE_INT_MAX, S.PENDING_ID_MUST_BE_DIFFERENT, S.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER,
    S.CLOSING_TRANSFER_MUST_BE_PENDING, S.LEDGER_MUST_NOT_BE_ZERO, S.CODE_MUST_NOT_BE_ZERO,
    S.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS, S.IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_DEBIT_ACCOUNT,
    S.IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_CREDIT_ACCOUNT, S.IMPORTED_EVENT_TIMEOUT_MUST_BE_ZERO,
}  # fmt: skip


def test_every_status_is_classified() -> None:
    assert NOT_ERRORS | IMPOSSIBLE | set(TRANSFER_STATUS_ERRORS) == set(S)
    assert not (IMPOSSIBLE & set(TRANSFER_STATUS_ERRORS))


@pytest.mark.parametrize("status", [s for s in S if s not in NOT_ERRORS], ids=lambda s: str(s.name))
def test_status_maps_to_grpc_status_with_error_info(status: CreateTransferStatus) -> None:
    error = transfer_status_error(status, leg_index=2)
    code = GRPC_CODE[error.kind]
    if status in IMPOSSIBLE:
        assert (code, error.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL_MAPPING_ERROR")
    else:
        assert code not in (grpc.StatusCode.OK, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
        assert error.reason.isupper() and error.reason.replace("_", "").isalpha()
        assert (code.name, error.reason) in REASON_CODES
    assert error.metadata == {"leg": "2", "engine_status": status.name}
    details = status_details(error)
    assert details.code == code.value[0] and len(details.details) == 1


# What clients saw before errors had kinds (the gRPC status and the HTTP status for each reason the engine
# table gives): pinned, so moving the table out of the gRPC edge changed nothing a client sees.
REASON_CODES = {
    ("FAILED_PRECONDITION", "INSUFFICIENT_FUNDS"), ("FAILED_PRECONDITION", "CREDIT_LIMIT_EXCEEDED"),
    ("NOT_FOUND", "ACCOUNT_NOT_FOUND"), ("FAILED_PRECONDITION", "CURRENCY_MISMATCH"),
    ("INVALID_ARGUMENT", "SAME_ACCOUNT"), ("FAILED_PRECONDITION", "ACCOUNT_CLOSED"),
    ("NOT_FOUND", "AUTHORIZATION_NOT_FOUND"), ("FAILED_PRECONDITION", "NOT_AN_AUTHORIZATION"),
    ("FAILED_PRECONDITION", "AUTHORIZATION_EXPIRED"), ("FAILED_PRECONDITION", "AUTHORIZATION_ALREADY_CAPTURED"),
    ("FAILED_PRECONDITION", "AUTHORIZATION_ALREADY_VOIDED"), ("INVALID_ARGUMENT", "CAPTURE_EXCEEDS_AUTHORIZATION"),
    ("INVALID_ARGUMENT", "VOID_AMOUNT_MISMATCH"), ("INVALID_ARGUMENT", "AUTHORIZATION_MISMATCH"),
    ("FAILED_PRECONDITION", "BALANCE_OVERFLOW"), ("INVALID_ARGUMENT", "AUTHORIZATION_TIMEOUT_TOO_LONG"),
    ("ALREADY_EXISTS", "IDEMPOTENCY_KEY_FAILED"), ("ALREADY_EXISTS", "IDEMPOTENCY_KEY_REUSED"),
}  # fmt: skip
GRPC_TO_HTTP = {
    "INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "FAILED_PRECONDITION": 422,
    "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "INTERNAL": 500,
    "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403,
}  # fmt: skip


@pytest.mark.parametrize("kind", list(ErrorKind), ids=lambda k: str(k.name))
def test_each_edge_gives_each_kind_the_status_it_gave_before(kind: ErrorKind) -> None:
    assert GRPC_CODE[kind].name == kind.value
    assert HTTP_STATUS[kind] == GRPC_TO_HTTP[kind.value]


def test_failures_recorded_before_kinds_read_back_the_same() -> None:
    """The metadata store holds a refused transaction's answer as JSON; records written when the error
    carried a gRPC status name read back as the same kind, and are written the same way."""
    recorded = '["FAILED_PRECONDITION","INSUFFICIENT_FUNDS","leg 0: exceeds_credits",{"leg":"0"}]'
    error = LedgerError.from_json(recorded)
    assert (error.kind, error.reason, error.metadata) == (ErrorKind.PRECONDITION, "INSUFFICIENT_FUNDS", {"leg": "0"})
    assert error.to_json() == recorded


def test_named_reasons() -> None:
    assert TRANSFER_STATUS_ERRORS[S.EXCEEDS_CREDITS] == (ErrorKind.PRECONDITION, "INSUFFICIENT_FUNDS")
    assert TRANSFER_STATUS_ERRORS[S.DEBIT_ACCOUNT_NOT_FOUND][1] == "ACCOUNT_NOT_FOUND"
    assert TRANSFER_STATUS_ERRORS[S.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER][1] == "CURRENCY_MISMATCH"
    assert TRANSFER_STATUS_ERRORS[S.EXISTS_WITH_DIFFERENT_AMOUNT][1] == "IDEMPOTENCY_KEY_REUSED"
