"""Every engine result code maps to a gRPC status with a machine-readable reason."""

from __future__ import annotations

import grpc
import pytest

from facade.api.errors import status_details
from facade.domain.mapping import TRANSFER_STATUS_ERRORS, transfer_status_error
from facade.engine.types import CreateTransferStatus

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
    if status in IMPOSSIBLE:
        assert (error.code, error.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL_MAPPING_ERROR")
    else:
        assert error.code not in (grpc.StatusCode.OK, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
        assert error.reason.isupper() and error.reason.replace("_", "").isalpha()
    assert error.metadata == {"leg": "2", "engine_status": status.name}
    details = status_details(error.code, error.reason, error.message, error.metadata)
    assert details.code == error.code.value[0] and len(details.details) == 1


def test_named_reasons() -> None:
    assert TRANSFER_STATUS_ERRORS[S.EXCEEDS_CREDITS] == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    assert TRANSFER_STATUS_ERRORS[S.DEBIT_ACCOUNT_NOT_FOUND][1] == "ACCOUNT_NOT_FOUND"
    assert TRANSFER_STATUS_ERRORS[S.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER][1] == "CURRENCY_MISMATCH"
    assert TRANSFER_STATUS_ERRORS[S.EXISTS_WITH_DIFFERENT_AMOUNT][1] == "IDEMPOTENCY_KEY_REUSED"
