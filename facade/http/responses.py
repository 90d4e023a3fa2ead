"""Response models of the History and audit routes: the proto3 JSON of the ledger.v1.History messages
(u64 as decimal strings, bytes as base64). The Ledger messages' models are in facade.http.models."""

from pydantic import BaseModel, ConfigDict, Field

from facade.http import models as m

__all__ = [
    "AccountDrift",
    "AccountsPage",
    "ConsistencyProof",
    "CorrelatedTransfer",
    "CorrelatedTransfers",
    "DailyTotal",
    "DailyTotals",
    "HistoricalBalance",
    "HistoryAccount",
    "InclusionProof",
    "LeafProof",
    "ReconciliationReport",
    "SignedCheckpoint",
    "Statement",
    "StatementLine",
    "TransactionsPage",
]


class _Response(BaseModel):
    model_config = ConfigDict(strict=True, populate_by_name=True)


class HistoricalBalance(_Response):
    account_id: m.AccountId
    debits_pending: str = Field(pattern=m.U128_PATTERN)
    debits_posted: str = Field(pattern=m.U128_PATTERN)
    credits_pending: str = Field(pattern=m.U128_PATTERN)
    credits_posted: str = Field(pattern=m.U128_PATTERN)
    timestamp: m.NanosString = Field(description="Engine timestamp of the change these balances follow (0: none).")
    projected_until: m.NanosString = Field(description="Engine timestamp of the newest change the read model holds.")
    timestamp_rfc3339: m.RFC3339
    projected_until_rfc3339: m.RFC3339


class StatementLine(_Response):
    engine_timestamp: m.NanosString
    engine_timestamp_rfc3339: m.RFC3339
    change: str = Field(description="SINGLE_PHASE, TWO_PHASE_PENDING, TWO_PHASE_POSTED, TWO_PHASE_VOIDED, ...")
    side: str = Field(description='"DEBIT" or "CREDIT": this account\'s side.')
    amount: str = Field(pattern=m.U128_PATTERN)
    signed_amount: str = Field(pattern=m.SIGNED_PATTERN, description="Credits positive, debits negative.")
    counterparty_account_id: str = Field(pattern=m.U128_PATTERN)
    transfer_id: str = Field(pattern=m.U128_PATTERN)
    transaction_id: str
    transaction_type: str
    source: str
    correlation_id: str
    description: str
    currency: str
    balance_after: HistoricalBalance | None = Field(
        default=None, description="Balances right after this line; absent when the engine does not report them."
    )


class Statement(_Response):
    account_id: m.AccountId
    from_: m.NanosString = Field(alias="from")
    to: m.NanosString
    opening: HistoricalBalance
    closing: HistoricalBalance
    lines: list[StatementLine]
    truncated: bool = Field(description="More lines exist: ask again from the last line's engine_timestamp + 1.")
    projected_until: m.NanosString
    from_rfc3339: m.RFC3339
    to_rfc3339: m.RFC3339
    projected_until_rfc3339: m.RFC3339


class DailyTotal(_Response):
    day: str = Field(description="UTC day, YYYY-MM-DD.")
    currency: str
    transaction_type: str
    source: str
    change: str
    transfers: m.NanosString = Field(description="How many transfers (u64, decimal string).")
    amount: str = Field(pattern=m.U128_PATTERN)


class DailyTotals(_Response):
    totals: list[DailyTotal]
    projected_until: m.NanosString
    projected_until_rfc3339: m.RFC3339


class CorrelatedTransfer(_Response):
    engine_timestamp: m.NanosString
    engine_timestamp_rfc3339: m.RFC3339
    change: str
    transaction_id: str
    leg_index: int = Field(ge=0, le=m.UINT32_MAX)
    transfer_id: str = Field(pattern=m.U128_PATTERN)
    debit_account_id: str = Field(pattern=m.U128_PATTERN)
    credit_account_id: str = Field(pattern=m.U128_PATTERN)
    amount: str = Field(pattern=m.U128_PATTERN)
    currency: str
    transaction_type: str
    source: str
    description: str
    labels: dict[str, str]
    chain_sequence: m.NanosString = Field(description="Position in the audit hash chain (u64, decimal string).")


class CorrelatedTransfers(_Response):
    transfers: list[CorrelatedTransfer]
    projected_until: m.NanosString
    projected_until_rfc3339: m.RFC3339


class TransactionsPage(_Response):
    transfers: list[CorrelatedTransfer]
    next_page_token: str = Field(description="Empty on the last page; valid only with the same filter.")
    projected_until: m.NanosString
    projected_until_rfc3339: m.RFC3339


class HistoryAccount(_Response):
    account_id: m.AccountId
    currency: str
    entries: m.NanosString = Field(description="Entries matching the filter (u64, decimal string).")
    first_timestamp: m.NanosString
    last_timestamp: m.NanosString
    first_timestamp_rfc3339: m.RFC3339
    last_timestamp_rfc3339: m.RFC3339
    labels: m.Labels = Field(default_factory=dict, description="The account's own labels.")
    external_reference: str = ""


class AccountsPage(_Response):
    accounts: list[HistoryAccount]
    next_page_token: str = Field(description="Empty on the last page; valid only with the same filter.")
    projected_until: m.NanosString
    projected_until_rfc3339: m.RFC3339


class AccountDrift(_Response):
    account_id: str = Field(pattern=m.U128_PATTERN)
    source: str = Field(description='"entries" or "balances": which read-model figure differs.')
    field: str = Field(description='Which balance differs: "debits_posted", "credits_pending", ...')
    engine: str
    read_model: str


class ReconciliationReport(_Response):
    ok: bool = Field(description="No drift and no account unknown to the engine.")
    accounts_checked: m.NanosString = Field(description="u64, decimal string.")
    as_of: m.NanosString = Field(description="Engine timestamp of the newest projected change.")
    as_of_rfc3339: m.RFC3339
    drift: list[AccountDrift]
    accounts_not_comparable: list[str]
    unknown_accounts: list[str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignedCheckpoint(_Strict):
    note: str
    tree_size: str
    root_hash: str
    timestamp_last: str
    timestamp_last_rfc3339: m.RFC3339
    key_id: str


class LeafProof(_Strict):
    sequence: str
    leaf_index: str
    leaf_hash: str
    hashes: list[str]


class InclusionProof(_Strict):
    checkpoint: SignedCheckpoint
    proofs: list[LeafProof]


class ConsistencyProof(_Strict):
    old_checkpoint: SignedCheckpoint
    new_checkpoint: SignedCheckpoint
    hashes: list[str]
