"""Currencies, ledgers and accounts.

- One engine ledger per currency (`ledger` in the currency table; ISO 4217 numeric by default).
- Each currency has a settlement account (code SETTLEMENT), the other side of every CREDIT (money in)
  and DEBIT (money out). Customer accounts have code CUSTOMER and the `history` flag; NO_OVERDRAFT
  accounts add `debits_must_not_exceed_credits`, so the engine itself refuses to overdraw them.
- A customer account's user_data_128 = H(owning client) (facade.domain.ids.account_owner). The write
  path's ownership check reads it from the engine (facade.service). Accounts created before the owner
  was carried have user_data_128 = 0: nobody's but an admin's, unless the local metadata store knows
  their owner.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from facade.domain.errors import invalid
from facade.engine.types import AccountFlags
from facade.settings import CurrencySettings

__all__ = [
    "ACCOUNT_CODE_CUSTOMER",
    "ACCOUNT_CODE_INSTANCE_MARKER",
    "ACCOUNT_CODE_SETTLEMENT",
    "INSTANCE_MARKER_LEDGER",
    "AccountRequest",
    "Currencies",
    "customer_account_flags",
    "fingerprint",
]

ACCOUNT_CODE_CUSTOMER = 1
ACCOUNT_CODE_SETTLEMENT = 100
ACCOUNT_CODE_INSTANCE_MARKER = 101
"""A façade's instance marker account (facade.consistency): user_data_128 = the instance id."""
INSTANCE_MARKER_LEDGER = 0xFFFF_FFFF
"""The markers' own ledger: no currency uses it, so no transfer can ever touch a marker."""


@dataclass(frozen=True, slots=True)
class AccountRequest:
    """An account creation as an edge received it (fields not validated yet; facade.service does)."""

    currency: str
    external_reference: str
    owner: str
    account_type: int
    """facade.service.ACCOUNT_TYPE_NO_OVERDRAFT or ACCOUNT_TYPE_OVERDRAFT_ALLOWED."""
    metadata: dict[str, str]


@dataclass(frozen=True, slots=True)
class Currencies:
    by_code: dict[str, CurrencySettings]

    def get(self, code: str) -> CurrencySettings:
        currency = self.by_code.get(code)
        if currency is None:
            raise invalid("UNKNOWN_CURRENCY", f"currency {code!r} is not configured", currency=code)
        return currency

    def code_of_ledger(self, ledger: int) -> str:
        for code, currency in self.by_code.items():
            if currency.ledger == ledger:
                return code
        return ""


def customer_account_flags(no_overdraft: bool) -> int:
    flags = AccountFlags.HISTORY
    if no_overdraft:
        flags |= AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
    return int(flags)


def fingerprint(payload: dict[str, object]) -> str:
    """A stable digest of a JSON-able payload (account attributes)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
