"""Deterministic ids: the same request always names the same engine objects.

BLAKE2b-128 with a per-kind personalisation over length-prefixed parts, so no two different inputs
(client "a", key "bc" versus client "ab", key "c") can share an id; never 0 or 2^128-1.
- transaction id = H(client, idempotency key); transfer id = H(client, idempotency key, leg index).
  A retry is therefore an exact duplicate the engine answers with `exists`, and two clients never
  collide.
- account id = H(client, external reference): creating an account is idempotent.
- A customer account's user_data_128 = H(owning client) (`account_owner`): the owner lives in the
  engine, immutable like the account, so every façade on the cluster sees it.
"""

from __future__ import annotations

import functools
import hashlib

from facade.engine.types import U128_MAX

__all__ = [
    "account_id",
    "account_owner",
    "instance_marker_id",
    "settlement_account_id",
    "transaction_id",
    "transfer_id",
]


def _id128(person: bytes, text: str) -> int:
    return _id128_of(hashlib.blake2b(digest_size=16, person=person), text)


def _id128_of(personalised: hashlib.blake2b, text: str) -> int:
    """The id of `text` under a BLAKE2b-128 state that has hashed nothing yet (its copy is updated)."""
    h = personalised.copy()
    h.update(text.encode())
    value = int.from_bytes(h.digest(), "big")
    # 0 and 2^128-1 are reserved by the engine; the chance is 2^-127, but the rule is absolute.
    return 1 if value == 0 or value == U128_MAX else value


# The personalised states of the ids made per transaction and per leg, set up once: a copy of one costs
# about half of a new blake2b(digest_size=, person=) (the same digest: nothing was hashed into it).
_TRANSACTION = hashlib.blake2b(digest_size=16, person=b"ledger.tx")
_TRANSFER = hashlib.blake2b(digest_size=16, person=b"ledger.transfer")


def transaction_id(client_id: str, idempotency_key: str) -> int:
    return _id128_of(_TRANSACTION, f"{len(client_id)}:{client_id}{idempotency_key}")


def transfer_id(client_id: str, idempotency_key: str, leg_index: int) -> int:
    return _id128_of(_TRANSFER, f"{len(client_id)}:{client_id}{len(idempotency_key)}:{idempotency_key}{leg_index}")


def account_id(client_id: str, external_reference: str) -> int:
    return _id128(b"ledger.account", f"{len(client_id)}:{client_id}{external_reference}")


def account_owner(client_id: str) -> int:
    """The owner hash kept in a customer account's user_data_128 (never 0: 0 means "owner unknown")."""
    return _id128(b"ledger.owner", f"{len(client_id)}:{client_id}")


def instance_marker_id(instance_name: str) -> int:
    """The fixed id of a façade's instance marker account in the engine."""
    return _id128(b"ledger.instance", instance_name)


@functools.cache
def settlement_account_id(currency: str) -> int:
    return _id128(b"ledger.settle", currency)
